"""The shape the code promises (docs/ARCHITECTURE.md): who imports what, and how big things get."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rtlab"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_MODEL_FILE_LINES = 400  # gpt.py stays diffable against nanoGPT's model.py


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def test_only_track_imports_mlflow():
    outside = [relative(p) for p in SOURCES
               if "mlflow" in imported_modules(p) and "rtlab/track/" not in relative(p)]
    assert outside == []


def test_only_sweep_imports_optuna():
    outside = [relative(p) for p in SOURCES
               if "optuna" in imported_modules(p) and "rtlab/sweep/" not in relative(p)]
    assert outside == []


def test_the_config_module_imports_no_engine():
    assert imported_modules(PACKAGE / "config.py").isdisjoint({"torch", "mlflow", "optuna"})


def test_no_private_optuna_internals():
    pattern = re.compile(r"\._(storage|trial_id|backend|study_id)\b")
    hits = [f"{relative(p)}:{i}" for p in SOURCES
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


@pytest.mark.parametrize("path", SOURCES, ids=relative)
def test_functions_fit_on_a_screen(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_model_file_stays_nanogpt_sized():
    lines = (PACKAGE / "model" / "gpt.py").read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_MODEL_FILE_LINES
