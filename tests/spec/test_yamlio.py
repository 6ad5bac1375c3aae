"""Safe YAML reading: YAML 1.2 scalars, no tags executed, duplicate keys caught, positions kept."""

from __future__ import annotations

import math
from pathlib import Path

from rtlab.spec.yamlio import parse_override_value, parse_yaml


def test_scalars_follow_yaml_1_2_core_schema():
    text = (
        "off_word: off\nyes_word: yes\nexp: 1e-3\nleading_zero: 010\nunderscored: 600_000\n"
        "inf: .inf\nt: true\nf: False\nnothing: ~\ndate: 2024-01-01\nhex: 0x1F\n"
    )
    data, _, problems = parse_yaml(text, "f.yaml")
    assert problems == []
    assert data["off_word"] == "off" and data["yes_word"] == "yes"  # YAML 1.1 would say False/True
    assert data["exp"] == 1e-3 and isinstance(data["exp"], float)  # YAML 1.1 would keep a string
    assert data["leading_zero"] == 10  # YAML 1.1 would read octal 8
    assert data["underscored"] == 600000
    assert data["inf"] == math.inf
    assert data["t"] is True and data["f"] is False and data["nothing"] is None
    assert data["date"] == "2024-01-01" and data["hex"] == 31


def test_python_tags_are_rejected_and_never_executed(tmp_path: Path):
    marker = tmp_path / "executed"
    text = f"a: !!python/object/apply:os.system ['touch {marker}']\nb: !!python/name:os.system\n"
    _, _, problems = parse_yaml(text, "evil.yaml")
    assert not marker.exists()
    messages = [str(p) for p in problems]
    assert any("evil.yaml:1:4: a:" in m and "!!python/object/apply:os.sys" in m for m in messages)
    assert any("evil.yaml:2:4: b:" in m and "!!python/name" in m for m in messages)


def test_duplicate_keys_are_errors_at_the_second_occurrence():
    _, _, problems = parse_yaml("top:\n  x: 1\n  y: 2\n  x: 3\n", "d.yaml")
    assert [str(p) for p in problems] == [
        "d.yaml:4:3: top.x: duplicate key 'x' (first at line 2, column 3)"
    ]


def test_merge_keys_work_and_explicit_keys_may_override_merged_ones():
    text = "defaults: &d {lr: 1, wd: 2}\narm:\n  <<: *d\n  lr: 5\n"
    data, _, problems = parse_yaml(text, "m.yaml")
    assert problems == []
    assert data["arm"] == {"lr": 5, "wd": 2}


def test_recursive_alias_is_an_error_not_a_hang():
    _, _, problems = parse_yaml("a: &x [1, *x]\n", "r.yaml")
    assert any("recursive YAML alias" in str(p) for p in problems)


def test_positions_of_keys_and_values_are_one_based():
    _, positions, _ = parse_yaml("a:\n  bb: [10, 20]\n", "p.yaml")
    assert positions[("a", "bb")].key == (2, 3)
    assert positions[("a", "bb")].value == (2, 7)
    assert positions[("a", "bb", 1)].value == (2, 12)


def test_syntax_error_is_one_located_problem():
    _, _, problems = parse_yaml("a: [1, 2\nb: 3\n", "s.yaml")
    assert len(problems) == 1
    assert problems[0].line == 2 and "invalid YAML" in problems[0].message


def test_override_values_are_read_as_yaml():
    assert parse_override_value("3") == (3, None)
    assert parse_override_value("1e-4") == (1e-4, None)
    assert parse_override_value("[0, 1]") == ([0, 1], None)
    assert parse_override_value("paper") == ("paper", None)
    value, error = parse_override_value("[0, 1")
    assert value is None and error is not None and "invalid YAML" in error


def test_alias_bomb_is_refused_quickly():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    data, _, problems = parse_yaml("\n".join(lines) + "\n", "bomb.yaml")
    assert data is None and len(problems) == 1 and "expanding aliases" in problems[0].message


def test_absurd_nesting_is_an_error_not_a_crash():
    _, _, problems = parse_yaml("a: " + "[" * 500 + "]" * 500 + "\n", "deep.yaml")
    assert len(problems) == 1 and "nested too deeply" in problems[0].message
