"""`TrainConfig`: the single definition of a spec's `train:` section, its defaults and its checks.

The trainer (`rtlab/execute`) validates the resolved `train` dict with it again, so a config that
gets past the spec loader is exactly one the trainer accepts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

# Validation context key: the spec loader checks cross-field rules itself, field by field, so that
# each problem is reported at the key that causes it (see `TrainConfig.cross_field_problems`).
DEFER_CROSS_CHECKS = "rtlab_defer_cross_checks"


class TrainConfig(BaseModel):
    """Optimisation, evaluation and bookkeeping of one run. Steps count optimizer steps."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_iters: PositiveInt = 5000
    batch_size: PositiveInt = 64  # sequences per micro-step
    grad_accum: PositiveInt = 1  # micro-steps per optimizer step
    learning_rate: Annotated[FiniteFloat, Field(gt=0)] = 1e-3
    min_lr: Annotated[FiniteFloat, Field(ge=0)] | None = None  # None: learning_rate / 10
    warmup_iters: NonNegativeInt = 0  # linear warmup, then cosine decay
    lr_decay_iters: PositiveInt | None = None  # None: max_iters (decay ends at the last step)
    weight_decay: Annotated[FiniteFloat, Field(ge=0)] = 0.1
    beta1: Annotated[FiniteFloat, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[FiniteFloat, Field(ge=0, lt=1)] = 0.99
    grad_clip: Annotated[FiniteFloat, Field(ge=0)] = 1.0  # 0 disables clipping
    eval_interval: PositiveInt = 250  # the last step is always evaluated too
    eval_iters: PositiveInt = 200  # fixed batches per split per evaluation
    checkpoint_interval: PositiveInt = 250
    log_interval: PositiveInt = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"  # autocast dtype; weights stay float32
    compile: bool = False
    sample_tokens: NonNegativeInt = 200  # text generated at the end (0: none)
    save_checkpoint: bool = True  # keep the final checkpoint as an artifact
    threads: PositiveInt | None = None  # CPU threads; None lets the runner choose (fair share)

    @model_validator(mode="after")
    def _resolve_and_check(self, info: ValidationInfo) -> TrainConfig:
        # Fill the derived defaults so the resolved config (and its hash) states them explicitly.
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        if self.min_lr is None:
            self.min_lr = self.learning_rate / 10
        if not (info.context or {}).get(DEFER_CROSS_CHECKS):
            problems = self.cross_field_problems()
            if problems:
                raise ValueError("; ".join(f"{key}: {message}" for key, message in problems))
        return self

    def cross_field_problems(self) -> list[tuple[str, str]]:
        """Impossible combinations, as (field, message) pairs."""
        assert self.lr_decay_iters is not None and self.min_lr is not None  # resolved on validation
        problems = []
        if self.warmup_iters > self.max_iters:
            problems.append((
                "warmup_iters",
                f"warmup_iters ({self.warmup_iters}) must be <= max_iters ({self.max_iters})",
            ))
        elif self.lr_decay_iters <= self.warmup_iters:  # (checked only when warmup is possible)
            problems.append((
                "lr_decay_iters",
                f"lr_decay_iters ({self.lr_decay_iters}) must be > warmup_iters "
                f"({self.warmup_iters}): the cosine decay starts after the warmup",
            ))
        if self.min_lr > self.learning_rate:
            problems.append((
                "min_lr",
                f"min_lr ({self.min_lr}) must be <= learning_rate ({self.learning_rate})",
            ))
        return problems
