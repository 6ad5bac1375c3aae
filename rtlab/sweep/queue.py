"""The run queue: the runs of an experiment are trials of one Optuna study.

A trial is a queue entry, not an identity: the run's identity is its config hash (an MLflow tag).
The main process enqueues one WAITING trial per run that is not FINISHED in MLflow; workers pop
WAITING trials until none remain and tell each one COMPLETE (value: final val loss) or FAIL.

Each trial carries its whole `RunConfig` (as JSON) in its user attributes, and the study carries
the MLflow handle, so a worker needs only the storage URL and the study name: a worker on another
machine joins with the same storage URL (a shared database) and tracking URI
(`rtlab worker --storage URL --study NAME --tracking-uri URI`).

A RUNNING trial whose worker died (SIGKILL, a crash, a lost machine) is failed and its run queued
again by any live worker of the study (at each of its heartbeats, and while it waits for the last
runs of others) or by the next sweep. Each worker beats every `heartbeat_seconds` and writes that
period into its trial; a trial silent for `STALE_PERIODS` of its own periods is taken as dead.
Optuna's own heartbeat (`RDBStorage(heartbeat_interval=...)`) runs only inside
`study.optimize`; rtlab also knows the worker's host and pid, so a dead worker on this machine is
noticed at once rather than after a grace period.
`rtlab.sweep.optuna_adapter` says what else Optuna's public API lacks for a queue.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, NoSuchModuleError, OperationalError, SQLAlchemyError

from rtlab.config import RunConfig
from rtlab.sweep import optuna_adapter as adapter
from rtlab.urls import redact_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
T = TypeVar("T")

STATE_DIR = Path(".rtlab")
# Trial user attrs: what a worker runs
RUN_ATTR = "run"  # the RunConfig, JSON
HASH_ATTR = "config_hash"
RUN_NAME_ATTR = "run_name"  # for people reading the study
MLFLOW_RUN_ATTR = "mlflow_run_id"
# Trial system attrs: who holds a trial, and why rtlab failed one
HOST_ATTR = "rtlab.host"
PID_ATTR = "rtlab.pid"
HEARTBEAT_ATTR = "rtlab.heartbeat"
STALE_ATTR = "rtlab.stale"  # its worker died
SUPERSEDED_ATTR = "rtlab.superseded"  # the spec no longer plans it
UNREADABLE_ATTR = "rtlab.unreadable"  # queued by an rtlab whose RunConfig this one cannot read
HEARTBEAT_PERIOD_ATTR = "rtlab.heartbeat_period"  # seconds between its worker's beats
HEARTBEAT_SECONDS = 30.0
# A RUNNING trial of another machine silent for this many of its worker's periods is dead.
STALE_PERIODS = 2.0
CONNECT_TIMEOUT_SECONDS = 5
# A worker waits out a database restart this long (about 30 s in all) before giving up.
RETRY_DELAYS_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def experiment_state_dir(experiment: str, root: Path | None = None) -> Path:
    """`.rtlab/<experiment>/`: the study and the run directories (checkpoints) of an experiment."""
    return (root or STATE_DIR).resolve() / experiment


def default_storage_url(state_dir: Path) -> str:
    return f"{adapter.SQLITE_PREFIX}{state_dir / 'optuna.db'}"


class StorageError(RuntimeError):
    """A storage URL that cannot be used (no driver, unreachable, refused); the message names the
    URL with its password redacted."""


class StorageLost(StorageError):
    """The storage stopped answering mid-sweep and did not come back within the retries."""


def open_storage(url: str, create: bool = True) -> optuna.storages.RDBStorage:
    """Open (and on first use, create the tables of) an Optuna storage, or raise StorageError.
    `create=False` (a reader) writes nothing: a database without Optuna's tables is an error."""
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url),
                                          skip_table_creation=not create)
    except StorageInternalError as error:  # e.g. a reader finding no Optuna tables
        raise StorageError(f"cannot read the Optuna storage {redact_url(url)}: "
                           f"{database_reason(error.__cause__ or error)}") from None
    except (ImportError, NoSuchModuleError) as error:
        raise StorageError(f"{redact_url(url)}: no database driver for this URL ({error}); "
                           "for PostgreSQL: pip install 'rtlab[cluster]'") from None
    except (SQLAlchemyError, ValueError) as error:
        raise StorageError(f"cannot open the Optuna storage {redact_url(url)}: "
                           f"{database_reason(error)}") from None


def database_reason(error: BaseException) -> str:
    """The driver's first line about what went wrong (not SQLAlchemy's wrapper), redacted."""
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()
    return redact_url(reason[0] if reason else type(error).__name__)


def retried(method: Callable[..., T]) -> Callable[..., T]:
    """A method of the queue (or of the search studies: anything with the storage `url`) that
    outlives a restart of the database server: retried with bounded exponential backoff while
    the connection fails, then a StorageError (the store is gone)."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> T:
        for delay in (*RETRY_DELAYS_SECONDS, None):
            try:
                return method(self, *args, **kwargs)
            except (StorageInternalError, SQLAlchemyError) as error:
                cause = error.__cause__ if isinstance(error, StorageInternalError) else error
                if not isinstance(cause, (OperationalError, InterfaceError)):
                    raise
                if delay is None:
                    raise StorageLost(f"lost the Optuna storage {redact_url(self.url)} "
                                      f"({sum(RETRY_DELAYS_SECONDS):.0f} s of retries): "
                                      f"{database_reason(cause)}") from None
                time.sleep(delay)
        raise AssertionError("unreachable")

    return call


def _engine_kwargs(url: str) -> dict[str, Any]:
    if adapter.sqlite_path(url):
        # Wait for a writer instead of failing at once when several workers write.
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        # Fail fast on an unreachable server; test pooled connections so that a restarted
        # server costs one reconnect, not an error.
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_SECONDS},
                "pool_pre_ping": True}
    return {"pool_pre_ping": True}


def load_study(url: str, name: str) -> optuna.Study:
    """The study itself, for reading (raises KeyError when there is none)."""
    return RunQueue.open(url, name).study


def storage_url_if_created(experiment: str, url: str | None = None) -> str | None:
    """The experiment's storage URL (default: the local one), or None when it is a SQLite file
    that does not exist yet: a reader must not create it."""
    url = url or default_storage_url(experiment_state_dir(experiment))
    database = adapter.sqlite_path(url)
    return None if database is not None and not database.exists() else url


def waiting_hashes(url: str, name: str) -> set[str]:
    """Config hashes WAITING in a study's queue (raises KeyError when there is no such study).
    Writes nothing to the storage."""
    return RunQueue.open(url, name, create=False).hashes(TrialState.WAITING)


def queued_hash(trial: FrozenTrial) -> str | None:
    """The config hash a trial carries (None: not an rtlab queue entry)."""
    return trial.user_attrs.get(HASH_ATTR)


@dataclass(frozen=True)
class QueuedRun:
    """A claimed queue entry: the run, and the trial that carries it."""

    number: int  # the trial's number in the study
    trial_id: int  # its id in the storage
    run: RunConfig

    @property
    def config_hash(self) -> str:
        return self.run.config_hash


def read_run(trial: FrozenTrial) -> RunConfig | None:
    """The RunConfig a trial carries, or None if this rtlab cannot read it as the same run."""
    try:
        run = RunConfig.from_json(trial.user_attrs[RUN_ATTR])
    except (KeyError, TypeError, ValidationError):
        return None
    return run if run.config_hash == queued_hash(trial) else None


def is_stale(trial: FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING trial whose worker is gone: a dead pid on this host, or a silent heartbeat."""
    attrs = trial.system_attrs
    if attrs.get(HOST_ATTR) == host_name() and PID_ATTR in attrs:
        return not _pid_alive(int(attrs[PID_ATTR]))
    beat = attrs.get(HEARTBEAT_ATTR)
    if beat is None:
        beat = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    period = float(attrs.get(HEARTBEAT_PERIOD_ATTR, HEARTBEAT_SECONDS))
    return (now or time.time()) - float(beat) > STALE_PERIODS * period


def host_name() -> str:
    """This machine's name as the queue knows it; `RTLAB_HOST` overrides it (containers that
    share a hostname, or tests that play several machines on one)."""
    return os.environ.get("RTLAB_HOST") or socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_trials(storage: optuna.storages.BaseStorage, study_id: int, trials: list[FrozenTrial],
                reason_attr: str) -> list[FrozenTrial]:
    """FAIL these trials, marked with `reason_attr`; the ones this process failed (not finished
    by another first). Shared by the run queue and the search studies."""
    failed = []
    for trial in trials:
        trial_id = adapter.trial_id(storage, study_id, trial)
        try:
            storage.set_trial_system_attr(trial_id, reason_attr, True)
        except UpdateFinishedTrialError:
            continue  # another process finished it first
        if adapter.set_state(storage, trial_id, TrialState.FAIL):
            failed.append(trial)
    return failed


def beat_trial(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Write a claimed trial's heartbeat; False when it has finished meanwhile: another worker
    took this one's heartbeat for stale (starved under load, not dead) and failed it."""
    try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
    except UpdateFinishedTrialError:
        return False
    return True


def still_running(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Whether a claimed trial is still RUNNING, i.e. still its worker's (see beat_trial)."""
    return storage.get_trial(trial_id).state == TrialState.RUNNING


def claimed_by_others(running: list[FrozenTrial]) -> int:
    """How many of these RUNNING trials another process claimed (one this process claimed but
    lost track of, in a retried claim, must not keep it waiting for itself)."""
    me = (host_name(), os.getpid())
    return sum((t.system_attrs.get(HOST_ATTR), t.system_attrs.get(PID_ATTR)) != me
               for t in running)


class RunQueue:
    """One experiment's queue: its study, on a storage this object opened and keeps."""

    def __init__(self, url: str, storage: optuna.storages.RDBStorage, study: optuna.Study):
        self.url = url
        self.storage = storage
        self.study = study
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self._claim_from: int | None = None  # trials below this number are taken for good

    @classmethod
    def create(cls, url: str, name: str, attrs: Mapping[str, str]) -> RunQueue:
        """Create (or load) the study in the main process, before any worker opens it; `attrs`
        become its user attributes (the MLflow handle)."""
        database = adapter.sqlite_path(url)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        storage = open_storage(url)
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return cls(url, storage, study)

    @classmethod
    def open(cls, url: str, name: str, create: bool = True) -> RunQueue:
        """The queue of an existing study (KeyError when there is none); `create=False` opens
        the storage as a reader (see open_storage)."""
        storage = open_storage(url, create)
        return cls(url, storage, optuna.load_study(study_name=name, storage=storage))

    @property
    def attrs(self) -> dict[str, Any]:
        return self.study.user_attrs

    # ---- the main process
    def enqueue(self, run: RunConfig) -> None:
        self.study.enqueue_trial({}, user_attrs={
            HASH_ATTR: run.config_hash, RUN_NAME_ATTR: run.run_name, RUN_ATTR: run.to_json(),
        })

    def hashes(self, *states: TrialState) -> set[str]:
        """Config hashes of the trials in these states."""
        trials = self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)
        return {h for t in trials if (h := queued_hash(t)) is not None}

    def pending_hashes(self) -> set[str]:
        """Hashes already queued or being run by a live worker."""
        return self.hashes(TrialState.WAITING, TrialState.RUNNING)

    def fail_stale(self) -> list[str]:
        """FAIL the RUNNING trials of dead workers (their runs get queued again); their hashes."""
        return [queued_hash(t) or "" for t in self._fail_stale_trials()]

    @retried
    def requeue_stale(self) -> list[str]:
        """A live worker's recovery: FAIL the trials of dead workers and queue their runs again
        at once; the hashes queued. Of several workers finding the same trial, one queues it."""
        requeued = []
        for trial in self._fail_stale_trials():
            run = read_run(trial)
            if run is not None and run.config_hash not in self.pending_hashes():
                self.enqueue(run)
                requeued.append(run.config_hash)
        return requeued

    @retried
    def running_count(self) -> int:
        """RUNNING trials of other processes (see claimed_by_others)."""
        return claimed_by_others(self.storage.get_all_trials(
            self.study_id, deepcopy=False, states=(TrialState.RUNNING,)))

    def _fail_stale_trials(self) -> list[FrozenTrial]:
        with adapter.claim_lock(self.url):  # SQLite: only one process moves a trial to FAIL
            running = self.storage.get_all_trials(self.study_id, states=(TrialState.RUNNING,))
            return self._fail([t for t in running if is_stale(t)], STALE_ATTR)

    def drop_waiting_except(self, keep: set[str]) -> list[str]:
        """Take out of the queue the WAITING runs that the experiment no longer plans (its file
        was edited since they were queued): a sweep runs what its spec says, nothing left over."""
        with adapter.claim_lock(self.url):
            waiting = self.storage.get_all_trials(self.study_id, states=(TrialState.WAITING,))
            dropped = self._fail([t for t in waiting if queued_hash(t) not in keep],
                                 SUPERSEDED_ATTR)
            return [queued_hash(t) or "" for t in dropped]

    def _fail(self, trials: list[FrozenTrial], reason_attr: str) -> list[FrozenTrial]:
        return fail_trials(self.storage, self.study_id, trials, reason_attr)

    # ---- workers
    @retried
    def pop(self, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> QueuedRun | None:
        """Claim the next WAITING run, or None when the queue is empty (never creates a trial).
        The claimant promises a heartbeat every `heartbeat_seconds`."""
        while True:
            trial, self._claim_from = adapter.claim_waiting(
                self.storage, self.study_id, self.url, self._claim_from)
            if trial is None:
                return None
            trial_id = adapter.trial_id(self.storage, self.study_id, trial)
            for key, value in ((HOST_ATTR, host_name()), (PID_ATTR, os.getpid()),
                               (HEARTBEAT_ATTR, time.time()),
                               (HEARTBEAT_PERIOD_ATTR, heartbeat_seconds)):
                self.storage.set_trial_system_attr(trial_id, key, value)
            run = read_run(trial)
            if run is not None:
                return QueuedRun(trial.number, trial_id, run)
            self.storage.set_trial_system_attr(trial_id, UNREADABLE_ATTR, True)
            self.study.tell(trial.number, state=TrialState.FAIL)

    @retried
    def heartbeat(self, entry: QueuedRun) -> bool:
        """Beat for this run's trial; False when it is no longer this worker's (beat_trial)."""
        return beat_trial(self.storage, entry.trial_id)

    @retried
    def holds(self, entry: QueuedRun) -> bool:
        """Whether this worker still holds the run (not failed and queued again by another)."""
        return still_running(self.storage, entry.trial_id)

    @retried
    def set_mlflow_run(self, entry: QueuedRun, run_id: str) -> None:
        try:
            self.storage.set_trial_user_attr(entry.trial_id, MLFLOW_RUN_ATTR, run_id)
        except UpdateFinishedTrialError:
            pass  # taken for stale meanwhile (a starved heartbeat): its run is queued again

    @retried
    def finish(self, entry: QueuedRun, final_val_loss: float | None) -> None:
        """COMPLETE with the run's final val loss, or FAIL without one. A trial failed meanwhile
        (taken for stale) stays as it is: MLflow, not the queue, says whether the run finished."""
        if final_val_loss is None:
            self.study.tell(entry.number, state=TrialState.FAIL, skip_if_finished=True)
        else:
            self.study.tell(entry.number, final_val_loss, TrialState.COMPLETE,
                            skip_if_finished=True)

    def trial(self, entry: QueuedRun) -> FrozenTrial:
        return self.storage.get_trial(entry.trial_id)
