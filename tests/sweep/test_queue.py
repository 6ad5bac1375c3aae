"""The Optuna run queue on a real SQLite storage."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest

from rtlab.sweep import queue as run_queue
from rtlab.sweep.queue import QueuedRun


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    url = run_queue.default_storage_url(tmp_path / "exp")
    return run_queue.create_study(url, "exp", {"tracking_uri": "sqlite:///x.db"})


def queued(config_hash: str) -> QueuedRun:
    return QueuedRun(config_hash, f"run-{config_hash}", "baseline", 0, {}, {"train": {}})


def test_empty_queue_pops_nothing_and_creates_no_trial(study):
    assert run_queue.pop_waiting_trial(study) is None
    assert study.get_trials() == []


def test_trial_carries_the_run_and_the_study_carries_the_store(study):
    run_queue.enqueue(study, queued("h1"))
    trial = run_queue.pop_waiting_trial(study)
    frozen = run_queue.frozen(study, trial)
    assert QueuedRun.from_trial(frozen) == queued("h1")
    assert frozen.state == optuna.trial.TrialState.RUNNING
    assert study.user_attrs["tracking_uri"] == "sqlite:///x.db"


def test_concurrent_workers_claim_each_trial_exactly_once(study, tmp_path):
    for index in range(12):
        run_queue.enqueue(study, queued(f"h{index}"))
    url = run_queue.default_storage_url(tmp_path / "exp")
    claimed: list[list[str]] = [[], [], []]

    def worker(slot: int) -> None:
        own = run_queue.load_study(url, "exp")  # its own connection, as a process would have
        while (trial := run_queue.pop_waiting_trial(own)) is not None:
            claimed[slot].append(run_queue.queued_hash(run_queue.frozen(own, trial)))
            own.tell(trial, 1.0)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [h for slot in claimed for h in slot]
    assert sorted(everything) == sorted(f"h{i}" for i in range(12))  # each once, none lost
    assert len(study.get_trials()) == 12  # no extra trial from an empty-queue race


@pytest.mark.slow
def test_running_trial_of_a_dead_worker_is_failed_and_leaves_the_pending_set(study):
    run_queue.enqueue(study, queued("alive"))
    run_queue.enqueue(study, queued("dead"))
    alive = run_queue.pop_waiting_trial(study)  # this process: alive
    dead = run_queue.pop_waiting_trial(study)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    study._storage.set_trial_system_attr(dead._trial_id, run_queue.PID_ATTR, int(gone.stdout))
    assert run_queue.fail_stale_trials(study) == ["dead"]
    assert run_queue.pending_hashes(study) == {"alive"}
    assert run_queue.frozen(study, alive).state == optuna.trial.TrialState.RUNNING


def test_silent_trial_of_another_host_is_stale_after_the_grace_period(study):
    run_queue.enqueue(study, queued("remote"))
    trial = run_queue.pop_waiting_trial(study)
    study._storage.set_trial_system_attr(trial._trial_id, run_queue.HOST_ATTR, "elsewhere")
    frozen = run_queue.frozen(study, trial)
    beat = frozen.system_attrs[run_queue.HEARTBEAT_ATTR]
    assert not run_queue.is_stale(frozen, now=beat + 10)
    assert run_queue.is_stale(frozen, now=beat + run_queue.STALE_AFTER_SECONDS + 1)


def test_waiting_runs_the_spec_no_longer_plans_leave_the_queue(study):
    for config_hash in ("kept", "edited_away"):
        run_queue.enqueue(study, queued(config_hash))
    assert run_queue.drop_waiting_except(study, {"kept"}) == ["edited_away"]
    assert run_queue.pending_hashes(study) == {"kept"}
    trial = run_queue.pop_waiting_trial(study)
    assert run_queue.queued_hash(run_queue.frozen(study, trial)) == "kept"
    assert run_queue.pop_waiting_trial(study) is None
