"""rtlab.report.status: planned runs as the store and the local queue have them (what `rtlab
status`, `rtlab run --dry-run` and the sweep summary show)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.report.status import (
    PENDING,
    QUEUED,
    final_val_loss_by_config,
    run_states,
    stored_states,
)
from rtlab.sweep.queue import RunQueue, default_storage_url, experiment_state_dir
from rtlab.track import ChildRun, setup_experiment
from tests.helpers.report_store import Store


def planned(arm: str, seed: int, lr: float) -> RunConfig:
    return RunConfig(experiment="statused", arm=arm, seed=seed,
                     grid_point={"train.learning_rate": lr}, data=DataConfig(name="tiny"),
                     model=ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8,
                                       reasoning={"n_tokens": int(arm == "reasoning")}),
                     train=TrainConfig(max_iters=30, learning_rate=lr))


def test_states_steps_losses_and_finished_seeds_by_config(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the local queue lives in ./.rtlab/<experiment>
    runs = [planned("baseline", seed, 1e-3) for seed in (0, 1)]
    runs += [planned("baseline", 0, 3e-3), planned("reasoning", 0, 1e-3)]
    handle = setup_experiment("statused", store.uri, artifact_root=store.root)
    for run, final_val in zip(runs[:2], (2.5, 2.7), strict=True):
        child = ChildRun.open(handle, run, device="cpu")
        child.log_metrics(10, {"batch_loss": 3.0, "train_loss": 2.9, "val_loss": 3.1})
        child.log_metrics(30, {"batch_loss": 2.0, "train_loss": final_val - 0.1,
                               "val_loss": final_val, "final_val_loss": final_val,
                               "best_val_loss": final_val})
        child.finish("FINISHED")
    killed = ChildRun.open(handle, runs[2], device="cpu")
    killed.log_metrics(10, {"batch_loss": 3.0})
    killed.finish("KILLED")
    queue = RunQueue.create(default_storage_url(experiment_state_dir("statused")), "statused",
                            {})
    queue.enqueue(runs[3])

    states = run_states(runs, "statused", store.uri)
    assert [s.state for s in states] == ["FINISHED", "FINISHED", "KILLED", QUEUED]
    assert [s.step for s in states] == [30, 30, 10, 0]
    assert (states[0].train_loss, states[0].val_loss, states[0].best_val_loss) == (2.4, 2.5, 2.5)
    assert states[2].val_loss is None and states[3].run == runs[3]
    assert stored_states("statused", store.uri) == {
        runs[0].config_hash: "FINISHED", runs[1].config_hash: "FINISHED",
        runs[2].config_hash: "KILLED",
    }
    (result,) = final_val_loss_by_config(runs, "statused", store.uri)
    assert (result.arm, result.grid_point, result.values) == (
        "baseline", "learning_rate=0.001", (2.5, 2.7))
    assert result.mean == pytest.approx(2.6) and result.sd == pytest.approx(0.1414213562)


def test_nothing_there_is_pending_and_creates_nothing(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    states = run_states([planned("baseline", 0, 1e-3)], "statused", uri)
    assert [(s.state, s.step) for s in states] == [(PENDING, 0)]
    assert final_val_loss_by_config([planned("baseline", 0, 1e-3)], "statused", uri) == []
    assert list(tmp_path.iterdir()) == []
