"""The `search:` and `confirm:` sections: their key trees, and checking their structure.

The types live in `rtlab.config` (SearchConfig, ConfirmConfig); this module turns their validation
errors into located issues, relative to the section (e.g. ('params', 'train.learning_rate',
'high')). What needs the rest of the spec (are the keys settings, are the endpoints valid for
every arm) is checked by the loader (`rtlab.spec.loader._check_search`).
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ValidationError

from rtlab.config import (
    DEFER_CROSS_CHECKS,
    PARAM_TYPES,
    PRUNER_TYPES,
    SAMPLER_TYPES,
    CategoricalParam,
    ConfirmConfig,
    FloatParam,
    GridSamplerConfig,
    HyperbandPrunerConfig,
    IntParam,
    MedianPrunerConfig,
    NoPrunerConfig,
    RandomSamplerConfig,
    SearchConfig,
    SuccessiveHalvingPrunerConfig,
    TPESamplerConfig,
)
from rtlab.spec.errors import did_you_mean
from rtlab.spec.schema import ANY, Issue, issues_from_errors

PARAM_FIELDS = ("type", "low", "high", "log", "step", "choices")
# Which union member each `type` names: its tag is dropped from error locations (the user wrote
# `search.sampler.seed`, not `search.sampler.tpe.seed`).
_UNIONS: dict[str, tuple[str, ...]] = {
    "params": PARAM_TYPES, "sampler": SAMPLER_TYPES, "pruner": PRUNER_TYPES,
}
_KINDS = {"params": "parameter type", "sampler": "sampler", "pruner": "pruner"}


def _fields(*models: type[BaseModel]) -> dict[str, Any]:
    """The union of the models' fields, as a key tree (leaves only)."""
    return {name: None for model in models for name in model.model_fields}


@functools.cache
def search_tree() -> dict[str, Any]:
    param = _fields(FloatParam, IntParam, CategoricalParam)
    param["choices"] = {ANY: None}
    return {
        "params": {ANY: param},
        "trials": None,
        "sampler": _fields(TPESamplerConfig, RandomSamplerConfig, GridSamplerConfig),
        "pruner": _fields(MedianPrunerConfig, SuccessiveHalvingPrunerConfig,
                          HyperbandPrunerConfig, NoPrunerConfig),
        "objective": None,
        "seeds": {ANY: None},
    }


@functools.cache
def confirm_tree() -> dict[str, Any]:
    return {"seeds": {ANY: None}, "max_iters": None}


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """('params', KEY, 'float', 'high') -> ('params', KEY, 'high'); ('pruner', 'median', 'x')
    -> ('pruner', 'x')."""
    if not loc or loc[0] not in _UNIONS:
        return loc
    at = 2 if loc[0] == "params" else 1
    if len(loc) > at and loc[at] in _UNIONS[loc[0]]:
        return loc[:at] + loc[at + 1:]
    return loc


def _tag_issue(error: dict[str, Any], loc: tuple[Any, ...], prefix: tuple[str, ...]) -> Issue:
    """A missing or unknown `type` of a parameter, sampler or pruner, said in the user's words."""
    kinds = _UNIONS[loc[0]]
    what = _KINDS[loc[0]]
    if error["type"] == "union_tag_not_found":
        message = f"missing key 'type' (the {what}: {', '.join(kinds)})"
        return Issue(prefix + loc, message)
    tag = error.get("ctx", {}).get("tag", "")
    message = f"unknown {what} '{tag}'{did_you_mean(tag, kinds)}; one of {', '.join(kinds)}"
    return Issue(prefix + loc + ("type",), message)


_MEMBERS: dict[str, type[BaseModel]] = {
    "float": FloatParam, "int": IntParam, "categorical": CategoricalParam,
    "tpe": TPESamplerConfig, "random": RandomSamplerConfig, "grid": GridSamplerConfig,
    "median": MedianPrunerConfig, "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig, "none": NoPrunerConfig,
}


def _unknown_member_key(loc: tuple[Any, ...], tag: str, prefix: tuple[str, ...]) -> Issue:
    """A key that this kind of parameter, sampler or pruner does not take."""
    keys = [k for k in _MEMBERS[tag].model_fields if k != "type"]
    what = _KINDS[loc[0]]
    accepted = ", ".join(keys) or "none besides type"
    message = (f"unknown key '{loc[-1]}' for {what} '{tag}'{did_you_mean(loc[-1], keys)}; "
               f"it takes: {accepted}")
    return Issue(prefix + loc, message, at_key=True)


def _issues(error: ValidationError, prefix: tuple[str, ...], tree: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    plain = []
    for e in error.errors(include_url=False):
        raw_loc = tuple(e["loc"])
        loc = _without_union_tags(raw_loc)
        if e["type"] in ("union_tag_invalid", "union_tag_not_found") and loc and loc[0] in _UNIONS:
            issues.append(_tag_issue(e, loc, prefix))
        elif e["type"] == "extra_forbidden" and loc != raw_loc:
            tag = next(p for p in raw_loc if p not in loc or raw_loc.count(p) > loc.count(p))
            issues.append(_unknown_member_key(loc, str(tag), prefix))
        else:
            plain.append({**e, "loc": loc})
    return issues + issues_from_errors(plain, prefix, {prefix[0]: tree})


def check_search_section(raw: Any) -> tuple[SearchConfig | None, list[Issue]]:
    """Validate `search:` as written: (config, []) or (None, issues located under 'search')."""
    try:
        search = SearchConfig.model_validate(raw, context={DEFER_CROSS_CHECKS: True})
    except ValidationError as error:
        return None, _issues(error, ("search",), search_tree())
    problems = search.cross_field_problems()
    return (None, [Issue(("search", *p), m) for p, m in problems]) if problems else (search, [])


def check_confirm_section(raw: Any) -> tuple[ConfirmConfig | None, list[Issue]]:
    try:
        confirm = ConfirmConfig.model_validate(raw or {}, context={DEFER_CROSS_CHECKS: True})
    except ValidationError as error:
        return None, _issues(error, ("confirm",), confirm_tree())
    problems = confirm.cross_field_problems()
    return (None, [Issue(("confirm", *p), m) for p, m in problems]) if problems else (confirm, [])


# ------------------------------------------------------------------------------------------------
# What needs the rest of the spec. Each problem: (key path in the file, message, at the key).

Located = tuple[tuple[Any, ...], str, bool]


def resolve_search_sections(
    raw_search: Any, raw_confirm: Any, seeds: list[int]
) -> tuple[SearchConfig | None, ConfirmConfig | None, list[Issue]]:
    """The checked sections with their seeds filled in: confirm's default to the experiment's,
    the tuning seeds' to the smallest seed that is not a confirm seed."""
    if raw_search is None:
        if raw_confirm is not None:
            message = ("a confirm section reruns the best configuration of each arm's search: "
                       "add a `search:` section, or remove `confirm:`")
            return None, None, [Issue(("confirm",), message, at_key=True)]
        return None, None, []
    search, issues = check_search_section(raw_search)
    confirm, confirm_issues = check_confirm_section(raw_confirm)
    if search is None or confirm is None:
        return None, None, issues + confirm_issues
    confirm_seeds = list(confirm.seeds if confirm.seeds is not None else seeds)
    tune_seeds = search.seeds
    if tune_seeds is None:
        tune_seeds = [next(s for s in range(len(confirm_seeds) + 1) if s not in confirm_seeds)]
    return (search.model_copy(update={"seeds": list(tune_seeds)}),
            confirm.model_copy(update={"seeds": confirm_seeds}), [])


def _leaf_settings(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, subtree in tree.items():
        if key != ANY:
            name = f"{prefix}{key}"
            out += _leaf_settings(subtree, name + ".") if isinstance(subtree, dict) else [name]
    return out


def _setting_problem(key: str) -> str | None:
    from rtlab.spec.schema import section_tree, walk_tree

    parts = tuple(key.split("."))
    if parts[0] == "data":
        return ("the dataset is prepared once, before the search: data options cannot be "
                "searched")
    tree, failed = walk_tree(section_tree(), parts)
    if failed is None and tree is None and len(parts) > 1:
        return None
    if failed is None and isinstance(tree, dict):
        return f"'{key}' names a section, not a setting"
    settings = [s for s in _leaf_settings(section_tree()) if not s.startswith("data.")]
    return (f"unknown setting '{key}'{did_you_mean(key, settings)}; searched keys look like "
            "'train.learning_rate'")


def check_searched_keys(
    search: SearchConfig, grid: dict[str, list[Any]], variants: dict[str, dict[str, Any]]
) -> list[Located]:
    """Each searched key is a setting that no arm and no grid key sets (the sampled value would
    replace it, and the arms would no longer differ where the file says they do)."""
    problems: list[Located] = []
    for key in search.params:
        at = ("search", "params", key)
        problem = _setting_problem(key)
        if problem is not None:
            problems.append((at, problem, True))
            continue
        if key in grid:
            problems.append((at, f"'{key}' is also a grid key: search it or grid it", True))
        for arm, override in variants.items():
            node: Any = override
            for part in key.split("."):
                node = node.get(part, ...) if isinstance(node, dict) else ...
            if node is not ...:
                problems.append((("variants", arm, *key.split(".")),
                                 f"also searched (search.params.{key}): the sampled value would "
                                 "replace it", False))
    return problems


def check_search_values(spec: Any) -> list[Located]:
    """Every endpoint (and choice) of every parameter gives a valid config for every arm at
    every grid point; pruning has evaluations to act on; confirm runs are valid and fresh."""
    if spec.search is None:
        return []
    problems: list[Located] = []
    for key, param in spec.search.params.items():
        for field, value in param.endpoints():
            at = ("search", "params", key, *str(field).split("."))
            at = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in at)
            problems += _value_problems(spec, {key: value}, at, key)
    problems += _pruner_problems(spec)
    problems += _confirm_problems(spec)
    return problems


def _value_problems(spec: Any, values: dict[str, Any], at: tuple[Any, ...], key: str
                    ) -> list[Located]:
    from rtlab.spec.schema import check_sections

    failing: dict[str, list[str]] = {}
    for point in spec.grid_points():
        for arm in spec.arms:
            for issue in check_sections(spec.merged(arm, point, values))[1]:
                dotted = ".".join(str(p) for p in issue.loc)
                message = issue.message if dotted == key else f"{dotted}: {issue.message}"
                arms = failing.setdefault(message, [])
                if arm not in arms:
                    arms.append(arm)
    return [(at, f"{message} (for {_which(arms, spec.arms)})", False)
            for message, arms in failing.items()]


def _which(arms: list[str], every: list[str]) -> str:
    return "every arm" if len(arms) == len(every) else "arm " + ", ".join(arms)


def _pruner_problems(spec: Any) -> list[Located]:
    if spec.search.pruner.type == "none":
        return []
    single = [arm for arm in spec.arms for point in spec.grid_points()
              if (train := spec.resolve(arm, point).train).eval_interval >= train.max_iters]
    if not single:
        return []
    return [(("search", "pruner"), (
        f"pruning acts on the validation loss at each evaluation, but {_which(single, spec.arms)}"
        " evaluates only at its last step (eval_interval >= max_iters): lower eval_interval, "
        "or use pruner: none"), False)]


def _confirm_problems(spec: Any) -> list[Located]:
    confirm, problems = spec.confirm, []
    if confirm.max_iters is not None:
        if "train.max_iters" in spec.search.params:
            problems.append((("confirm", "max_iters"), (
                "train.max_iters is searched: the confirm runs use the best trial's"), True))
        problems += _value_problems(spec, {"train.max_iters": confirm.max_iters},
                                    ("confirm", "max_iters"), "train.max_iters")
    shared = [seed for seed in spec.confirm_seeds if seed in spec.tune_seeds]
    if not shared or "train.max_iters" in spec.search.params:
        return problems
    same_length = [arm for arm in spec.arms for point in spec.grid_points()
                   if confirm.max_iters in (None, spec.resolve(arm, point).train.max_iters)]
    if same_length:
        problems.append((("search", "seeds"), (
            f"seed {shared[0]} both tunes and confirms: the confirm run of the best "
            "configuration would be the very run that selected it; use other seeds (or a "
            "different confirm.max_iters)"), False))
    return problems
