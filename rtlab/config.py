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
FieldPath = tuple[str | int, ...]  # field names, and list indices

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
                raise ValueError("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))
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
    # Searched experiments only (not part of the identity): the phase the run belongs to, its
    # study, its trial (tune: the trial's slot in the budget; confirm: the trial it confirms),
    # and the sampled values of the searched keys.
    phase: Literal["tune", "confirm"] | None = None
    study: str | None = None
    trial: NonNegativeInt | None = None
    search_params: dict[str, Any] = Field(default_factory=dict)

    def sections(self) -> dict[str, Any]:
        """{data, model, train} as plain values: what the hash covers and what runs log."""
        return Sections(self.data, self.model, self.train).as_dict()

    @property
    def config_hash(self) -> str:
        return config_hash(self.sections(), self.seed, self.data_fingerprint)

    @property
    def run_name(self) -> str:
        """`arm[-key=value...]-s{seed}`, e.g. `reasoning-n_tokens=2-delay=1-s0`; a tuning trial's
        run adds its slot: `baseline-t3-s0`."""
        labels = grid_labels(self.grid_point)
        parts = [self.arm] + [f"{labels[k]}={format_value(v)}" for k, v in self.grid_point.items()]
        if self.phase == "tune" and self.trial is not None:
            parts.append(f"t{self.trial}")  # trials of one study differ in the sampled values
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


# ----------------------------------------------------------------------------------------------
# search: and confirm: (tune every arm on the same budget, then rerun each arm's best config)
#
# Each arm at each grid point gets its own study of `trials` trials, sampled with the same sampler
# and seed. A trial is a RunConfig: the arm's written config with the searched keys set to the
# sampled values, resolved and checked like a grid point, so its config hash is its identity.

OBJECTIVES = ("final_val_loss", "best_val_loss")


def _as_type_mapping(value: Any, default: str) -> Any:
    """`sampler: tpe` is short for `sampler: {type: tpe}`; a mapping without a type has the
    default one (`sampler: {seed: 3}` is a TPE sampler)."""
    if isinstance(value, str):
        return {"type": value}
    if isinstance(value, Mapping) and "type" not in value:
        return {"type": default, **value}
    return value


class FloatParam(Section):
    """A float setting sampled from [low, high], uniformly or on a log scale, optionally stepped."""

    type: Literal["float"]
    low: FiniteFloat
    high: FiniteFloat
    log: bool = False
    step: Annotated[FiniteFloat, Field(gt=0)] | None = None

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if self.low >= self.high:
            problems.append((("high",), f"high ({self.high}) must be > low ({self.low})"))
        if self.log and self.low <= 0:
            problems.append((("low",), f"a log range needs low > 0, got {self.low}"))
        if self.log and self.step is not None:
            problems.append((("step",), "step cannot be combined with log: true"))
        return problems

    def values(self) -> list[Any] | None:
        """Every value (a stepped range), None for a continuous one."""
        if self.step is None:
            return None
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [self.low + i * self.step for i in range(count)]

    def endpoints(self) -> list[tuple[str | int, Any]]:
        return [("low", self.low), ("high", self.high)]


class IntParam(Section):
    """An integer setting sampled from [low, high] (both included) by `step`, or on a log scale."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if self.low >= self.high:
            problems.append((("high",), f"high ({self.high}) must be > low ({self.low})"))
        if self.log and self.low < 1:
            problems.append((("low",), f"a log range needs low >= 1, got {self.low}"))
        if self.log and self.step != 1:
            problems.append((("step",), "step cannot be combined with log: true"))
        return problems

    def values(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))

    def endpoints(self) -> list[tuple[str | int, Any]]:
        return [("low", self.low), ("high", self.values()[-1])]


Choice = None | bool | int | float | str


class CategoricalParam(Section):
    """A setting sampled from a list of values."""

    type: Literal["categorical"]
    choices: list[Choice]

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        if not self.choices:
            return [(("choices",), "choices is empty: list at least two values")]
        if len(self.choices) == 1:
            return [(("choices",), "one choice is not a search: set the value in base instead")]
        seen: list[str] = []
        problems: list[tuple[FieldPath, str]] = []
        for i, choice in enumerate(self.choices):
            key = canonical_json([choice, type(choice).__name__])
            if key in seen:
                problems.append((("choices", i), f"duplicate choice {choice!r}"))
            seen.append(key)
        return problems

    def values(self) -> list[Any]:
        return list(self.choices)

    def endpoints(self) -> list[tuple[str | int, Any]]:
        return [(i, choice) for i, choice in enumerate(self.choices)]


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = ("float", "int", "categorical")


class TPESamplerConfig(Section):
    """Optuna's TPE; `constant_liar` keeps parallel workers from proposing the same point."""

    type: Literal["tpe"]
    seed: NonNegativeInt = 0
    n_startup_trials: PositiveInt | None = None  # None: a third of the trials (2 to 10)


class RandomSamplerConfig(Section):
    type: Literal["random"]
    seed: NonNegativeInt = 0


class GridSamplerConfig(Section):
    """Every combination of the (discrete) parameter values, in an order drawn from `seed`."""

    type: Literal["grid"]
    seed: NonNegativeInt = 0


SamplerConfig = Annotated[
    TPESamplerConfig | RandomSamplerConfig | GridSamplerConfig, Field(discriminator="type")
]
SAMPLER_TYPES = ("tpe", "random", "grid")


class MedianPrunerConfig(Section):
    """Stop a trial whose validation loss at an evaluation is worse than the median of the
    completed trials' at the same step."""

    type: Literal["median"]
    n_startup_trials: NonNegativeInt = 2  # completed trials before any pruning
    n_warmup_steps: NonNegativeInt = 0  # optimizer steps before a trial can be pruned
    interval_steps: PositiveInt = 1


class SuccessiveHalvingPrunerConfig(Section):
    """Asynchronous successive halving; resources are optimizer steps."""

    type: Literal["successive_halving"]
    min_resource: PositiveInt | None = None  # None: the first evaluation step (eval_interval)
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    min_early_stopping_rate: NonNegativeInt = 0


class HyperbandPrunerConfig(Section):
    type: Literal["hyperband"]
    min_resource: PositiveInt | None = None  # None: eval_interval
    max_resource: PositiveInt | None = None  # None: max_iters
    reduction_factor: Annotated[int, Field(ge=2)] = 3


class NoPrunerConfig(Section):
    type: Literal["none"]


PrunerConfig = Annotated[
    MedianPrunerConfig | SuccessiveHalvingPrunerConfig | HyperbandPrunerConfig | NoPrunerConfig,
    Field(discriminator="type"),
]
PRUNER_TYPES = ("median", "successive_halving", "hyperband", "none")


class SearchConfig(Section):
    """The `search:` section: what is tuned, how, and on how many trials per arm (and grid point).

    `trials` is the budget of every arm: completed, pruned and failed trials count towards it
    (trials of dead or stopped workers do not: they are run again). `seeds` are the seeds each
    trial trains (its objective is their mean); None: the smallest seed not among the confirm
    seeds, so that confirmed runs are fresh draws and not the runs that selected their config.
    """

    params: dict[str, SearchParam]
    trials: PositiveInt | None = None  # None only with the grid sampler: the grid's size
    sampler: SamplerConfig = Field(default_factory=lambda: TPESamplerConfig(type="tpe"))
    pruner: PrunerConfig = Field(default_factory=lambda: MedianPrunerConfig(type="median"))
    objective: Literal["final_val_loss", "best_val_loss"] = "final_val_loss"
    seeds: list[NonNegativeInt] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            for key, default in (("sampler", "tpe"), ("pruner", "median")):
                if key in data:
                    data[key] = _as_type_mapping(data[key], default)
        return data

    def grid_size(self) -> int | None:
        """The number of combinations, None when a parameter is continuous."""
        size = 1
        for param in self.params.values():
            values = param.values()
            if values is None:
                return None
            size *= len(values)
        return size

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if not self.params:
            problems.append((("params",), "params is empty: name at least one setting to tune"))
        for key, param in self.params.items():
            problems += [(("params", key, *path), m) for path, m in param.cross_field_problems()]
        if self.sampler.type == "grid":
            continuous = [k for k, p in self.params.items() if p.values() is None]
            for key in continuous:
                problems.append((("params", key), (
                    "the grid sampler needs a finite set of values: give `step`, or use "
                    "type: categorical"
                )))
            size = self.grid_size()
            if size is not None and self.trials is not None and self.trials > size:
                problems.append((("trials",), (
                    f"{self.trials} trials but the grid has only {size} combinations"
                )))
        elif self.trials is None:
            problems.append((("trials",), "missing required key 'trials' (trials per arm)"))
        if self.seeds is not None:
            if not self.seeds:
                problems.append((("seeds",), "seeds is empty: give at least one tuning seed"))
            for i, seed in enumerate(self.seeds):
                if seed in self.seeds[:i]:
                    problems.append((("seeds", i), f"duplicate seed {seed}"))
        return problems

    @property
    def budget(self) -> int:
        """Trials per study."""
        if self.trials is not None:
            return self.trials
        size = self.grid_size()
        assert size is not None, "checked: a grid search has a finite grid"
        return size

    def startup_trials(self) -> int:
        """TPE's random start: as set, else a third of the budget, between 2 and 10."""
        if isinstance(self.sampler, TPESamplerConfig) and self.sampler.n_startup_trials:
            return self.sampler.n_startup_trials
        return min(10, max(2, self.budget // 3))


class ConfirmConfig(Section):
    """The `confirm:` section: each arm's best configuration, run again on these seeds (None: the
    experiment's seeds), optionally for longer (`max_iters`)."""

    seeds: list[NonNegativeInt] | None = None
    max_iters: PositiveInt | None = None

    def cross_field_problems(self) -> list[tuple[FieldPath, str]]:
        problems: list[tuple[FieldPath, str]] = []
        if self.seeds is not None:
            if not self.seeds:
                problems.append((("seeds",), "seeds is empty: give at least one seed"))
            for i, seed in enumerate(self.seeds):
                if seed in self.seeds[:i]:
                    problems.append((("seeds", i), f"duplicate seed {seed}"))
        return problems


class StudyPlan(BaseModel):
    """One study: an arm at a grid point, tuned. What a worker needs to turn a trial's sampled
    values into a RunConfig (`rtlab.plan.trial_run`), carried as JSON in the study's attributes.

    `written` is the arm's config as written (base <- arm <- grid point, no defaults filled in):
    the sampled values are set into it and the result resolved, so derived defaults (`min_lr`,
    `lr_decay_iters`) follow the sampled values exactly as they would follow a written one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str
    arm: str
    grid_point: dict[str, Any] = Field(default_factory=dict)
    study_name: str
    written: dict[str, Any]
    search: SearchConfig
    tune_seeds: list[NonNegativeInt]
    confirm_seeds: list[NonNegativeInt]
    confirm_max_iters: PositiveInt | None = None
    data_fingerprint: str = ""

    @property
    def label(self) -> str:
        labels = grid_labels(self.grid_point)
        return "-".join([self.arm] + [f"{labels[k]}={format_value(v)}"
                                      for k, v in self.grid_point.items()])

    def fingerprint(self) -> str:
        """What the study's trials depend on: a changed one is another study (the budget,
        `trials`, may grow or shrink: the trials done so far still count)."""
        search = self.search.model_dump(exclude={"trials"})
        payload = canonical_json({"written": self.written, "search": search,
                                  "seeds": self.tune_seeds, "data": self.data_fingerprint})
        return hashlib.sha256(payload.encode("ascii")).hexdigest()[:HASH_LENGTH]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> StudyPlan:
        return cls.model_validate_json(text)
