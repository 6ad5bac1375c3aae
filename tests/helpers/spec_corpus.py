"""The invalid-spec corpus (tests/spec/invalid/), shared by the spec and CLI tests."""

from __future__ import annotations

from pathlib import Path

INVALID_DIR = Path(__file__).resolve().parents[1] / "spec" / "invalid"
INVALID_FILES = sorted(INVALID_DIR.glob("*.yaml"))
MIN_FILES = 30


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
