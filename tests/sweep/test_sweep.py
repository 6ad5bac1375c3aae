"""run_sweep and run_worker on real stores: typed outcomes reach the summary from in-process and
process workers alike; finished runs are never run twice; stale trials are queued again."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from rich.console import Console

from rtlab.sweep import (
    RunOutcome,
    RunQueue,
    RunTimings,
    SweepOptions,
    SweepSummary,
    WorkerConfig,
    prepare_experiment,
    run_sweep,
    run_worker,
)
from rtlab.sweep.progress import SweepDisplay
from rtlab.sweep.queue import PID_ATTR, STALE_ATTR, default_storage_url, experiment_state_dir
from rtlab.track import ChildRun, find_child, resolve_tracking_uri
from tests.helpers.tiny_spec import write_spec


def outcome(status: str, seconds: float = 1.0, **fields) -> RunOutcome:
    timings = RunTimings(train_wall=4 * seconds, steps=2 * seconds, eval=seconds, tracking=0.5)
    return RunOutcome(run_name=f"r-{status}", config_hash=status[:4], arm="a", seed=0,
                      status=status, timings=timings, **fields)


def test_summary_is_computed_from_the_outcomes():
    summary = SweepSummary(
        experiment="e", tracking_uri="u", storage_url="s", planned=4, already_finished=1,
        queued=3, workers=2, stopped=False, wall_seconds=10.0,
        outcomes=[outcome("FINISHED", final_val_loss=2.0), outcome("FAILED", failure_reason="x"),
                  outcome("SKIPPED", seconds=0.0)],
    )
    assert [o.status for o in summary.failed] == ["FAILED"]
    assert [o.status for o in summary.ran] == ["FINISHED", "FAILED"]
    assert summary.step_seconds == 4.0 and summary.eval_seconds == 2.0
    assert summary.tracking_seconds == 1.5
    assert summary.train_other_seconds == 2.0  # 4 wall - 2 steps - 1 eval, per trained run
    assert summary.shares() == {"steps": 0.2, "eval": 0.1, "orchestration": pytest.approx(0.7)}


def test_display_shows_an_outcome_it_is_handed():
    console = Console(file=io.StringIO(), width=200)
    with SweepDisplay(total_runs=1, console=console) as display:
        display.handle({"type": "start", "worker": 0, "run_name": "r-FAILED", "max_iters": 5})
        display.handle(outcome("FAILED", failure_reason="diverged: loss is nan"))
    assert "failed r-FAILED · diverged: loss is nan" in console.file.getvalue()


def child_runs(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")


def study_trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    url = default_storage_url(experiment_state_dir("tiny"))
    return RunQueue.open(url, "tiny").study.get_trials()


@pytest.mark.slow
def test_in_process_worker_outcomes_reach_the_summary_and_a_rerun_runs_nothing(store_workdir):
    prepared = prepare_experiment(write_spec(store_workdir))
    summary = run_sweep(prepared, SweepOptions(workers=1, quiet=True))
    assert (summary.planned, summary.queued, summary.workers) == (4, 4, 1)
    assert all(isinstance(o, RunOutcome) for o in summary.outcomes)
    assert sorted(o.config_hash for o in summary.outcomes) == sorted(
        r.config_hash for r in prepared.runs)
    assert {o.status for o in summary.outcomes} == {"FINISHED"} and not summary.stopped
    runs = {r.info.run_id: r for r in child_runs(store_workdir)}
    for o in summary.outcomes:
        assert runs[o.run_id].data.metrics["final_val_loss"] == o.final_val_loss
        assert runs[o.run_id].data.tags["rtlab.config_hash"] == o.config_hash
        assert o.timings.steps > 0 and o.timings.tracking > 0
        assert o.timings.train_wall >= o.timings.steps + o.timings.eval
    trials = study_trials(store_workdir)
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == set(runs)
    assert {t.state for t in trials} == {TrialState.COMPLETE}

    again = run_sweep(prepare_experiment(store_workdir / "tiny.yaml"),
                      SweepOptions(workers=1, quiet=True))
    assert (again.already_finished, again.queued, again.workers) == (4, 0, 0)
    assert again.outcomes == [] and len(child_runs(store_workdir)) == 4


@pytest.mark.slow
def test_process_workers_send_their_typed_outcomes_to_the_summary(store_workdir):
    prepared = prepare_experiment(write_spec(store_workdir, log_interval=10))
    summary = run_sweep(prepared, SweepOptions(workers=2, quiet=True))
    assert summary.workers == 2
    assert sorted(o.config_hash for o in summary.outcomes) == sorted(
        r.config_hash for r in prepared.runs)  # each run once, none lost
    assert {o.status for o in summary.outcomes} == {"FINISHED"}
    assert {o.worker for o in summary.outcomes} == {0, 1}
    assert summary.step_seconds > 0
    assert {o.run_id for o in summary.outcomes} == {r.info.run_id
                                                   for r in child_runs(store_workdir)}


@pytest.mark.slow
def test_workers_0_queues_only_and_a_worker_skips_a_run_finished_meanwhile(store_workdir):
    prepared = prepare_experiment(write_spec(store_workdir, seeds="[0]"))
    queued = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    assert (queued.queued, queued.workers, queued.outcomes) == (2, 0, [])
    assert child_runs(store_workdir) == []
    # Another sweep (another machine) finishes the first queued run before a worker takes it.
    first = max(prepared.runs, key=lambda r: r.model.reasoning.n_tokens)  # longest: queued first
    handle = _handle(queued)
    elsewhere = ChildRun.open(handle, first, device="cpu")
    elsewhere.log_metrics(20, {"final_val_loss": 1.5})
    elsewhere.finish("FINISHED")

    config = WorkerConfig(storage_url=queued.storage_url, study_name="tiny",
                          state_dir=str(experiment_state_dir("tiny")))
    seen: list = []
    outcomes = run_worker(config, seen.append, lambda: False)
    assert [(o.config_hash, o.status) for o in outcomes] == [
        (first.config_hash, "SKIPPED"),
        (next(r.config_hash for r in prepared.runs if r is not first), "FINISHED"),
    ]
    assert outcomes[0].final_val_loss == 1.5 and outcomes[0].run_id == elsewhere.run_id
    assert [o for o in seen if isinstance(o, RunOutcome)] == outcomes  # the display got them too
    assert len(child_runs(store_workdir)) == 2  # the skipped run was not run again
    assert [t.state for t in study_trials(store_workdir)] == [TrialState.COMPLETE] * 2


@pytest.mark.slow
def test_the_trial_of_a_dead_worker_is_failed_and_its_run_queued_again(store_workdir):
    prepared = prepare_experiment(write_spec(store_workdir, seeds="[0]", variants="  b: {}\n"))
    (run,) = prepared.runs
    queued = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    queue = RunQueue.open(queued.storage_url, "tiny")
    entry = queue.pop()  # a worker took it, opened its MLflow run, and was SIGKILLed
    ChildRun.open(_handle(queued), run, device="cpu")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    queue.storage.set_trial_system_attr(entry.trial_id, PID_ATTR, int(gone.stdout))

    again = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    assert again.queued == 1
    dead, requeued = study_trials(store_workdir)
    assert dead.state == TrialState.FAIL and dead.system_attrs[STALE_ATTR] is True
    assert requeued.state == TrialState.WAITING
    assert find_child(_handle(queued), run.config_hash).status == "KILLED"  # resumable


def test_a_worker_left_alone_runs_the_run_of_a_dead_one_before_it_stops(store_workdir):
    """The only running trial is a dead worker's: the idle worker queues its run again and runs
    it, rather than stop with the run still queued."""
    prepared = prepare_experiment(write_spec(store_workdir, seeds="[0]", variants="  b: {}\n"))
    (run,) = prepared.runs
    queued = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    queue = RunQueue.open(queued.storage_url, "tiny")
    entry = queue.pop()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    queue.storage.set_trial_system_attr(entry.trial_id, PID_ATTR, int(gone.stdout))

    config = WorkerConfig(storage_url=queued.storage_url, study_name="tiny",
                          state_dir=str(experiment_state_dir("tiny")))
    outcomes = run_worker(config, lambda message: None, lambda: False)
    assert [(o.config_hash, o.status) for o in outcomes] == [(run.config_hash, "FINISHED")]
    dead, requeued = study_trials(store_workdir)
    assert dead.state == TrialState.FAIL and requeued.state == TrialState.COMPLETE


def _handle(summary: SweepSummary):
    from rtlab.sweep.worker import handle_from_attrs

    attrs = RunQueue.open(summary.storage_url, summary.experiment).attrs
    handle = handle_from_attrs(attrs, None)
    assert handle.tracking_uri == resolve_tracking_uri()
    return handle


@pytest.mark.slow
def test_a_worker_whose_run_was_taken_over_stops_and_leaves_it_to_the_new_owner(store_workdir):
    """A starved heartbeat looks like a dead worker: another worker fails the trial and queues
    the run again. The first worker learns it at its next beat and stops, writing nothing more:
    the MLflow run (still RUNNING, for its new owner), its metrics and its checkpoints are left."""
    from rtlab.sweep.worker import LOST_REASON, Worker, run_dir_for

    spec = write_spec(store_workdir, seeds="[0]", variants="  b: {}\n", max_iters=5000,
                      checkpoint_interval=50)
    prepared = prepare_experiment(spec)
    queued = run_sweep(prepared, SweepOptions(workers=0, quiet=True))
    state_dir = experiment_state_dir("tiny")
    config = WorkerConfig(storage_url=queued.storage_url, study_name="tiny",
                          state_dir=str(state_dir), heartbeat_seconds=0.2)
    other_worker = RunQueue.open(queued.storage_url, "tiny")
    taken_over = []

    def judge_stale_once(message) -> None:  # what another worker's stale scan does
        if (isinstance(message, dict) and message["type"] == "step" and message["step"] > 0
                and not taken_over):
            (trial,) = other_worker.storage.get_all_trials(other_worker.study_id,
                                                           states=(TrialState.RUNNING,))
            taken_over.append(other_worker._fail([trial], STALE_ATTR))

    worker = Worker(config, judge_stale_once, lambda: False)
    entry = worker.queue.pop(config.heartbeat_seconds)
    outcome = worker.run_trial(entry)

    assert taken_over and outcome.status == "LOST" and outcome.failure_reason == LOST_REASON
    assert 0 < outcome.steps < 5000  # it stopped within a beat or so, not at the end
    assert worker.queue.trial(entry).state == TrialState.FAIL  # its late word changed nothing
    (child,) = child_runs(store_workdir)
    assert child.info.status == "RUNNING"  # the new owner's to end
    assert not run_dir_for(state_dir, prepared.runs[0].config_hash).exists()
