"""The CLI of a searched experiment: validate and dry run describe the studies, bad searches exit
2 with a located line, and `rtlab dashboard` serves optuna-dashboard on 127.0.0.1 (or says why
it cannot, exit 2)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from rtlab.cli import app
from rtlab.sweep.queue import default_storage_url, experiment_state_dir
from tests.helpers.search_spec import TWO_ARMS, write_search_spec
from tests.helpers.servers import free_port
from tests.helpers.tiny_spec import subprocess_env

runner = CliRunner()


def test_validate_and_dry_run_describe_the_studies(workdir):
    spec = write_search_spec(workdir, variants=TWO_ARMS)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps at the console width
    assert "2 studies of 5 trials on seed(s) [0], then each arm's best on seed(s) [1]" in output
    dry = runner.invoke(app, ["run", str(spec), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "tiny_search/reasoning_1" in dry.output and "pruner median" in " ".join(
        dry.output.split())


def test_a_bad_search_exits_2_naming_file_line_and_key(workdir):
    spec = write_search_spec(workdir)
    result = runner.invoke(app, ["run", str(spec), "--set",
                                 "search.params.train.learning_rate.low=0"])
    assert result.exit_code == 2
    assert "--set search.params.train.learning_rate.low: a log range needs low > 0" in (
        result.output)
    assert not (workdir / ".rtlab").exists() and not (workdir / "mlflow.db").exists()


def test_dashboard_without_a_storage_or_the_extra_exits_2(workdir, monkeypatch):
    spec = write_search_spec(workdir)
    result = runner.invoke(app, ["dashboard", str(spec)])
    assert result.exit_code == 2 and "no study storage" in result.output
    make_storage(workdir)
    monkeypatch.setattr("rtlab.sweep.dashboard.importlib.util.find_spec", lambda name: None)
    result = runner.invoke(app, ["dashboard", str(spec)])
    assert result.exit_code == 2
    assert "optuna-dashboard is not installed: pip install 'rtlab[dashboard]'" in result.output


def make_storage(workdir: Path) -> str:
    state = experiment_state_dir("tiny_search", workdir / ".rtlab")
    state.mkdir(parents=True)
    url = default_storage_url(state)
    study = optuna.create_study(storage=url, study_name="tiny_search/baseline")
    trial = study.ask()
    study.tell(trial, trial.suggest_float("train.learning_rate", 1e-4, 0.3, log=True))
    return url


@pytest.mark.slow
def test_dashboard_serves_the_studies_on_loopback(workdir):
    pytest.importorskip("optuna_dashboard")
    spec = write_search_spec(workdir)
    make_storage(workdir)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rtlab.cli", "dashboard", str(spec), "--port", str(port)],
        cwd=workdir, env=subprocess_env(workdir), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        body = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "tiny_search/baseline" not in body:
            assert process.poll() is None, process.stdout.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                time.sleep(0.3)
        assert "tiny_search/baseline" in body
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
    finally:
        process.terminate()
        process.wait(timeout=20)
