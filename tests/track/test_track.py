"""rtlab.track on a real SQLite MLflow store in a tmp dir."""

from __future__ import annotations

import threading

from mlflow import MlflowClient

from rtlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.track import (
    ChildRun,
    MetricLogger,
    config_params,
    delete_children,
    find_child,
    finish_parent,
    finished_hashes,
    kill_running_children,
    resolve_tracking_uri,
    setup_experiment,
    start_parent,
    store_exists,
)
from rtlab.track.store import runs_by_hash  # MLflow-level: for checking the store itself


def make_run(seed: int = 0) -> RunConfig:
    return RunConfig(experiment="exp", arm="baseline", seed=seed, grid_point={"train.max_iters": 5},
                     data=DataConfig(name="tiny", p=[0.1, 0.5]), model=ModelConfig(n_layer=1),
                     train=TrainConfig(max_iters=5))


def open_child(handle, run: RunConfig | None = None, existing_run_id: str | None = None):
    return ChildRun.open(handle, run or make_run(), device="cpu", existing_run_id=existing_run_id)


def test_default_tracking_uri_is_mlflows_sqlite_default_in_the_working_directory(workdir, tmp_path,
                                                                                  monkeypatch):
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not store_exists(resolve_tracking_uri())  # resolving creates nothing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'other.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_setup_experiment_creates_one_parent_run_and_reuses_it(store, tmp_path):
    first = setup_experiment("exp", store, "what it tests")
    second = setup_experiment("exp", store)
    assert first == second
    client = MlflowClient(store)
    runs = client.search_runs([first.experiment_id])
    assert [r.data.tags["rtlab.role"] for r in runs] == ["parent"]
    assert runs[0].info.run_name == "exp"
    experiment = client.get_experiment(first.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts" / "exp").as_uri()
    assert experiment.tags["mlflow.note.content"] == "what it tests"


def test_child_run_has_parent_tags_and_flattened_params(store):
    handle = setup_experiment("exp", store)
    config = make_run()
    child = open_child(handle, config)
    child.finish("FINISHED")
    run = MlflowClient(store).get_run(child.run_id)
    assert run.info.run_name == "baseline-max_iters=5-s0"
    assert run.data.tags["mlflow.parentRunId"] == handle.parent_run_id
    assert run.data.tags["rtlab.config_hash"] == config.config_hash
    assert run.data.tags["rtlab.arm"] == "baseline" and run.data.tags["rtlab.seed"] == "0"
    assert run.data.tags["rtlab.grid_point"] == '{"train.max_iters": 5}'
    assert run.data.params == config_params(config)
    assert run.data.params["model.n_layer"] == "1" and run.data.params["seed"] == "0"
    assert run.info.status == "FINISHED"


def test_resumed_child_run_is_the_same_run_and_skips_logged_steps(store):
    handle = setup_experiment("exp", store)
    child = open_child(handle)
    for step in range(1, 8):
        child.log_metrics(step, {"loss": float(step)})
    child.finish("KILLED")

    client = MlflowClient(store)
    existing = runs_by_hash(client, handle.experiment_id)[make_run().config_hash]
    assert existing.info.status == "KILLED"
    resumed = open_child(handle, existing_run_id=existing.info.run_id)
    assert resumed.run_id == child.run_id and resumed.resumed
    for step in range(5, 11):  # resumed from a checkpoint at step 4: 5..7 come again
        resumed.log_metrics(step, {"loss": float(step)})
    resumed.finish("FINISHED")
    steps = [m.step for m in client.get_metric_history(child.run_id, "loss")]
    assert sorted(steps) == list(range(1, 11))
    assert client.get_run(child.run_id).info.status == "FINISHED"


def test_metric_logger_does_not_block_training_on_a_slow_store(store):
    handle = setup_experiment("exp", store)
    run_id = MlflowClient(store).create_run(handle.experiment_id).info.run_id
    release = threading.Event()

    class SlowClient(MlflowClient):
        """A real store that answers only when released (a stalled server)."""

        def log_batch(self, *args, **kwargs):
            release.wait(timeout=30)
            return super().log_batch(*args, **kwargs)

    logger = MetricLogger(SlowClient(store), run_id)
    for step in range(200):  # 400 metrics queued while the store is stalled
        logger.log(step, {"loss": 1.0 / (step + 1), "lr": 0.1})
    assert MlflowClient(store).get_metric_history(run_id, "loss") == []
    release.set()
    logger.close()
    history = MlflowClient(store).get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(200))
    assert logger.dropped == 0


def test_metric_logger_drops_non_finite_values(store):
    handle = setup_experiment("exp", store)
    run_id = MlflowClient(store).create_run(handle.experiment_id).info.run_id
    logger = MetricLogger(MlflowClient(store), run_id)
    logger.log(1, {"loss": float("nan"), "lr": 0.1})
    logger.close()
    assert MlflowClient(store).get_metric_history(run_id, "loss") == []
    assert len(MlflowClient(store).get_metric_history(run_id, "lr")) == 1


def test_config_params_use_dotted_keys_and_json_lists():
    flat = config_params(make_run(seed=3))
    assert flat["model.reasoning.n_tokens"] == "0"
    assert flat["data.p"] == "[0.1, 0.5]" and flat["data.name"] == "tiny"
    assert flat["train.max_iters"] == "5" and flat["seed"] == "3"
    assert set(flat) >= {"model.n_embd", "train.learning_rate", "train.min_lr"}


def test_parent_records_its_spec_and_reopens_on_a_rerun(store, tmp_path):
    handle = setup_experiment("exp", store)
    finish_parent(handle, "KILLED")
    start_parent(handle, tmp_path / "exp.yaml", "name: exp\n", ("seeds=[0]",))
    client = MlflowClient(store)
    parent = client.get_run(handle.parent_run_id)
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["rtlab.spec_path"] == str(tmp_path / "exp.yaml")
    assert parent.data.tags["rtlab.overrides"] == '["seeds=[0]"]'
    assert [a.path for a in client.list_artifacts(handle.parent_run_id)] == ["spec.yaml"]


def test_the_sweep_sees_child_runs_by_hash_as_plain_values(store):
    handle = setup_experiment("exp", store)
    finished, running, other = make_run(0), make_run(1), make_run(2)
    assert find_child(handle, finished.config_hash) is None
    done = open_child(handle, finished)
    done.log_metrics(5, {"final_val_loss": 1.25})
    done.finish("FINISHED")
    stuck = open_child(handle, running)  # a worker that died: RUNNING forever
    open_child(handle, other).finish("FAILED", "boom")

    state = find_child(handle, finished.config_hash)
    assert (state.run_id, state.status, state.final_val_loss) == (done.run_id, "FINISHED", 1.25)
    assert finished_hashes(handle) == {finished.config_hash}
    hashes = {finished.config_hash, running.config_hash}
    assert kill_running_children(handle, hashes) == [running.config_hash]
    assert find_child(handle, running.config_hash).status == "KILLED"
    assert find_child(handle, running.config_hash).run_id == stuck.run_id
    assert delete_children(handle, {finished.config_hash, other.config_hash}) == 2
    assert find_child(handle, finished.config_hash) is None  # soft-deleted: not live
    assert finished_hashes(handle) == set()
