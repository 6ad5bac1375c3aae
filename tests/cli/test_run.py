"""`rtlab run` end to end, in-process (CliRunner) on a real MLflow store and Optuna storage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from rtlab.cli import app
from tests.helpers.tiny_spec import write_spec

runner = CliRunner()


def invoke(*args: str):
    """`rtlab ARGS`; runs train in this process (one worker) unless the test says otherwise."""
    argv = list(args)
    if argv[0] == "run" and "--workers" not in argv:
        argv += ["--workers", "1"]
    return runner.invoke(app, argv, catch_exceptions=False)


def store_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def children(workdir: Path, experiment: str = "tiny"):
    client = MlflowClient(store_uri(workdir))
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`rtlab.role` = 'child'")


def trials(workdir: Path, experiment: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{workdir / '.rtlab' / experiment / 'optuna.db'}"
    return optuna.load_study(study_name=experiment, storage=storage).get_trials()


@pytest.mark.slow
def test_run_logs_parent_child_params_metrics_artifacts_and_rerun_starts_nothing(
    workdir, monkeypatch
):
    spec = write_spec(workdir)
    result = invoke("run", str(spec), "--quiet")
    assert result.exit_code == 0, result.output
    assert "4 run(s) queued" in result.output

    # The default store is MLflow's own default, in the working directory.
    assert (workdir / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(workdir))  # for mlflow.search_runs
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="pandas")
    parents = runs[runs["tags.rtlab.role"] == "parent"]
    kids = runs[runs["tags.rtlab.role"] == "child"]
    assert len(parents) == 1 and len(kids) == 4
    parent_id = parents["run_id"].iloc[0]
    assert parents["status"].iloc[0] == "FINISHED"
    assert set(kids["tags.mlflow.parentRunId"]) == {parent_id}
    assert set(kids["status"]) == {"FINISHED"}
    assert sorted(kids["tags.rtlab.arm"]) == ["baseline", "baseline", "reasoning_1", "reasoning_1"]
    assert sorted(kids["tags.rtlab.seed"]) == ["0", "0", "1", "1"]
    assert kids["tags.rtlab.config_hash"].nunique() == 4
    for tag in ("git_commit", "git_dirty", "version", "python", "torch", "device", "host"):
        assert kids[f"tags.rtlab.{tag}"].notna().all(), tag
    assert set(kids["tags.rtlab.grid_point"]) == {"{}"}
    # Params: the flattened resolved config, the seed and the FLOPs per token.
    assert set(kids["params.model.n_layer"]) == {"1"}
    assert set(kids["params.model.reasoning.n_tokens"]) == {"0", "1"}
    assert set(kids["params.train.learning_rate"]) == {"0.001"}
    assert set(kids["params.data.name"]) == {"precache_discrete"}
    assert set(kids["params.seed"]) == {"0", "1"}
    assert (kids["params.flops_per_token"].astype(float) > 0).all()

    client = MlflowClient(store_uri(workdir))
    for run_id in kids["run_id"]:
        val = client.get_metric_history(run_id, "val_loss")
        assert [m.step for m in val] == [0, 10, 20]
        batch = client.get_metric_history(run_id, "batch_loss")
        assert [m.step for m in batch] == [5, 10, 15, 20]
        for key in ("lr", "tokens_seen", "flops_seen", "tokens_per_sec"):
            assert client.get_metric_history(run_id, key), key
        final = client.get_run(run_id).data.metrics
        assert final["final_val_loss"] == val[-1].value
        assert final["best_val_loss"] == min(m.value for m in val)
        assert [m.step for m in client.get_metric_history(run_id, "final_val_loss")] == [20]
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.yaml", "metrics.csv", "sample.txt", "checkpoint"} <= artifacts
        assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == [
            "checkpoint/ckpt.pt"
        ]
        csv_lines = Path(client.download_artifacts(run_id, "metrics.csv", str(workdir))
                         ).read_text().splitlines()
        assert csv_lines[0].startswith("step,") and len(csv_lines) == 1 + 5  # steps 0,5,10,15,20
    # Artifacts live under ./mlartifacts (next to mlflow.db), as `mlflow server` keeps them.
    assert any((workdir / "mlartifacts").rglob("config.yaml"))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials(workdir))
    assert len(trials(workdir)) == 4

    # A second run of the same file starts nothing: no run, no trial.
    again = invoke("run", str(spec), "--quiet")
    assert again.exit_code == 0, again.output
    assert "0 run(s) queued, 4 already finished" in again.output
    assert len(children(workdir)) == 4
    assert len(trials(workdir)) == 4

    # status reads it back.
    status = invoke("status", str(spec))
    assert status.exit_code == 0
    assert status.output.count("FINISHED") == 4


@pytest.mark.slow
def test_workers_2_complete_every_run_exactly_once(store_workdir):
    workdir = store_workdir
    spec = write_spec(workdir, seeds="[0, 1]", log_interval=10)
    result = invoke("run", str(spec), "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert "2 worker(s)" in result.output
    kids = children(workdir)
    assert len(kids) == 4
    assert sorted(r.data.tags["rtlab.config_hash"] for r in kids) == sorted(
        {r.data.tags["rtlab.config_hash"] for r in kids}
    )
    assert {r.info.status for r in kids} == {"FINISHED"}
    all_trials = trials(workdir)
    assert len(all_trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in all_trials)
    # Two processes did the work (each trial records its worker's pid).
    assert len({t.system_attrs["rtlab.pid"] for t in all_trials}) == 2


@pytest.mark.slow
def test_diverged_run_fails_with_reason_and_the_sweep_goes_on(store_workdir):
    workdir = store_workdir
    variants = """\
  baseline: {}
  exploding:
    train:
      learning_rate: 1.0e+9
      min_lr: 0.0
      grad_clip: 0.0
"""
    spec = write_spec(workdir, seeds="[0]", variants=variants)
    result = invoke("run", str(spec), "--quiet", "--no-check")
    assert result.exit_code == 1, result.output
    by_arm = {r.data.tags["rtlab.arm"]: r for r in children(workdir)}
    assert by_arm["baseline"].info.status == "FINISHED"
    assert by_arm["exploding"].info.status == "FAILED"
    assert by_arm["exploding"].data.tags["rtlab.failure_reason"].startswith("diverged: ")


def test_dry_run_prints_the_plan_and_creates_nothing(workdir):
    spec = write_spec(workdir)
    result = invoke("run", str(spec), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "4 to run, 0 already finished" in result.output
    assert "reasoning_1-s1" in result.output
    assert not (workdir / "mlflow.db").exists()
    assert not (workdir / ".rtlab").exists()


@pytest.mark.slow
def test_force_reruns_finished_runs_as_fresh_runs(store_workdir):
    workdir = store_workdir
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n")
    assert invoke("run", str(spec), "--quiet").exit_code == 0
    (first,) = children(workdir)
    result = invoke("run", str(spec), "--quiet", "--force")
    assert result.exit_code == 0, result.output
    (second,) = children(workdir)  # the old run is soft-deleted: one live run per hash
    assert second.info.run_id != first.info.run_id
    assert second.data.tags["rtlab.config_hash"] == first.data.tags["rtlab.config_hash"]
    assert second.data.metrics["final_val_loss"] == first.data.metrics["final_val_loss"]


def test_check_prints_a_pass_table_for_each_arm(workdir):
    spec = write_spec(workdir)
    result = invoke("check", str(spec))
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "reasoning_1" in result.output
    assert "FAIL" not in result.output
    assert "all 2 arm configs pass" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_check_rejects_a_head_that_does_not_fit_the_dataset(workdir):
    # The audit checks the config the trainer builds: a mismatch is bad input, not a silent fix.
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n")
    result = invoke("check", str(spec), "--set", "base.model.head=regression")
    assert result.exit_code == 2, result.output
    assert "variants.baseline" in result.output and "model.head" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_validate_counts_runs_without_touching_stores(workdir):
    spec = write_spec(workdir, seeds="[0, 1, 2]")
    result = invoke("validate", str(spec))
    assert result.exit_code == 0, result.output
    assert "= 6 runs" in result.output
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_tracking_uri_option_selects_another_store(workdir, migrated_mlflow_db):
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n")
    other = workdir / "elsewhere.db"
    shutil.copy(migrated_mlflow_db, other)
    result = invoke("run", str(spec), "--quiet", "--tracking-uri", f"sqlite:///{other}")
    assert result.exit_code == 0, result.output
    assert other.exists() and not (workdir / "mlflow.db").exists()
    exp = MlflowClient(f"sqlite:///{other}").get_experiment_by_name("tiny")
    assert exp is not None


@pytest.mark.slow
def test_sample_generates_from_a_logged_checkpoint(store_workdir):
    workdir = store_workdir
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n")
    assert invoke("run", str(spec), "--quiet").exit_code == 0
    (run,) = children(workdir)
    result = invoke("sample", run.data.tags["rtlab.config_hash"], "--tokens", "10",
                    "--prompt", "")
    assert result.exit_code == 0, result.output
    assert len(result.output.strip()) > 0
    missing = invoke("sample", "no-such-run")
    assert missing.exit_code == 2
    assert "no-such-run" in missing.output


@pytest.mark.parametrize("command", ["run", "status", "check"])
def test_missing_file_is_one_line_exit_2(workdir, command):
    result = invoke(command, "nope.yaml")
    assert result.exit_code == 2
    assert "nope.yaml" in result.output
    assert "Traceback" not in result.output
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_grid_point_tag_is_json(store_workdir):
    workdir = store_workdir
    spec = write_spec(workdir, seeds="[0]", variants="  baseline: {}\n")
    text = spec.read_text() + "grid:\n  train.learning_rate: [0.001, 0.002]\n"
    spec.write_text(text)
    assert invoke("run", str(spec), "--quiet").exit_code == 0
    points = sorted(json.loads(r.data.tags["rtlab.grid_point"])["train.learning_rate"]
                    for r in children(workdir))
    assert points == [0.001, 0.002]
