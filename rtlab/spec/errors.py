"""Spec problems and the error carrying them: one line each, `FILE:LINE:COL: key.path: message`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located in its file (1-based line/col) or in a `--set`."""

    file: str
    key_path: str
    message: str
    line: int | None = None
    col: int | None = None
    override: str | None = None  # the `--set` key path the offending value came from

    def __str__(self) -> str:
        if self.override is not None:
            where = f"{self.file}: --set {self.override}"
            # The override already names the key; repeat the path only when the problem lies deeper.
            if self.key_path and self.key_path != self.override:
                where += f": {self.key_path}"
            return f"{where}: {self.message}"
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        if self.key_path:
            where += f": {self.key_path}"
        return f"{where}: {self.message}"


class SpecError(ValueError):
    """An invalid experiment spec. `str()`: one line per problem; `.problems`: structured."""

    def __init__(self, problems: Iterable[Problem]):
        unique: list[Problem] = []
        seen: set[str] = set()
        for problem in problems:
            text = str(problem)
            if text not in seen:
                seen.add(text)
                unique.append(problem)
        self.problems = unique
        super().__init__("\n".join(str(p) for p in unique))


def did_you_mean(word: object, candidates: Iterable[str]) -> str:
    """rtlab.data's suggestion helper (the one implementation), imported late: `rtlab.data`
    imports torch, and reading a spec need not."""
    from rtlab.data.base import did_you_mean as suggest

    return suggest(word, candidates)
