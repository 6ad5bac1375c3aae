"""Every file of the invalid-spec corpus through `rtlab run`: exit 2, one located message naming
the file and the key, and nothing created in MLflow or Optuna."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtlab.cli import app

CORPUS = Path(__file__).resolve().parents[1] / "spec" / "invalid"
FILES = sorted(CORPUS.glob("*.yaml"))


def header(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text(errors="replace").splitlines()
    expect = lines[0].removeprefix("# expect:").strip()
    sets = [line.removeprefix("# set:").strip() for line in lines[1:] if line.startswith("# set:")]
    return expect, sets


def test_corpus_is_large_enough():
    assert len(FILES) >= 25


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_spec_exits_2_names_file_and_key_and_creates_nothing(path, workdir):
    expect, sets = header(path)
    args = ["run", str(path)]
    for override in sets:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert str(path) in result.output
    assert expect in result.output
    assert "Traceback" not in result.output
    created = sorted(p.name for p in workdir.iterdir() if p.name != "data")
    assert created == [], created  # no mlflow.db, mlartifacts/, mlruns/ or .rtlab/
