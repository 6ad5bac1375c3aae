"""Every file of the invalid-spec corpus through `rtlab run`: exit 2, one located message naming
the file and the key, and nothing created in MLflow or Optuna."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rtlab.cli import app
from tests.helpers.spec_corpus import INVALID_FILES, read_header


# The corpus size is checked once, in tests/spec/test_invalid_corpus.py.
@pytest.mark.parametrize("path", INVALID_FILES, ids=[p.stem for p in INVALID_FILES])
def test_invalid_spec_exits_2_names_file_and_key_and_creates_nothing(path, workdir):
    expect, sets = read_header(path)
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
