"""Never lost: `rtlab run` as a real process, killed (SIGKILL) or interrupted (SIGINT) mid-run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from rtlab.cli import app
from tests.helpers.tiny_spec import subprocess_env, write_spec

pytestmark = pytest.mark.slow  # real `rtlab run` processes, killed and resumed

MAX_ITERS = 60


def start_run(workdir: Path, spec: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rtlab.cli", "run", str(spec), "--quiet", "--workers", "1"],
        cwd=workdir, env=subprocess_env(workdir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_checkpoint(workdir: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((workdir / ".rtlab").glob("*/runs/*/ckpt.pt"))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def only_child(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`rtlab.role` = 'child'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def histories(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }


def test_sigkill_mid_run_then_rerun_resumes_same_run_with_identical_metrics(
    store_workdir, tmp_path, monkeypatch, migrated_mlflow_db
):
    workdir = store_workdir
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n", max_iters=MAX_ITERS,
                      checkpoint_interval=10, log_interval=1)
    process = start_run(workdir, spec)
    wait_for_checkpoint(workdir, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client, killed = only_child(uri, "tiny")
    logged_before = max(m.step for m in client.get_metric_history(killed.info.run_id,
                                                                 "batch_loss"))
    assert 10 <= logged_before < MAX_ITERS, "the kill must land mid-run"

    resumed = CliRunner().invoke(app, ["run", str(spec), "--quiet", "--workers", "1"],
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert "(resumed)" in resumed.output
    client, run = only_child(uri, "tiny")
    assert run.info.run_id == killed.info.run_id  # the same MLflow run, not a second one
    # The killed sweep's trial was stale (dead pid): failed, and the run queued again.
    storage = f"sqlite:///{workdir / '.rtlab' / 'tiny' / 'optuna.db'}"
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].system_attrs["rtlab.stale"] is True
    assert run.info.status == "FINISHED"
    resumed_histories = histories(client, run)
    for key, points in resumed_histories.items():
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: a step was logged twice"
    assert [s for s, _ in resumed_histories["batch_loss"]] == list(range(1, MAX_ITERS + 1))

    # The same config never interrupted, in another directory and store.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    monkeypatch.chdir(reference_dir)
    shutil.copy(migrated_mlflow_db, reference_dir / "mlflow.db")
    reference_spec = write_spec(reference_dir, seeds="[0]", variants="  baseline: {}\n",
                                max_iters=MAX_ITERS, checkpoint_interval=10, log_interval=1)
    reference_uri = f"sqlite:///{reference_dir / 'mlflow.db'}"
    result = CliRunner().invoke(
        app, ["run", str(reference_spec), "--quiet", "--workers", "1",
              "--tracking-uri", reference_uri],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    reference_client, reference = only_child(reference_uri, "tiny")
    assert run.data.tags["rtlab.config_hash"] == reference.data.tags["rtlab.config_hash"]
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "tokens_seen"):
        assert run.data.metrics[key] == reference.data.metrics[key], key
    reference_histories = histories(reference_client, reference)
    for key in ("val_loss", "train_loss", "batch_loss", "lr"):
        assert resumed_histories[key] == reference_histories[key], key


def test_sigint_stops_cleanly_marks_killed_and_exits_130(store_workdir):
    workdir = store_workdir
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n", max_iters=400,
                      checkpoint_interval=10, log_interval=1)
    process = start_run(workdir, spec)
    wait_for_checkpoint(workdir, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    client, run = only_child(f"sqlite:///{workdir / 'mlflow.db'}", "tiny")
    assert run.info.status == "KILLED"
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`rtlab.role` = 'parent'")
    assert parent.info.status == "KILLED"
