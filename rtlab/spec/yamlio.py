"""Safe YAML reading that remembers where every key and value was written.

PyYAML's SafeLoader is used only to *compose* the node tree; values are built here from the nodes
so that (1) nothing is ever executed or instantiated from a tag, (2) duplicate keys are errors
instead of silently keeping the last one, and (3) every key path maps to its line and column.

Scalars follow the YAML 1.2 core schema rather than PyYAML's YAML 1.1 default, because 1.1
surprises experiment files: `myopic: off` would be False, `1e-3` a string, `010` the number 8.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from rtlab.spec.errors import Problem

KeyPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


@dataclass(frozen=True)
class Located:
    """Where a key (None for the document root and list items) and its value start, 1-based."""

    key: tuple[int, int] | None
    value: tuple[int, int]


class _CoreSchemaLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalar resolution; we only use it to compose nodes."""

    yaml_implicit_resolvers: dict = {}  # filled below; replaces the YAML 1.1 table


_CoreSchemaLoader.add_implicit_resolver(
    _TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreSchemaLoader.add_implicit_resolver(
    _TAG + "null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_CoreSchemaLoader.add_implicit_resolver(
    _TAG + "int",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_CoreSchemaLoader.add_implicit_resolver(
    _TAG + "float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_CoreSchemaLoader.add_implicit_resolver(_TAG + "merge", re.compile(r"^<<$"), ["<"])


def _position(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG) :] if tag.startswith(_TAG) else tag


def _display(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


MAX_NODES = 20_000  # values after alias expansion; experiment files hold a few hundred


class _TooLarge(Exception):
    def __init__(self, node: Node):
        self.node = node


class _Builder:
    """Builds plain Python values from a composed node tree, collecting problems as it goes."""

    def __init__(self, loader: _CoreSchemaLoader, file: str):
        self.loader = loader
        self.file = file
        self.positions: dict[KeyPath, Located] = {}
        self.problems: list[Problem] = []
        self._active: set[int] = set()  # nodes being built: guards against recursive aliases
        self._budget = MAX_NODES  # aliases can nest exponentially ("billion laughs")

    def problem(self, path: KeyPath, mark: Any, message: str) -> None:
        line, col = _position(mark)
        self.problems.append(Problem(self.file, _display(path), message, line, col))

    def build(self, node: Node, path: KeyPath, key_pos: tuple[int, int] | None) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge(node)
        self.positions[path] = Located(key_pos, _position(node.start_mark))
        if node.tag not in _ALLOWED_TAGS:
            self.problem(
                path,
                node.start_mark,
                f"YAML tag '{_short_tag(node.tag)}' is not allowed: a spec holds plain data only "
                "(mappings, lists, strings, numbers, booleans, null); nothing is executed",
            )
            return None
        if id(node) in self._active:
            self.problem(path, node.start_mark, "recursive YAML alias")
            return None
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self.build(item, path + (i,), None) for i, item in enumerate(node.value)]
            assert isinstance(node, MappingNode)
            return self.mapping(node, path)
        finally:
            self._active.discard(id(node))

    def scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        text, tag = node.value, node.tag[len(_TAG) :]
        try:
            if tag == "str":
                return text
            if tag == "null":
                return None
            if tag == "bool":
                return text.lower() == "true"
            if tag == "int":
                return int(text.replace("_", ""), 0) if text[:2] in ("0o", "0x") else int(text)
            # float
            lowered = text.lower().replace("_", "")
            if lowered.endswith(".inf"):
                return -math.inf if lowered.startswith("-") else math.inf
            if lowered == ".nan":
                return math.nan
            return float(lowered)
        except ValueError:
            self.problem(path, node.start_mark, f"cannot read {text!r} as !!{tag}")
            return None

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        # Duplicates are checked on the keys written here, before `<<` merges are folded in
        # (a key written explicitly may legitimately override a merged one).
        first_seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _TAG + "merge":
                continue
            if key_node.value in first_seen:
                line, col = _position(first_seen[key_node.value])
                self.problem(
                    path + (key_node.value,),
                    key_node.start_mark,
                    f"duplicate key '{key_node.value}' (first at line {line}, column {col})",
                )
            else:
                first_seen[key_node.value] = key_node.start_mark
        try:
            self.loader.flatten_mapping(node)
        except yaml.MarkedYAMLError as error:
            self.problem(path, error.problem_mark or node.start_mark, f"bad merge: {error.problem}")
            return {}
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.problem(path, key_node.start_mark, "mapping keys must be plain strings")
                continue
            if key_node.tag not in _ALLOWED_TAGS:
                self.build(key_node, path + (key_node.value,), None)  # reports the tag
                continue
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                self.problem(
                    path + (str(key),),
                    key_node.start_mark,
                    f"key {key_node.value!r} must be a string (quote it)",
                )
                continue
            result[key] = self.build(value_node, path + (key,), _position(key_node.start_mark))
        return result


def parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, Located], list[Problem]]:
    """Parse one YAML document safely. Returns (data, positions by key path, problems).

    `data` is None for an empty document. Syntax errors come back as a single problem.
    """
    loader = _CoreSchemaLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            message = "; ".join(str(x) for x in (error.context, error.problem) if x)
            line, col = _position(mark) if mark is not None else (None, None)
            return None, {}, [Problem(file, "", f"invalid YAML: {message}", line, col)]
        except yaml.YAMLError as error:  # reader errors (bad characters) carry no mark
            return None, {}, [Problem(file, "", f"invalid YAML: {error}", 1, 1)]
        except RecursionError:
            return None, {}, [Problem(file, "", "invalid YAML: nested too deeply", 1, 1)]
        if node is None:
            return None, {(): Located(None, (1, 1))}, []
        builder = _Builder(loader, file)
        try:
            data = builder.build(node, (), None)
        except RecursionError:
            return None, {}, [Problem(file, "", "invalid YAML: nested too deeply", 1, 1)]
        except _TooLarge as error:
            line, col = _position(error.node.start_mark)
            message = f"more than {MAX_NODES} values after expanding aliases: not an experiment"
            return None, {}, [Problem(file, "", message, line, col)]
        return data, builder.positions, builder.problems
    finally:
        loader.dispose()


def parse_override_value(text: str) -> tuple[Any, str | None]:
    """Read the VALUE of `--set KEY=VALUE` as YAML (scalar or flow list/map): (value, error)."""
    data, _, problems = parse_yaml(text, "--set")
    if problems:
        return None, problems[0].message
    return data, None


def display_path(path: KeyPath) -> str:
    """`('base', 'model', 'n_layer')` -> `base.model.n_layer`; list indices as `[i]`."""
    return _display(path)
