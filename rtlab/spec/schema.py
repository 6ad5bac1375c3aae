"""The experiment file's schema: top-level structure, the key tree, and checking the sections.

The sections' types (`ModelConfig`, `TrainConfig`, `DataConfig`) live in `rtlab.config`; this
module turns their validation errors into located, readable issues.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rtlab.config import (
    DATASET_DECIDES,
    DEFER_CROSS_CHECKS,
    DataConfig,
    ModelConfig,
    Sections,
    TrainConfig,
)
from rtlab.spec.errors import did_you_mean

STRICT = ConfigDict(extra="forbid", strict=True)
SECTIONS = ("data", "model", "train")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # used in directory names and MLflow names

ARM_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # no dots: `--set variants.ARM...` splits on them

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
ArmName = Annotated[str, Field(pattern=ARM_PATTERN, max_length=100)]


class Claim(BaseModel):
    """A published or expected result that the report sets against the measured one.

    Reads: "`arm` reaches a `metric` `expect` than `baseline_arm`", optionally with the numbers the
    source reported (`value` for the arm, `baseline_value` for the baseline). `metric` names the
    runs' final value (`val_loss` -> `final_val_loss`, `train_loss` -> `final_train_loss`,
    `best_val_loss`); `loss` means the source does not say which. `expect` may be left out when
    both numbers are given: their order gives it.
    """

    model_config = STRICT

    metric: Literal["val_loss", "train_loss", "best_val_loss", "loss"]
    arm: str
    baseline_arm: str = "baseline"
    expect: Literal["lower", "higher"] | None = None
    value: float | None = None
    baseline_value: float | None = None
    source: Annotated[str, Field(min_length=1)]  # where the claim comes from, in words

    def direction(self) -> str | None:
        """`expect`, or the direction the numbers give, or None when neither says."""
        if self.expect is not None:
            return self.expect
        if self.value is not None and self.baseline_value is not None:
            if self.value != self.baseline_value:
                return "lower" if self.value < self.baseline_value else "higher"
        return None


class BaseSections(BaseModel):
    model_config = STRICT

    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]


class VariantOverride(BaseModel):
    """An arm: a partial override of base, section by section (`baseline: {}` overrides nothing)."""

    model_config = STRICT

    data: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    train: dict[str, Any] | None = None


class SpecFile(BaseModel):
    """The structure of an experiment file; `check_sections` checks the sections' contents."""

    model_config = STRICT

    name: Name
    description: Annotated[str, Field(min_length=1)]
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    base: BaseSections
    variants: Annotated[dict[ArmName, VariantOverride | None], Field(min_length=1)]
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    claims: list[Claim] = Field(default_factory=list)
    cost: str | None = None
    search: dict[str, Any] | None = None  # checked by rtlab.spec.search
    confirm: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------------
# The model section, derived from GPTConfig


def known_datasets() -> dict[str, dict[str, Any]]:
    """Dataset name -> its options with defaults (`rtlab.data.DATASETS`)."""
    from rtlab.data import DATASETS

    return {name: dict(getattr(entry, "defaults", {}) or {}) for name, entry in DATASETS.items()}


def _option_type_problem(value: Any, default: Any) -> str | None:
    """A light type check of a dataset option against its default (None accepts anything)."""
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int | float):
        ok, kind = isinstance(value, int | float) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        return None
    return None if ok else f"expected {kind} (default {default!r}), got {value!r}"


def check_data_section(section: dict[str, Any]) -> tuple[DataConfig | None, list[Issue]]:
    """Validate `data:`: the dataset name and its options; fills in the dataset's defaults."""
    try:
        data = DataConfig.model_validate(section)
    except ValidationError as error:
        return None, issues_from_errors(error.errors(include_url=False), ("data",), section_tree())
    written = data.options
    datasets = known_datasets()
    if data.name not in datasets:
        hint = did_you_mean(data.name, list(datasets))
        known = ", ".join(sorted(datasets))
        message = f"unknown dataset '{data.name}'{hint}; known: {known}"
        return None, [Issue(("data", "name"), message)]
    defaults = datasets[data.name]
    issues = []
    for key, value in written.items():
        if key not in defaults:
            hint = did_you_mean(key, list(defaults))
            accepted = ", ".join(sorted(defaults)) or "none"
            issues.append(Issue(
                ("data", key),
                f"unknown option '{key}' of dataset '{data.name}'{hint}; accepted: {accepted}",
                at_key=True,
            ))
        elif (problem := _option_type_problem(value, defaults[key])) is not None:
            issues.append(Issue(("data", key), problem))
    if issues:
        return None, issues
    return DataConfig(name=data.name, **{**defaults, **written}), []


# ------------------------------------------------------------------------------------------------
# The key tree: which keys exist where (for did-you-mean, variant/grid keys and --set paths).
# A tree is a dict of key -> subtree, or None for a leaf; the key "*" stands for any key/index.

Tree = dict[str, Any] | None
ANY = "*"


def _tree_of(model: type[BaseModel]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        tree[name] = _tree_of(annotation) if is_model else None  # type: ignore[arg-type]
    return tree


@functools.cache
def section_tree() -> dict[str, Any]:
    return {
        "data": {"name": None, ANY: None},  # open: options belong to the dataset
        "model": _tree_of(ModelConfig),
        "train": _tree_of(TrainConfig),
    }


@functools.cache
def spec_tree() -> dict[str, Any]:
    from rtlab.spec.search import confirm_tree, search_tree  # (it builds on this module)

    sections = section_tree()
    return {
        "name": None,
        "description": None,
        "seeds": {ANY: None},
        "base": sections,
        "variants": {ANY: sections},
        "grid": {ANY: {ANY: None}},
        "claims": {ANY: _tree_of(Claim)},
        "cost": None,
        "search": search_tree(),
        "confirm": confirm_tree(),
    }


def explicit_keys(tree: Tree) -> list[str]:
    return [k for k in tree if k != ANY] if isinstance(tree, dict) else []


def walk_tree(tree: Tree, path: tuple[str | int, ...]) -> tuple[Tree, int | None]:
    """Follow `path` down `tree`: (subtree, None), or (tree at the failure, failing index)."""
    for i, part in enumerate(path):
        if not isinstance(tree, dict):
            return tree, i
        key = part if isinstance(part, str) and part in tree else ANY
        if key not in tree:
            return tree, i
        tree = tree[key]
    return tree, None


# ------------------------------------------------------------------------------------------------
# Checking the sections of one resolved arm / grid point


@dataclasses.dataclass(frozen=True)
class Issue:
    """A problem inside the sections, located relative to them, e.g. ('model', 'n_head')."""

    loc: tuple[str | int, ...]
    message: str
    at_key: bool = False  # point at the key (unknown keys) rather than at its value


def _literal_options(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


def issues_from_errors(
    errors: list[Any], prefix: tuple[str | int, ...], tree: Tree
) -> list[Issue]:
    """Readable issues from pydantic's `errors()`; `prefix` locates the checked value in `tree`."""
    issues = []
    for e in errors:
        loc = prefix + tuple(e["loc"])
        kind, value = e["type"], e.get("input")
        if "[key]" in loc:  # a mapping key failed (e.g. an arm name): locate it at the key
            loc = tuple(p for p in loc if p != "[key]")
            message = f"invalid name {value!r}: {e['msg']}"
            issues.append(Issue(loc, message, at_key=True))
            continue
        if kind == "extra_forbidden" and loc[-2:-1] == ("model",) and loc[-1] in DATASET_DECIDES:
            message = f"'{loc[-1]}' comes from the dataset, not the spec: remove it"
            issues.append(Issue(loc, message, at_key=True))
            continue
        if kind == "extra_forbidden":
            keys = explicit_keys(walk_tree(tree, loc[:-1])[0])
            hint = did_you_mean(loc[-1], keys)
            issues.append(Issue(loc, f"unknown key '{loc[-1]}'{hint}", at_key=True))
            continue
        if kind == "missing":
            issues.append(Issue(loc, f"missing required key '{loc[-1]}'"))
            continue
        message = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        # pydantic names our internal classes here; the user wrote YAML.
        message = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping", message)
        if kind == "literal_error":
            message += did_you_mean(value, _literal_options(e.get("ctx", {}).get("expected", "")))
        if kind not in ("value_error", "assertion_error") and not isinstance(value, dict | list):
            message += f", got {value!r}"
        issues.append(Issue(loc, message))
    return issues


def check_sections(sections: dict[str, Any]) -> tuple[Sections | None, list[Issue]]:
    """Validate the {data, model, train} mappings of an arm at a grid point, as written.

    The one place a run's settings are checked: (typed sections, []) or (None, located issues).
    """
    data, issues = check_data_section(sections.get("data") or {})
    checked: dict[str, Any] = {"data": data}
    for name, section in (("model", ModelConfig), ("train", TrainConfig)):
        try:
            value = section.model_validate(
                sections.get(name) or {}, context={DEFER_CROSS_CHECKS: True}
            )
        except ValidationError as error:
            tree = section_tree()
            issues += issues_from_errors(error.errors(include_url=False), (name,), tree)
            continue
        checked[name] = value
        issues += [Issue((name, *loc), message) for loc, message in value.cross_field_problems()]
    return (None, issues) if issues else (Sections(**checked), [])
