"""Every file in tests/spec/invalid/ is rejected with a located message naming the file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rtlab.spec import SpecError, load_spec
from tests.helpers.spec_corpus import INVALID_FILES, MIN_FILES, read_header


def test_corpus_is_large_enough():
    assert len(INVALID_FILES) >= MIN_FILES


def test_the_valid_file_the_corpus_breaks_is_valid():
    spec = load_spec(Path(__file__).parent / "valid_minimal.yaml")
    assert spec.arms == ["baseline", "reasoning_1"]


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_invalid_file_is_rejected_naming_file_key_and_line(path: Path):
    expect, sets = read_header(path)
    with pytest.raises(SpecError) as info:
        load_spec(path, sets)
    lines = str(info.value).splitlines()
    assert lines, "a SpecError must say something"
    assert all(line.startswith(str(path)) for line in lines), lines
    naming = [line for line in lines if expect in line]
    assert naming, f"no line mentions {expect!r}: {lines}"
    located = re.compile(re.escape(str(path)) + r":\d+:\d+: ")
    # Problems in the file carry LINE:COL; problems in an override name the `--set` instead.
    assert any(located.match(line) or (sets and ": --set " in line) for line in naming), naming
    assert info.value.problems and all(p.file == str(path) for p in info.value.problems)
