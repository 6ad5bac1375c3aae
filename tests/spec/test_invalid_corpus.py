"""Every file in tests/spec/invalid/ is rejected with a located message naming the file and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rtlab.spec import SpecError, load_spec

INVALID_DIR = Path(__file__).parent / "invalid"
INVALID_FILES = sorted(INVALID_DIR.glob("*.yaml"))


def read_header(path: Path) -> tuple[str, list[str]]:
    """(expected substring, --set overrides) from the file's leading comment lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("# expect: "), f"{path}: line 1 must be '# expect: ...'"
    expect = lines[0].removeprefix("# expect: ").strip()
    sets = []
    for line in lines[1:]:
        if not line.startswith("# set: "):
            break
        sets.append(line.removeprefix("# set: ").strip())
    return expect, sets


def test_corpus_has_at_least_30_files():
    assert len(INVALID_FILES) >= 30


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
