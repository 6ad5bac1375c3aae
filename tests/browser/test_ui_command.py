"""`rtlab ui` without a browser: the URL it prints and the server it becomes."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from rtlab.cli import app
from rtlab.track import setup_experiment
from tests.helpers.tiny_spec import write_spec

runner = CliRunner()


class Became(Exception):
    """os.execv was called: `rtlab ui` would now be the MLflow server."""


@pytest.fixture
def execv(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []

    def record(path: str, argv: list[str]) -> None:
        calls.append(argv)
        raise Became

    monkeypatch.setattr(os, "execv", record)
    return calls


def test_ui_prints_the_runs_page_of_the_specs_experiment_then_serves_the_store(
    workdir, migrated_mlflow_db, execv
):
    (workdir / "mlflow.db").write_bytes(migrated_mlflow_db.read_bytes())
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    handle = setup_experiment("tiny", uri)
    spec = write_spec(workdir)
    result = runner.invoke(app, ["ui", str(spec), "--port", "5123"])
    assert isinstance(result.exception, Became), result.output
    assert f"runs: http://127.0.0.1:5123/#/experiments/{handle.experiment_id}/runs?" in (
        result.output)
    assert execv[0][-7:] == ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", "5123"]


def test_ui_without_an_experiment_prints_the_server_and_an_unknown_one_is_exit_2(
    workdir, migrated_mlflow_db, execv
):
    (workdir / "mlflow.db").write_bytes(migrated_mlflow_db.read_bytes())
    result = runner.invoke(app, ["ui"])
    assert isinstance(result.exception, Became)
    assert "runs: http://127.0.0.1:5000\n" in result.output
    result = runner.invoke(app, ["ui", "--experiment", "nope"])
    assert result.exit_code == 2 and "no experiment 'nope'" in result.output
    assert len(execv) == 1
