"""The Optuna run queue on a real SQLite storage."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from rtlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.sweep import queue as run_queue
from rtlab.sweep.queue import RunQueue

HANDLE = {"tracking_uri": "sqlite:///x.db", "experiment_id": "1", "experiment_name": "exp",
          "parent_run_id": "p"}


def make_run(seed: int = 0) -> RunConfig:
    return RunConfig(
        experiment="exp", arm="baseline", seed=seed, grid_point={"model.n_layer": 1},
        data=DataConfig(name="tiny", n_digits=3), model=ModelConfig(n_layer=1),
        train=TrainConfig(max_iters=5), data_fingerprint="f" * 64,
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return run_queue.default_storage_url(tmp_path / "exp")


@pytest.fixture
def queue(url: str) -> RunQueue:
    return RunQueue.create(url, "exp", HANDLE)


def test_empty_queue_pops_nothing_and_creates_no_trial(queue):
    assert queue.pop() is None
    assert queue.study.get_trials() == []


def test_trial_carries_the_whole_run_and_the_study_carries_the_store(queue, url):
    run = make_run()
    queue.enqueue(run)
    entry = RunQueue.open(url, "exp").pop()  # another process would open its own
    assert entry.run == run and entry.config_hash == run.config_hash  # same identity
    assert queue.trial(entry).state == TrialState.RUNNING
    assert queue.attrs == HANDLE
    assert run_queue.queued_hash(queue.trial(entry)) == run.config_hash


def test_concurrent_workers_claim_each_trial_exactly_once(queue, url):
    runs = [make_run(seed) for seed in range(12)]
    for run in runs:
        queue.enqueue(run)
    claimed: list[list[str]] = [[], [], []]

    def worker(slot: int) -> None:
        own = RunQueue.open(url, "exp")  # its own connection, as a process would have
        while (entry := own.pop()) is not None:
            claimed[slot].append(entry.config_hash)
            own.finish(entry, 1.0)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [h for slot in claimed for h in slot]
    assert sorted(everything) == sorted(r.config_hash for r in runs)  # each once, none lost
    trials = queue.study.get_trials()
    assert len(trials) == 12  # no extra trial from an empty-queue race
    assert {t.state for t in trials} == {TrialState.COMPLETE}


def test_a_claimant_past_the_end_still_finds_runs_queued_later(queue, url):
    worker = RunQueue.open(url, "exp")
    queue.enqueue(make_run(0))
    first = worker.pop()
    assert first.run == make_run(0) and worker.pop() is None  # its search is past the end
    queue.enqueue(make_run(1))  # a run queued again (a dead worker's), or a later sweep's
    assert worker.pop().run == make_run(1)
    assert worker.pop() is None


def test_finish_completes_with_the_value_or_fails_without_one(queue):
    queue.enqueue(make_run(0))
    queue.enqueue(make_run(1))
    done, failed = queue.pop(), queue.pop()
    queue.finish(done, 2.5)
    queue.finish(failed, None)
    assert (queue.trial(done).state, queue.trial(done).value) == (TrialState.COMPLETE, 2.5)
    assert queue.trial(failed).state == TrialState.FAIL


@pytest.mark.slow
def test_running_trial_of_a_dead_worker_is_failed_and_leaves_the_pending_set(queue):
    alive_run, dead_run = make_run(0), make_run(1)
    queue.enqueue(alive_run)
    queue.enqueue(dead_run)
    alive = queue.pop()  # this process: alive
    dead = queue.pop()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    queue.storage.set_trial_system_attr(dead.trial_id, run_queue.PID_ATTR, int(gone.stdout))
    assert queue.fail_stale() == [dead_run.config_hash]
    assert queue.pending_hashes() == {alive_run.config_hash}
    assert queue.trial(alive).state == TrialState.RUNNING
    assert queue.trial(dead).system_attrs[run_queue.STALE_ATTR] is True
    queue.finish(dead, 1.0)  # the worker was alive after all: its late word changes nothing
    assert queue.trial(dead).state == TrialState.FAIL


def test_silent_trial_of_another_host_is_stale_after_the_grace_period(queue):
    queue.enqueue(make_run())
    entry = queue.pop()
    queue.storage.set_trial_system_attr(entry.trial_id, run_queue.HOST_ATTR, "elsewhere")
    frozen = queue.trial(entry)
    beat = frozen.system_attrs[run_queue.HEARTBEAT_ATTR]
    assert not run_queue.is_stale(frozen, now=beat + 10)
    silent_for = run_queue.STALE_PERIODS * run_queue.HEARTBEAT_SECONDS
    assert not run_queue.is_stale(frozen, now=beat + silent_for - 1)
    assert run_queue.is_stale(frozen, now=beat + silent_for + 1)


def test_a_trial_is_judged_by_the_heartbeat_period_its_worker_promised(queue):
    queue.enqueue(make_run())
    entry = queue.pop(heartbeat_seconds=2.0)
    queue.storage.set_trial_system_attr(entry.trial_id, run_queue.HOST_ATTR, "elsewhere")
    frozen = queue.trial(entry)
    beat = frozen.system_attrs[run_queue.HEARTBEAT_ATTR]
    assert not run_queue.is_stale(frozen, now=beat + 3.5)
    assert run_queue.is_stale(frozen, now=beat + 4.5)


@pytest.mark.slow
def test_a_live_worker_requeues_the_run_of_a_dead_one_exactly_once(queue):
    lost = make_run(1)
    queue.enqueue(lost)
    dead = queue.pop()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    queue.storage.set_trial_system_attr(dead.trial_id, run_queue.PID_ATTR, int(gone.stdout))
    assert queue.running_count() == 1
    assert queue.requeue_stale() == [lost.config_hash]
    assert queue.requeue_stale() == []  # already failed and queued: nothing twice
    assert queue.running_count() == 0
    assert queue.pop().run == lost
    assert queue.running_count() == 0  # its own trial never makes a worker wait for itself
    assert queue.pop() is None


def test_waiting_runs_the_spec_no_longer_plans_leave_the_queue(queue):
    kept, edited_away = make_run(0), make_run(1)
    queue.enqueue(kept)
    queue.enqueue(edited_away)
    assert queue.drop_waiting_except({kept.config_hash}) == [edited_away.config_hash]
    assert queue.pending_hashes() == {kept.config_hash}
    assert run_queue.waiting_hashes(queue.url, "exp") == {kept.config_hash}
    assert queue.pop().run == kept
    assert queue.pop() is None
    assert run_queue.waiting_hashes(queue.url, "exp") == set()


def test_an_entry_this_rtlab_cannot_read_as_the_same_run_is_failed_and_passed_over(queue):
    run = make_run()
    # Queued by another rtlab: an older trial format, and a config whose hash differs here.
    queue.study.enqueue_trial({"config_hash": "0" * 12}, user_attrs={"run_name": "old-s0"})
    queue.study.enqueue_trial({}, user_attrs={run_queue.HASH_ATTR: "1" * 12,
                                              run_queue.RUN_ATTR: run.to_json()})
    queue.enqueue(run)
    assert queue.pop().run == run
    old, skewed, _ = queue.study.get_trials()
    for trial in (old, skewed):
        assert trial.state == TrialState.FAIL
        assert trial.system_attrs[run_queue.UNREADABLE_ATTR] is True
    assert queue.pop() is None


def test_a_missing_study_is_a_key_error(queue, url):
    with pytest.raises(KeyError):
        RunQueue.open(url, "no-such-study")


def test_queue_is_optuna_public_api_only():
    """No private Optuna attributes anywhere in rtlab (the adapter says what Optuna lacks)."""
    root = Path(__file__).resolve().parents[2] / "rtlab"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for private in ("._storage", "._trial_id", "._backend", "._study_id"):
            assert private not in text, f"{path}: {private}"
    assert optuna.__version__  # the installed Optuna is the one the suite ran against
