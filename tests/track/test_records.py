"""rtlab.track.records: the read side, on a real SQLite MLflow store written by rtlab.track."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rtlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.track import ChildRun, finish_parent, setup_experiment
from rtlab.track.names import OVERRIDES_TAG, SPEC_PATH_TAG
from rtlab.track.records import (
    RunLookupError,
    artifact_files,
    data_config,
    download_artifact,
    experiment_names,
    find_run,
    last_logged_step,
    log_directory,
    metric_histories,
    read_experiment,
    read_runs_by_hash,
    read_text_artifact,
    run_config,
)


def make_run(seed: int = 0, arm: str = "baseline", lr: float = 1e-3) -> RunConfig:
    return RunConfig(experiment="exp", arm=arm, seed=seed, grid_point={"train.learning_rate": lr},
                     data=DataConfig(name="tiny", size="small", p=[0.1, 0.5]),
                     model=ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8),
                     train=TrainConfig(max_iters=5, learning_rate=lr, threads=None))


def finished_child(handle, run: RunConfig, final_val: float) -> str:
    child = ChildRun.open(handle, run, device="cpu")
    for step in (1, 2, 3):
        child.log_metrics(step, {"batch_loss": 4.0 - step, "val_loss": final_val + 3 - step})
    child.log_metrics(3, {"final_val_loss": final_val, "tokens_seen": 96.0})
    child.finish("FINISHED")
    return child.run_id


def test_an_experiment_reads_back_as_typed_records(store):
    handle = setup_experiment("exp", store)
    client = MlflowClient(store)
    client.set_tag(handle.parent_run_id, SPEC_PATH_TAG, "experiments/exp.yaml")
    client.set_tag(handle.parent_run_id, OVERRIDES_TAG, json.dumps(["seeds=[0]"]))
    run = make_run()
    run_id = finished_child(handle, run, 2.5)
    failed = ChildRun.open(handle, make_run(seed=1), device="cpu")
    failed.finish("FAILED", failure_reason="diverged: loss is nan")
    finish_parent(handle, "FINISHED")

    experiment = read_experiment("exp", store)
    assert experiment is not None and experiment.experiment_id == handle.experiment_id
    assert experiment.parent.run_id == handle.parent_run_id
    assert experiment.parent.spec_path == "experiments/exp.yaml"
    assert experiment.parent.overrides == ("seeds=[0]",)
    children = {child.run_id: child for child in experiment.children}
    assert len(children) == 2
    child = children[run_id]
    assert (child.name, child.arm, child.seed, child.status) == (run.run_name, "baseline", 0,
                                                                 "FINISHED")
    assert child.grid_point == {"train.learning_rate": 1e-3} and child.grid_point_problem is None
    assert child.config_hash == run.config_hash
    assert child.metrics["final_val_loss"] == 2.5 and child.params["model.n_layer"] == "1"
    assert child.device == "cpu" and child.git_dirty in ("true", "false", "unknown")
    assert child.torch and child.python and child.rtlab_version
    assert child.start_time and child.end_time and child.end_time >= child.start_time
    (other,) = (c for c in experiment.children if c.run_id != run_id)
    assert other.status == "FAILED" and other.failure_reason == "diverged: loss is nan"
    assert experiment_names(store) == ["Default", "exp"]


def test_reading_creates_nothing(tmp_path: Path, store):
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert read_experiment("exp", absent) is None
    assert read_runs_by_hash("exp", absent) == {}
    assert experiment_names(absent) == []
    with pytest.raises(RunLookupError, match="no MLflow store"):
        find_run(absent, "abc")
    assert not (tmp_path / "absent.db").exists()
    assert read_experiment("no-such-experiment", store) is None


def test_the_resolved_config_comes_back_from_the_params(store):
    handle = setup_experiment("exp", store)
    run = make_run(lr=3e-4).model_copy(update={"data_fingerprint": "f" * 64})
    finished_child(handle, run, 2.5)
    (child,) = read_experiment("exp", store).children
    assert child.data_fingerprint == "f" * 64
    assert run_config(child, "exp") == run  # its hash is the run's: the data is part of it
    assert data_config(child) == run.data
    # A run that logged only part of a config gives no config, not one filled with defaults.
    hand_made = MlflowClient(store).create_run(
        handle.experiment_id, tags={"mlflow.parentRunId": handle.parent_run_id,
                                    "rtlab.arm": "baseline", "rtlab.seed": "0"})
    MlflowClient(store).log_param(hand_made.info.run_id, "data.name", "tiny")
    records = {c.run_id: c for c in read_experiment("exp", store).children}
    assert run_config(records[hand_made.info.run_id], "exp") is None
    assert data_config(records[hand_made.info.run_id]) == DataConfig(name="tiny")


def test_one_run_per_hash_a_finished_one_first(store):
    handle = setup_experiment("exp", store)
    run = make_run()
    finished_id = finished_child(handle, run, 2.5)
    client = MlflowClient(store)
    newer = client.create_run(handle.experiment_id, run_name=run.run_name, tags={
        "rtlab.role": "child", "rtlab.config_hash": run.config_hash})
    client.set_terminated(newer.info.run_id, "KILLED")
    by_hash = read_runs_by_hash("exp", store)
    assert list(by_hash) == [run.config_hash]
    assert by_hash[run.config_hash].run_id == finished_id


def test_histories_keep_the_later_value_of_a_step_logged_twice(store):
    handle = setup_experiment("exp", store)
    run_id = finished_child(handle, make_run(), 2.5)
    MlflowClient(store).log_metric(run_id, "val_loss", 9.5, step=2,
                                   timestamp=int(time.time() * 1000) + 60_000)
    points = metric_histories(store, [run_id], ["val_loss", "batch_loss"])
    assert [(p.metric, p.step) for p in points] == [
        ("batch_loss", 1), ("batch_loss", 2), ("batch_loss", 3),
        ("val_loss", 1), ("val_loss", 2), ("val_loss", 3),
    ]
    assert {p.step: p.value for p in points if p.metric == "val_loss"}[2] == 9.5
    assert metric_histories(store, [], ["val_loss"]) == []
    (child,) = read_experiment("exp", store).children
    assert last_logged_step(store, child) == 3


def test_find_run_by_id_hash_prefix_or_name(store):
    handle = setup_experiment("exp", store)
    first, second = make_run(seed=0), make_run(seed=1)
    first_id = finished_child(handle, first, 2.5)
    finished_child(handle, second, 2.6)
    assert find_run(store, first_id).run_id == first_id
    assert find_run(store, first.config_hash[:6]).run_id == first_id
    assert find_run(store, first.run_name).run_id == first_id
    with pytest.raises(RunLookupError, match="no run with this id"):
        find_run(store, "no-such-run")
    # A second run of the same config (rerun by hand): its name now names two runs.
    MlflowClient(store).create_run(handle.experiment_id, run_name=first.run_name, tags={
        "rtlab.role": "child", "rtlab.config_hash": first.config_hash})
    with pytest.raises(RunLookupError, match="ambiguous"):
        find_run(store, first.run_name)


def test_artifacts_up_and_down(store, tmp_path: Path):
    handle = setup_experiment("exp", store)
    MlflowClient(store).log_text(handle.parent_run_id, "name: exp\n", "spec.yaml")
    assert artifact_files(store, handle.parent_run_id) == ["spec.yaml"]
    assert read_text_artifact(store, handle.parent_run_id, "spec.yaml") == "name: exp\n"
    assert read_text_artifact(store, handle.parent_run_id, "absent.yaml") is None
    assert download_artifact(store, handle.parent_run_id, "checkpoint/ckpt.pt", tmp_path) is None
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# hi\n")
    log_directory(store, handle.parent_run_id, report, "report")
    got = download_artifact(store, handle.parent_run_id, "report/report.md", tmp_path / "down")
    assert got is not None and got.read_text() == "# hi\n"


def test_a_bad_grid_point_tag_is_reported_not_raised(store):
    handle = setup_experiment("exp", store)
    MlflowClient(store).create_run(handle.experiment_id, tags={
        "rtlab.role": "child", "rtlab.grid_point": "{not json"})
    (child,) = read_experiment("exp", store).children
    assert child.grid_point == {} and "not JSON" in child.grid_point_problem
    assert child.arm is None and child.seed is None and child.config_hash == ""
