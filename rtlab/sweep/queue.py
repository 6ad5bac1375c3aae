"""The run queue: the runs of an experiment are trials of one Optuna study.

A trial is a queue entry, not an identity: the run's identity is its config hash (an MLflow tag).
The main process enqueues one WAITING trial per run that is not FINISHED in MLflow; workers pop
WAITING trials until none remain and tell each one COMPLETE (value: final val loss) or FAIL.

Each trial carries everything needed to run it (resolved config, seed, names) in its user
attributes, and the study carries the MLflow handle, so a worker needs only the storage URL and
the study name: a worker on another machine joins with the same storage URL (a shared database)
and tracking URI (`rtlab worker --storage URL --study NAME --tracking-uri URI`).
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)

STATE_DIR = Path(".rtlab")
HOST_ATTR = "rtlab.host"
PID_ATTR = "rtlab.pid"
HEARTBEAT_ATTR = "rtlab.heartbeat"
HEARTBEAT_SECONDS = 30.0
# A RUNNING trial of another machine whose heartbeat is older than this is taken as dead.
STALE_AFTER_SECONDS = 300.0


def experiment_state_dir(experiment: str, root: Path | None = None) -> Path:
    """`.rtlab/<experiment>/`: the study and the run directories (checkpoints) of an experiment."""
    return (root or STATE_DIR).resolve() / experiment


def default_storage_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'optuna.db'}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    # SQLite: wait for a writer instead of failing at once when several workers write.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def create_study(url: str, name: str, experiment_attrs: dict[str, str]) -> optuna.Study:
    """Create (or load) the study in the main process, before any worker opens it."""
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=open_storage(url), study_name=name, direction="minimize", load_if_exists=True
    )
    for key, value in experiment_attrs.items():
        study.set_user_attr(key, value)
    return study


def load_study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


@dataclass(frozen=True)
class QueuedRun:
    """What a trial carries: enough to train and log the run without the spec file."""

    config_hash: str
    run_name: str
    arm: str
    seed: int
    grid_point: dict[str, Any]
    config: dict[str, Any]

    def to_attrs(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name,
            "arm": self.arm,
            "seed": self.seed,
            "grid_point": self.grid_point,
            "config": self.config,
        }

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> QueuedRun:
        attrs = trial.user_attrs
        return cls(
            config_hash=trial.system_attrs["fixed_params"]["config_hash"],
            run_name=attrs["run_name"],
            arm=attrs["arm"],
            seed=int(attrs["seed"]),
            grid_point=dict(attrs["grid_point"]),
            config=dict(attrs["config"]),
        )


def queued_hash(trial: optuna.trial.FrozenTrial) -> str | None:
    return (trial.system_attrs.get("fixed_params") or {}).get("config_hash")


def enqueue(study: optuna.Study, run: QueuedRun) -> None:
    study.enqueue_trial({"config_hash": run.config_hash}, user_attrs=run.to_attrs())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: optuna.trial.FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING trial whose worker is gone: a dead pid on this host, or a silent heartbeat."""
    attrs = trial.system_attrs
    if attrs.get(HOST_ATTR) == socket.gethostname() and PID_ATTR in attrs:
        return not _pid_alive(int(attrs[PID_ATTR]))
    beat = attrs.get(HEARTBEAT_ATTR)
    if beat is None:
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        beat = started
    return (now or time.time()) - float(beat) > STALE_AFTER_SECONDS


def fail_stale_trials(study: optuna.Study) -> list[str]:
    """Mark RUNNING trials of dead workers FAIL (their runs get enqueued again); return hashes."""
    storage = study._storage
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial):
            continue
        try:
            storage.set_trial_system_attr(trial._trial_id, "rtlab.stale", True)
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                stale.append(queued_hash(trial) or "")
        except UpdateFinishedTrialError:
            pass  # another process got there first
    return stale


def pending_hashes(study: optuna.Study) -> set[str]:
    """Hashes already queued or being run by a live worker."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    return {h for t in trials if (h := queued_hash(t)) is not None}


@contextmanager
def _claim_lock(study: optuna.Study) -> Iterator[None]:
    """Serialise claims on a SQLite storage (one machine: an fcntl lock next to the file).

    Optuna's claim is read-check-write; on PostgreSQL/MySQL the read is `SELECT ... FOR UPDATE`,
    but SQLite ignores that, and two processes can both see WAITING and both claim the trial.
    """
    url = getattr(_backend(study._storage), "url", "")
    if not url.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(url[len("sqlite:///") :] + ".claim.lock")
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _backend(storage: Any) -> Any:
    return getattr(storage, "_backend", storage)  # optuna wraps RDBStorage in a cache


def pop_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """Claim one WAITING trial, or None when the queue is empty.

    Unlike `Study.ask()`, an empty queue never creates a fresh (parameterless) trial: between
    listing and claiming, another worker may take every trial, and the loser simply moves on.
    """
    with _claim_lock(study):
        return _pop_waiting_trial(study)


def _pop_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    storage = study._storage
    for frozen in storage.get_all_trials(
        study._study_id, deepcopy=False, states=(TrialState.WAITING,)
    ):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                continue  # another worker claimed it first
        except UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(frozen._trial_id, HOST_ATTR, socket.gethostname())
        storage.set_trial_system_attr(frozen._trial_id, PID_ATTR, os.getpid())
        storage.set_trial_system_attr(frozen._trial_id, HEARTBEAT_ATTR, time.time())
        return optuna.Trial(study, frozen._trial_id)
    return None


def drop_waiting_except(study: optuna.Study, keep: set[str]) -> list[str]:
    """Take out of the queue the WAITING runs that the experiment no longer plans (its file was
    edited since they were queued): a sweep runs what its spec says, nothing left over."""
    dropped = []
    with _claim_lock(study):
        storage = study._storage
        for trial in storage.get_all_trials(
            study._study_id, deepcopy=False, states=(TrialState.WAITING,)
        ):
            config_hash = queued_hash(trial)
            if config_hash in keep:
                continue
            try:
                storage.set_trial_system_attr(trial._trial_id, "rtlab.superseded", True)
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    dropped.append(config_hash or "")
            except UpdateFinishedTrialError:
                pass
    return dropped


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time())


def frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return study._storage.get_trial(trial._trial_id)
