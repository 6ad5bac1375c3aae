"""rtlab's one typed config: the `data:`, `model:` and `train:` sections and the resolved run.

Torch-free and MLflow-free, so every layer can import it: the spec loader validates a YAML file
into these types once (`rtlab.spec`), plan expands them into `RunConfig`s, and the trainer, the
sweep, the audit and the report take them as they are. `GPT` is built from a `GPTConfig`, which is
the `model:` section plus what the dataset decides (vocabulary or input width).

Cross-field rules live next to their fields as `cross_field_problems()`, which return
(field path, message) pairs: the spec reports each at the key that causes it; anyone else who
builds a config directly gets them as a `pydantic.ValidationError` (a `ValueError`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

MAX_REASONING_TOKENS = 8
HASH_LENGTH = 12

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FieldPath = tuple[str, ...]

# Validation context key: the spec loader collects cross-field problems itself, so that each is
# reported at the key that causes it rather than as one error about the whole section.
DEFER_CROSS_CHECKS = "rtlab_defer_cross_checks"


class Section(BaseModel):
    """A config section: strict types, no unknown keys, cross-field rules checked on validation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def fill_derived_defaults(self) -> None:
        """Fields whose default depends on others (valid fields only: runs after field checks)."""

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        return []

    @model_validator(mode="after")
    def _check_cross_fields(self, info: ValidationInfo) -> Section:
        self.fill_derived_defaults()
        if not (info.context or {}).get(DEFER_CROSS_CHECKS):
            problems = self.cross_field_problems()
            if problems:
                raise ValueError("; ".join(f"{'.'.join(p)}: {m}" for p, m in problems))
        return self


# ----------------------------------------------------------------------------------------------
# model: (METHODS §1-§3)


class ReasoningConfig(Section):
    """Reasoning slots appended after every token (METHODS §2). n_tokens=0 means none."""

    n_tokens: Annotated[int, Field(ge=0, le=MAX_REASONING_TOKENS)] = 0
    delay: PositiveInt = 1  # a reasoning slot first helps the prediction `delay + 1` tokens ahead
    input: Literal["duplicate", "learned"] = "duplicate"
    loss_on_reasoning: bool = False


class ModelConfig(Section):
    """The `model:` section: nanoGPT's fields plus the training-mode fields."""

    block_size: PositiveInt = 1024  # timesteps (original tokens), not slots
    n_layer: PositiveInt = 12
    n_head: PositiveInt = 12
    n_embd: PositiveInt = 768
    dropout: Annotated[FiniteFloat, Field(ge=0, lt=1)] = 0.0
    bias: bool = True
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    myopic: Literal["off", "strict", "paper"] = "off"
    myopic_impl: Literal["auto", "explicit", "fused"] = "auto"
    head: Literal["lm", "regression"] = "lm"
    huber_delta: Annotated[FiniteFloat, Field(gt=0)] = 1.0

    @property
    def slots_per_token(self) -> int:
        return self.reasoning.n_tokens + 1

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if self.n_embd % self.n_head != 0:
            problems.append(
                (("n_head",), f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
            )
        if self.myopic_impl == "fused" and self.dropout > 0:
            problems.append((("myopic_impl",), (
                "'fused' needs dropout 0 (the fused kernel has no attention "
                "dropout); use 'explicit' or 'auto'"
            )))
        if self.myopic != "off" and self.reasoning.n_tokens > 0:
            # Myopic training cuts every cross-position gradient, so reasoning slots (which have
            # no loss of their own) would never be trained: the combination measures nothing.
            problems.append((("myopic",), (
                "myopic and reasoning.n_tokens > 0 cannot be combined: myopic training cuts all "
                "gradients between positions, so reasoning slots would receive none"
            )))
        return problems


class GPTConfig(ModelConfig):
    """What `GPT` is built from: the `model:` section plus the two fields the dataset decides."""

    vocab_size: PositiveInt = 50304
    n_features: PositiveInt = 2  # regression input width (METHODS §5 reads (x_n, z_n))

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> GPTConfig:
        return cls.model_validate(dict(fields))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


DATASET_DECIDES = ("vocab_size", "n_features")  # GPTConfig fields that no spec sets


# ----------------------------------------------------------------------------------------------
# train:


class TrainConfig(Section):
    """Optimisation, evaluation and bookkeeping of one run. Steps count optimizer steps."""

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

    def fill_derived_defaults(self) -> None:
        # The resolved config (and so its hash) states the derived defaults explicitly.
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        if self.min_lr is None:
            self.min_lr = self.learning_rate / 10

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        assert self.lr_decay_iters is not None and self.min_lr is not None  # filled before
        problems: list[tuple[FieldPath, str]] = []
        if self.warmup_iters > self.max_iters:
            problems.append((("warmup_iters",), (
                f"warmup_iters ({self.warmup_iters}) must be <= max_iters ({self.max_iters})"
            )))
        elif self.lr_decay_iters <= self.warmup_iters:  # (checked only when warmup is possible)
            problems.append((("lr_decay_iters",), (
                f"lr_decay_iters ({self.lr_decay_iters}) must be > warmup_iters "
                f"({self.warmup_iters}): the cosine decay starts after the warmup"
            )))
        if self.min_lr > self.learning_rate:
            problems.append((("min_lr",), (
                f"min_lr ({self.min_lr}) must be <= learning_rate ({self.learning_rate})"
            )))
        return problems


# ----------------------------------------------------------------------------------------------
# data:


class DataConfig(BaseModel):
    """`name` picks the dataset; every other key is one of its options (`rtlab.data.DATASETS`
    declares them with their defaults; the spec loader checks them against it)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    name: Annotated[str, Field(min_length=1)]

    @property
    def options(self) -> dict[str, Any]:
        """The dataset options, without the name."""
        return dict(self.model_extra or {})


# ----------------------------------------------------------------------------------------------
# One run, resolved


class Sections(NamedTuple):
    """The three checked sections of an arm at a grid point, every default filled in."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig

    def as_dict(self) -> dict[str, Any]:
        """{data, model, train} as plain values: what the hash covers and what runs log."""
        return {name: section.model_dump() for name, section in self._asdict().items()}


class RunConfig(BaseModel):
    """One run, fully resolved: an arm of an experiment at a grid point with a seed.

    `config_hash` is its identity (a function of the three sections, the seed and the data
    fingerprint); equal hashes mean the same run, in any store, on any machine.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str
    arm: str
    seed: NonNegativeInt
    grid_point: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    data_fingerprint: str = ""  # sha256 of the prepared data ("" where it was not prepared)

    def sections(self) -> dict[str, Any]:
        """{data, model, train} as plain values: what the hash covers and what runs log."""
        return Sections(self.data, self.model, self.train).as_dict()

    @property
    def config_hash(self) -> str:
        return config_hash(self.sections(), self.seed, self.data_fingerprint)

    @property
    def run_name(self) -> str:
        """`arm[-key=value...]-s{seed}`, e.g. `reasoning-n_tokens=2-delay=1-s0`."""
        labels = grid_labels(self.grid_point)
        parts = [self.arm] + [f"{labels[k]}={format_value(v)}" for k, v in self.grid_point.items()]
        return "-".join(parts + [f"s{self.seed}"])

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.model_validate_json(text)


# ----------------------------------------------------------------------------------------------
# Identity and names


def _normalise(value: Any) -> Any:
    """JSON-ready form in which equal configs are equal: integral floats become ints (1.0 == 1),
    so writing `learning_rate: 1` or `1.0` does not make a different run."""
    if isinstance(value, Mapping):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "inf", "nan": JSON has no literal for them
    return value


def canonical_json(obj: Any) -> str:
    """Key order, whitespace and integral-float spelling do not change the text."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(sections: Mapping[str, Any], seed: int, data_fingerprint: str = "") -> str:
    """sha256 of canonical JSON of (sections, seed, data fingerprint), first 12 hex digits."""
    payload = canonical_json({"config": sections, "seed": seed, "data": data_fingerprint})
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:HASH_LENGTH]


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict | list):
        return canonical_json(value)
    return str(value)


def grid_labels(keys: Any) -> dict[str, str]:
    """Short labels for grid keys in run names: the last part, unless two keys share it."""
    keys = list(keys)
    lasts = [k.split(".")[-1] for k in keys]
    return {k: (last if lasts.count(last) == 1 else k) for k, last in zip(keys, lasts, strict=True)}
