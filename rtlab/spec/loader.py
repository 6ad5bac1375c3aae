"""`load_spec`: read an experiment YAML file, apply `--set` overrides, check everything, or raise
`SpecError` with one located line per problem.

Checking order: YAML syntax and tags -> overrides -> top-level structure -> base sections ->
each arm (base + its override) -> each arm x grid point -> cross references (claims, duplicates).
Later stages run only when the earlier ones passed, so one mistake gives one message, not a cascade.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rtlab.config import ConfirmConfig, SearchConfig, Sections
from rtlab.spec.errors import Problem, SpecError, did_you_mean
from rtlab.spec.schema import (
    ANY,
    SECTIONS,
    Claim,
    Issue,
    SpecFile,
    check_sections,
    explicit_keys,
    issues_from_errors,
    section_tree,
    spec_tree,
    walk_tree,
)
from rtlab.spec.search import (
    PARAM_FIELDS,
    check_search_values,
    check_searched_keys,
    resolve_search_sections,
)
from rtlab.spec.yamlio import KeyPath, Located, display_path, parse_override_value, parse_yaml

MAX_PROBLEMS = 50  # beyond this, more lines do not help anyone


@dataclass(frozen=True)
class ExperimentSpec:
    """A checked experiment. `base` and `variants` are as written (after overrides); `resolve`
    gives the fully resolved {data, model, train} config of an arm at a grid point."""

    name: str
    description: str
    seeds: list[int]
    base: dict[str, dict[str, Any]]
    variants: dict[str, dict[str, dict[str, Any]]]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    cost: str | None = None
    path: Path | None = None
    text: str = ""  # the file's text, for the report's manifest
    overrides: tuple[str, ...] = ()
    # `search:` and `confirm:` (None without a search; with one, confirm is always set and both
    # have their seeds filled in)
    search: SearchConfig | None = None
    confirm: ConfirmConfig | None = None

    @property
    def arms(self) -> list[str]:
        return list(self.variants)

    @property
    def tune_seeds(self) -> list[int]:
        assert self.search is not None and self.search.seeds is not None
        return list(self.search.seeds)

    @property
    def confirm_seeds(self) -> list[int]:
        assert self.confirm is not None and self.confirm.seeds is not None
        return list(self.confirm.seeds)

    def grid_points(self) -> list[dict[str, Any]]:
        """The Cartesian product of the grid, in file order; [{}] without a grid."""
        keys = list(self.grid)
        products = itertools.product(*self.grid.values())
        return [dict(zip(keys, values, strict=True)) for values in products]

    def merged(
        self, arm: str, grid_point: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """base <- arm override <- grid point [<- searched values], before defaults are filled
        in."""
        sections = merge_sections(self.base, self.variants[arm])
        for key, value in (grid_point or {}).items():
            if key == "data.name" and value != sections["data"].get("name"):
                sections["data"] = {}  # another dataset: the options were the other one's
            set_dotted(sections, key.split("."), value)
        return with_values(sections, values or {})

    def resolve(
        self, arm: str, grid_point: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
    ) -> Sections:
        """The checked sections (every default filled in) of `arm` at `grid_point`, with the
        searched keys set to `values` (a trial's)."""
        if arm not in self.variants:
            raise KeyError(f"no arm '{arm}' in experiment '{self.name}'")
        resolved, issues = check_sections(self.merged(arm, grid_point, values))
        if resolved is None:  # only reachable with a grid point that the file does not contain
            raise SpecError(
                Problem(str(self.path or self.name), display_path(i.loc), i.message) for i in issues
            )
        return resolved


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` applied; nested mappings merge, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_sections(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """base's {data, model, train} with an arm's override applied section by section.

    An override naming another dataset replaces base's data section: base's options belong to
    base's dataset (e.g. `size` of shakespeare_char means nothing to precache_synthetic).
    """
    merged = {}
    base_dataset = base["data"].get("name")
    for section in SECTIONS:
        written = override.get(section) or {}
        if section == "data" and written.get("name", base_dataset) != base_dataset:
            merged[section] = copy.deepcopy(written)
        else:
            merged[section] = deep_merge(base[section], written)
    return merged


def with_values(written: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of written sections with dotted keys (`train.learning_rate`) set to values: how a
    trial's sampled values (or a confirm run's max_iters) enter a config, like a grid point's."""
    sections = copy.deepcopy(written)
    for key, value in values.items():
        set_dotted(sections, key.split("."), value)
    return sections


def set_dotted(target: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = copy.deepcopy(value)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class _Locator:
    """Turns key paths into located problems: file:line:col, or the `--set` that set the value."""

    def __init__(self, file: str, positions: dict[KeyPath, Located], origins: dict[KeyPath, str]):
        self.file, self.positions, self.origins = file, positions, origins
        self.problems: list[Problem] = []

    def add(self, path: KeyPath, message: str, at_key: bool = False) -> None:
        # The nearest written ancestor locates a key that is missing or only present via defaults.
        for n in range(len(path), -1, -1):
            prefix = path[:n]
            if prefix in self.origins:
                self.problems.append(
                    Problem(self.file, display_path(path), message, override=self.origins[prefix])
                )
                return
            if prefix in self.positions:
                located = self.positions[prefix]
                use_key = (at_key or n < len(path)) and located.key is not None
                line, col = located.key if use_key else located.value  # type: ignore[misc]
                self.problems.append(Problem(self.file, display_path(path), message, line, col))
                return
        self.problems.append(Problem(self.file, display_path(path), message, 1, 1))

    def add_issues(self, prefix: KeyPath, issues: Iterable[Issue], suffix: str = "") -> None:
        for issue in issues:
            self.add(prefix + issue.loc, issue.message + suffix, at_key=issue.at_key)

    def raise_if_any(self) -> None:
        if self.problems:
            problems = self.problems[:MAX_PROBLEMS]
            if len(self.problems) > MAX_PROBLEMS:
                extra = len(self.problems) - MAX_PROBLEMS
                problems.append(Problem(self.file, "", f"... and {extra} more problems"))
            raise SpecError(problems)


def _override_path(key: str) -> KeyPath:
    """`base.model.n_layer` -> parts; grid keys keep their dots (`grid.model.n_layer`: 2 parts),
    and so do searched keys (`search.params.train.learning_rate.high`: 4 parts)."""
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 1:
        return ("grid", ".".join(parts[1:]))
    if parts[:2] == ["search", "params"] and len(parts) > 2:
        rest = parts[2:]
        cut = next((j for j in range(1, len(rest)) if rest[j] in PARAM_FIELDS), len(rest))
        if cut == len(rest) and len(rest) > 2 and walk_tree(section_tree(), tuple(rest))[1]:
            cut -= 1  # `KEY.hihg`: a misspelt field of a searched key, not a key
        tail = tuple(int(p) if p.isdigit() else p for p in rest[cut:])
        return ("search", "params", ".".join(rest[:cut]), *tail)
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _apply_overrides(
    raw: dict[str, Any], overrides: Sequence[str], locator: _Locator
) -> None:
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            locator.problems.append(
                Problem(locator.file, key or item, "expected --set KEY.PATH=VALUE", override=item)
            )
            continue
        path = _override_path(key)
        tree, failed = walk_tree(spec_tree(), path)
        if failed is not None:
            bad = path[failed]
            hint = did_you_mean(bad, explicit_keys(tree))
            where = display_path(path[:failed]) or "the top level"
            if isinstance(tree, dict):
                message = f"no key '{bad}' in {where}{hint}"
            else:
                message = f"'{display_path(path[:failed])}' holds a value, not a mapping"
            locator.problems.append(Problem(locator.file, key, message, override=key))
            continue
        value, error = parse_override_value(text)
        if error is not None:
            locator.problems.append(
                Problem(locator.file, key, f"cannot parse value {text!r}: {error}", override=key)
            )
            continue
        target: Any = raw
        for part in path[:-1]:
            if isinstance(target, list) and isinstance(part, int) and part < len(target):
                target = target[part]
            elif isinstance(target, dict):
                if not isinstance(target.get(part), dict | list):
                    target[part] = {}
                target = target[part]
            else:
                target = None
                break
        last = path[-1]
        if isinstance(target, dict):
            target[last] = value
        elif isinstance(target, list) and isinstance(last, int) and last < len(target):
            target[last] = value
        else:
            locator.problems.append(
                Problem(locator.file, key, "no such list item in the file", override=key)
            )
            continue
        # What was written in the file under this path no longer applies.
        for written in [p for p in locator.positions if p[: len(path)] == path]:
            del locator.positions[written]
        locator.origins[path] = key


def _check_override_keys(
    override: dict[str, Any], tree: dict[str, Any], path: KeyPath, locator: _Locator
) -> bool:
    """Report keys of an arm's override that base's schema does not have. True if all are known."""
    ok = True
    for key, value in override.items():
        if key not in tree and ANY not in tree:
            hint = did_you_mean(key, explicit_keys(tree))
            locator.add(path + (key,), f"unknown key '{key}'{hint}", at_key=True)
            ok = False
            continue
        subtree = tree.get(key, tree.get(ANY))
        if isinstance(subtree, dict) and isinstance(value, dict):
            ok = _check_override_keys(value, subtree, path + (key,), locator) and ok
    return ok


def _leaf_settings(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, subtree in tree.items():
        if key == ANY:
            continue
        name = f"{prefix}{key}"
        out += _leaf_settings(subtree, name + ".") if isinstance(subtree, dict) else [name]
    return out


def _check_grid_key(key: str, locator: _Locator) -> bool:
    parts = tuple(key.split("."))
    tree, failed = walk_tree(section_tree(), parts)
    if failed is None and tree is None and len(parts) > 1:
        return True
    if failed is None and isinstance(tree, dict):
        message = f"grid key '{key}' names a section, not a setting"
        leaves = _leaf_settings(tree, key + ".")
        if leaves:
            message += f" (e.g. '{leaves[0]}')"
    else:
        hint = did_you_mean(key, _leaf_settings(section_tree()))
        message = f"unknown setting '{key}'{hint}; grid keys look like 'model.n_layer'"
    locator.add(("grid", key), message, at_key=True)
    return False


def _read_top_level(
    text: str, file: str, overrides: Sequence[str]
) -> tuple[dict[str, Any], _Locator]:
    """The file's top-level mapping with the `--set` overrides applied, and its locator."""
    raw, positions, yaml_problems = parse_yaml(text, file)
    if yaml_problems:
        raise SpecError(yaml_problems)
    locator = _Locator(file, positions, {})
    if raw is None:
        locator.add((), "the file is empty: expected a mapping with name, description, seeds, "
                        "base and variants")
        locator.raise_if_any()
    if not isinstance(raw, dict):
        locator.add((), f"the top level must be a mapping of keys, got {type(raw).__name__}")
        locator.raise_if_any()
    # `grid:` or `claims:` left empty (e.g. every entry commented out) means none.
    for key, empty in (("grid", {}), ("claims", [])):
        if key in raw and raw[key] is None:
            raw[key] = empty
    _apply_overrides(raw, overrides, locator)
    locator.raise_if_any()
    return raw, locator


def parse_spec(
    text: str, file: str, overrides: Sequence[str] = (), path: Path | None = None
) -> ExperimentSpec:
    """Check the text of an experiment file; see `load_spec`."""
    raw, locator = _read_top_level(text, file, overrides)

    # 1. Structure.
    try:
        parsed = SpecFile.model_validate(raw)
    except ValidationError as error:
        locator.add_issues((), issues_from_errors(error.errors(include_url=False), (), spec_tree()))
        locator.raise_if_any()
    for i, seed in enumerate(parsed.seeds):
        if seed in parsed.seeds[:i]:
            locator.add(("seeds", i), f"duplicate seed {seed}")

    # 2. Base sections.
    base = raw["base"]
    locator.add_issues(("base",), check_sections(base)[1])
    locator.raise_if_any()

    # 3. Arms: keys first (did-you-mean against base's schema), then base + override.
    variants = {
        arm: {s: v for s, v in (raw["variants"][arm] or {}).items() if v} for arm in parsed.variants
    }
    for arm, written in variants.items():
        if _check_override_keys(written, section_tree(), ("variants", arm), locator):
            locator.add_issues(("variants", arm), check_sections(merge_sections(base, written))[1])
    locator.raise_if_any()

    # 4. Grid keys and values; the search's structure and keys.
    _check_grid(parsed.grid, variants, locator)
    locator.raise_if_any()
    search, confirm = _check_search_structure(raw, parsed.seeds, parsed.grid, variants, locator)
    locator.raise_if_any()

    spec = ExperimentSpec(
        name=parsed.name,
        description=parsed.description,
        seeds=list(parsed.seeds),
        base=base,
        variants=variants,
        grid=dict(parsed.grid),
        claims=list(parsed.claims),
        cost=parsed.cost,
        path=path,
        text=text,
        overrides=tuple(overrides),
        search=search,
        confirm=confirm,
    )
    # 5. Every arm x grid point, and no two of them the same config; the searched values and
    # the confirm runs' length for every arm x grid point.
    _check_runs(spec, locator)
    locator.raise_if_any()
    for at, message, at_key in check_search_values(spec):
        locator.add(at, message, at_key=at_key)
    locator.raise_if_any()

    # 6. Claims name arms that exist and say which way they go.
    _check_claims(spec, locator)
    locator.raise_if_any()
    return spec


def _check_search_structure(
    raw: dict[str, Any], seeds: list[int], grid: dict[str, list[Any]],
    variants: dict[str, dict[str, Any]], locator: _Locator,
) -> tuple[SearchConfig | None, ConfirmConfig | None]:
    """`search:` and `confirm:` as written, with their seeds resolved; their keys are settings
    that neither an arm nor the grid sets."""
    search, confirm, issues = resolve_search_sections(raw.get("search"), raw.get("confirm"), seeds)
    locator.add_issues((), issues)
    if search is None:
        return None, None
    for path, message, at_key in check_searched_keys(search, grid, variants):
        locator.add(path, message, at_key=at_key)
    return search, confirm


def _check_grid(
    grid: dict[str, list[Any]], variants: dict[str, dict[str, Any]], locator: _Locator
) -> None:
    for key, values in grid.items():
        if not _check_grid_key(key, locator):
            continue
        for j, value in enumerate(values):
            if any(_canonical(value) == _canonical(v) for v in values[:j]):
                locator.add(("grid", key, j), f"duplicate value {value!r}")
        for arm, override in variants.items():
            node: Any = override
            for part in key.split("."):
                node = node.get(part, ...) if isinstance(node, dict) else ...
            if node is not ...:
                locator.add(
                    ("variants", arm, *key.split(".")),
                    f"also swept by grid key '{key}': the grid value would replace it",
                )


def _check_runs(spec: ExperimentSpec, locator: _Locator) -> None:
    grid_index = {
        key: {_canonical(v): j for j, v in enumerate(values)} for key, values in spec.grid.items()
    }
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    reported: set[tuple[str, str]] = set()
    # A bad grid value usually fails for every arm: say so once, listing the arms it fails for.
    failing_arms: dict[tuple[KeyPath, str], list[str]] = {}
    for point in spec.grid_points():
        for arm in spec.arms:
            resolved, issues = check_sections(spec.merged(arm, point))
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            for issue in issues:
                dotted = ".".join(str(p) for p in issue.loc)
                if dotted in point:
                    at: KeyPath = ("grid", dotted, grid_index[dotted][_canonical(point[dotted])])
                    arms = failing_arms.setdefault((at, issue.message), [])
                    if arm not in arms:
                        arms.append(arm)
                else:
                    at = ("variants", arm, *issue.loc)
                    locator.add(at, f"{issue.message} (arm '{arm}' at grid point {where})")
            if resolved is not None:
                _note_duplicate(arm, point, resolved, seen, reported, locator)
    for (at, message), arms in failing_arms.items():
        which = "every arm" if len(arms) == len(spec.arms) else "arm " + ", ".join(arms)
        locator.add(at, f"{message} (for {which})")


def _check_claims(spec: ExperimentSpec, locator: _Locator) -> None:
    for i, claim in enumerate(spec.claims):
        for key in ("arm", "baseline_arm"):
            name = getattr(claim, key)
            if name not in spec.variants:
                hint = did_you_mean(name, spec.arms)
                locator.add(("claims", i, key), f"no arm '{name}' in variants{hint}")
        if claim.arm == claim.baseline_arm:
            locator.add(("claims", i, "baseline_arm"), "a claim compares two different arms")
        numbers = claim.value is not None and claim.baseline_value is not None
        if claim.direction() is None:
            locator.add(
                ("claims", i),
                "give `expect: lower|higher`, or both `value` and `baseline_value`",
            )
        elif claim.expect is not None and numbers and claim.value != claim.baseline_value:
            if claim.expect != ("lower" if claim.value < claim.baseline_value else "higher"):
                locator.add(
                    ("claims", i, "expect"),
                    f"expect: {claim.expect} contradicts value {claim.value} vs baseline_value "
                    f"{claim.baseline_value}",
                )


def _note_duplicate(
    arm: str,
    point: dict[str, Any],
    resolved: Sections,
    seen: dict[str, tuple[str, dict[str, Any]]],
    reported: set[tuple[str, str]],
    locator: _Locator,
) -> None:
    """Two arms with the same resolved config would be the same runs under two names."""
    canonical = _canonical(resolved.as_dict())
    if canonical in seen:
        other, _ = seen[canonical]
        if (other, arm) not in reported and other != arm:
            reported.add((other, arm))
            locator.add(
                ("variants", arm),
                at_key=True,
                message=f"arm '{arm}' resolves to the same config as arm '{other}'"
                + (f" at grid point {point}" if point else "")
                + ": it would repeat the same runs",
            )
    else:
        seen[canonical] = (arm, point)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Load and check an experiment file. `overrides` are `KEY.PATH=VALUE` strings (`--set`),
    with VALUE read as YAML (`3`, `1e-3`, `paper`, `[0, 1]`). Raises SpecError."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(file, "", "no such file")]) from None
    except UnicodeDecodeError as error:
        raise SpecError([Problem(file, "", f"not UTF-8 text ({error.reason})")]) from None
    except OSError as error:
        raise SpecError([Problem(file, "", f"cannot read: {error.strerror}")]) from None
    return parse_spec(text, file, overrides, path)
