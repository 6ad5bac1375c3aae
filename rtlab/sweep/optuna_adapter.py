"""What the run queue needs from Optuna beyond its public API, in one place, and why.

Everything here calls public API only (`optuna.storages.BaseStorage` methods); what it adds is
behaviour Optuna does not offer:

1. Popping the queue without creating a trial. `Study.ask()` takes a WAITING trial, but when none
   waits it creates a fresh, parameterless one. A worker must find an empty queue empty: between
   listing and claiming, other workers may take every trial, and the loser simply moves on. So
   `claim_waiting` claims a WAITING trial itself, as `ask()` does inside: the storage moves a
   trial to RUNNING only if it is still WAITING (`set_trial_state_values` returns False, or
   raises `UpdateFinishedTrialError`, for the loser).
2. Claims on SQLite. That check is read-then-write in one transaction, made atomic by
   `SELECT ... FOR UPDATE` on PostgreSQL and MySQL; SQLite ignores it, so two processes can
   both read WAITING and both claim the same trial. `claim_lock` serialises claims (and other
   read-then-write changes of trial states) on a SQLite storage with an fcntl lock next to the
   database file: SQLite storages are local, so every claimant is on this machine.
3. Trial ids. The storage's per-trial methods take a trial id, which `FrozenTrial` keeps private
   (`_trial_id`); `trial_id` maps the public trial number to it through the storage.
4. A `Trial` for a claimed trial (searched experiments). Sampling, reporting and pruning need an
   `optuna.Trial`, which `Study.ask()` gives, but `ask()` takes the first WAITING trial (a search
   resumes trials by their place in the budget, not by number) and creates a new trial when none
   waits (so a worker racing others would overrun the budget). So a worker claims a WAITING trial
   as in 1 and `trial_of` builds the `Trial` for it with `optuna.Trial(study, trial_id)`: the
   public class and constructor (in the API reference) that `ask()` itself calls after its pop,
   which the docs advise against calling directly only because `ask()` usually does it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite storage URL, None for any other storage."""
    return Path(url[len(SQLITE_PREFIX) :]) if url.startswith(SQLITE_PREFIX) else None


@contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock for read-then-write changes of trial states (SQLite only)."""
    database = sqlite_path(url)
    if database is None:
        yield
        return
    with open(f"{database}.claim.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def trial_id(storage: BaseStorage, study_id: int, trial: FrozenTrial | int) -> int:
    """The storage id of a trial, given the trial or its number."""
    number = trial if isinstance(trial, int) else trial.number
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def set_state(storage: BaseStorage, trial: int, state: TrialState) -> bool:
    """Move trial `trial` (an id) to `state`; False if another process changed it first (for
    RUNNING: the trial was no longer WAITING; for any state: it had finished already)."""
    try:
        return storage.set_trial_state_values(trial, state=state)
    except UpdateFinishedTrialError:
        return False


def claim_waiting(
    storage: BaseStorage, study_id: int, url: str, start: int | None = None
) -> tuple[FrozenTrial | None, int]:
    """Move one WAITING trial numbered `start` or later to RUNNING; return it (None when none
    waits) and where the claimant's next search starts.

    A trial leaves WAITING for good and new ones get higher numbers, so trials below a number
    this claimant has seen taken never need looking at again: from `start` the trials are tried
    in number order, one lookup and one conditional update each, with no listing of the study
    (listing every WAITING trial, with its RunConfig, made each claim cost O(queue length):
    benchmarks/bench_queue.py). `start=None` (a claimant's first claim) lists once to find the
    first WAITING trial.
    """
    with claim_lock(url):
        if start is None:
            waiting = storage.get_all_trials(study_id, deepcopy=False,
                                             states=(TrialState.WAITING,))
            start = min((t.number for t in waiting), default=len(storage.get_all_trials(
                study_id, deepcopy=False)))
        number = start
        while True:
            try:
                trial = trial_id(storage, study_id, number)
            except KeyError:
                return None, number  # past the last trial: nothing waits from `start` on
            if set_state(storage, trial, TrialState.RUNNING):
                return storage.get_trial(trial), number + 1
            number += 1


def trial_of(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The `Trial` of a trial this process claimed (moved to RUNNING itself): what `ask()` returns
    for a trial it popped. Its sampler and pruner are the `study` object's."""
    # `ask()` pops through the study's own (caching) storage, which so learns the trial; a trial
    # claimed on the storage directly must be read through the study once before it is written.
    study.get_trials(deepcopy=False)
    return optuna.Trial(study, trial_id)
