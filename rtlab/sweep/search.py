"""A searched experiment's studies: one Optuna study per arm and grid point, each a budget of
`trials` slots that workers claim, sample, train and tell.

Fairness by construction: every study has the same budget and the same sampler, seeded alike. A
study's trials are its budget's slots (user attr `slot`, 0 .. trials - 1), enqueued as WAITING
trials by the main process; a worker claims the WAITING trial with the lowest slot (over all
studies, so arms advance together), samples it with a sampler seeded by (spec seed, slot), trains
its runs reporting the validation loss at each evaluation, and tells it COMPLETE, PRUNED or FAIL.

Resume. Completed, pruned and failed trials count towards the budget. A trial whose worker died
(or was stopped) is failed and enqueued again with the same sampled values and slot, so its run
resumes from its checkpoint in the same MLflow run, and it re-reports the intermediate values the
dead trial had reported up to that checkpoint. As the sampler's seed depends on the slot rather
than on how many samples a process drew, one worker on the same storage proposes the same values
in the same order whether or not the search was interrupted.

Several workers: no trial is created outside the budget (claims are atomic; nothing calls
`ask()`), and TPE's constant liar treats running trials as bad results, so parallel workers do not
propose the same point; a proposal equal to a trial already run reuses its result instead of
training the same config twice (one equal to a running trial waits for it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rtlab.config import StudyPlan
from rtlab.sweep import optuna_adapter as adapter
from rtlab.sweep.queue import (
    HEARTBEAT_ATTR,
    HEARTBEAT_PERIOD_ATTR,
    HEARTBEAT_SECONDS,
    HOST_ATTR,
    PID_ATTR,
    STALE_ATTR,
    beat_trial,
    claimed_by_others,
    fail_trials,
    host_name,
    is_stale,
    open_storage,
    retried,
    still_running,
)

# Study user attrs
PLAN_ATTR = "plan"  # the StudyPlan, JSON
FINGERPRINT_ATTR = "fingerprint"  # StudyPlan.fingerprint(): a changed search is another study
STUDIES_ATTR = "search_studies"  # on the experiment's queue study: the studies' names, JSON
# Trial user attrs
SLOT_ATTR = "slot"
PHASE_ATTR = "phase"
RESUME_OF_ATTR = "resume_of"  # the number of the dead trial this one continues
DUPLICATE_OF_ATTR = "duplicate_of"  # the number of the trial whose result this one reuses
HASHES_ATTR = "config_hashes"  # of its runs, one per tuning seed
RUN_NAMES_ATTR = "run_names"
RUN_IDS_ATTR = "mlflow_run_ids"
STEPS_ATTR = "steps"  # optimizer steps its runs trained (all seeds)
TOKENS_ATTR = "tokens"
FLOPS_ATTR = "flops"  # training FLOPs of those steps
SECONDS_ATTR = "seconds"  # wall time from claim to tell
SAMPLE_SECONDS_ATTR = "sample_seconds"  # claiming and sampling (the sampler's overhead)
PRUNE_SECONDS_ATTR = "prune_seconds"  # reporting and asking the pruner
FAILURE_ATTR = "failure_reason"
PRUNED_AT_ATTR = "pruned_at_step"  # set as the pruner decides (before the step's checkpoint)
# Trial system attrs (besides the queue's host, pid, heartbeat and stale)
STOPPED_ATTR = "rtlab.stopped"  # stopped on request: run again by the next `rtlab run`
DUPLICATE_SLOT_ATTR = "rtlab.duplicate_slot"  # enqueued twice for a slot (see `claim`)

ACTIVE = (TrialState.WAITING, TrialState.RUNNING)


class SearchChanged(ValueError):
    """A study exists for an arm whose search (or config) the spec has since changed."""


def slot_seed(seed: int, slot: int) -> int:
    """The sampler seed of a slot: the same for every arm (fairness), different for every slot
    (parallel random proposals differ), and independent of the process that samples it."""
    digest = hashlib.sha256(f"rtlab-search:{seed}:{slot}".encode()).hexdigest()
    return int(digest[:8], 16)


def counts_towards_budget(trial: FrozenTrial) -> bool:
    """Completed, pruned and failed trials, and those waiting or running; not the trials of dead
    or stopped workers (they are run again), nor a slot's second trial (never run). A trial its
    worker failed with a reason counts, even if it was also taken for stale meanwhile."""
    if trial.state != TrialState.FAIL:
        return True
    attrs = trial.system_attrs
    if attrs.get(DUPLICATE_SLOT_ATTR):
        return False
    if FAILURE_ATTR in trial.user_attrs:
        return True
    return not (attrs.get(STALE_ATTR) or attrs.get(STOPPED_ATTR))


def is_rerun(trial: FrozenTrial, stale_only: bool = False) -> bool:
    """A trial whose worker died (or, unless `stale_only`, was stopped): enqueued again with
    its slot and values."""
    if trial.state != TrialState.FAIL or counts_towards_budget(trial):
        return False
    attrs = trial.system_attrs
    return bool(attrs.get(STALE_ATTR) or (not stale_only and attrs.get(STOPPED_ATTR)))


def slot_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(SLOT_ATTR, -1))


@dataclass(frozen=True)
class ClaimedTrial:
    """A WAITING trial this worker moved to RUNNING."""

    plan: StudyPlan
    number: int
    trial_id: int
    slot: int
    resume_of: int | None  # the dead trial it continues (its sampled values are fixed)


class SearchStudies:
    """The studies of one searched experiment, on one storage this object opened and keeps."""

    def __init__(self, url: str, storage: optuna.storages.RDBStorage, plans: list[StudyPlan]):
        self.url = url
        self.storage = storage
        self.plans = {plan.study_name: plan for plan in plans}
        self.ids = {name: storage.get_study_id_from_name(name) for name in self.plans}

    # ---- the main process
    @classmethod
    def create(cls, url: str, plans: list[StudyPlan]) -> SearchStudies:
        """Create (or load) a study per plan, with the plan in its user attributes."""
        storage = open_storage(url)
        check_unchanged(storage, plans)
        for plan in plans:
            study = optuna.create_study(storage=storage, study_name=plan.study_name,
                                        direction="minimize", load_if_exists=True)
            study.set_user_attr(PLAN_ATTR, plan.to_json())
            study.set_user_attr(FINGERPRINT_ATTR, plan.fingerprint())
            study.set_user_attr(PHASE_ATTR, "tune")
        return cls(url, storage, plans)

    @classmethod
    def open(cls, url: str, names: list[str]) -> SearchStudies:
        """The studies a worker works on (their plans from their attributes)."""
        storage = open_storage(url)
        plans = []
        for name in names:
            attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
            plans.append(StudyPlan.from_json(attrs[PLAN_ATTR]))
        return cls(url, storage, plans)

    def trials(self, name: str, *states: TrialState) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.ids[name], deepcopy=False,
                                           states=states or None)

    def study(self, name: str, sampler: Any = None, pruner: Any = None) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.storage, sampler=sampler,
                                 pruner=pruner)

    def recover(self) -> list[tuple[str, int]]:
        """Fail the RUNNING trials of dead workers and enqueue every dead or stopped trial again
        (same slot, same sampled values). Returns (study, number) of the trials re-enqueued."""
        again = []
        with adapter.claim_lock(self.url):
            for name in self.plans:
                self._fail_stale(name)
                again += [(name, n) for n in self._requeue(name)]
        return again

    def _fail_stale(self, name: str) -> None:
        """FAIL the stale RUNNING trials of a study (another process may finish one first)."""
        stale = [t for t in self.trials(name, TrialState.RUNNING) if is_stale(t)]
        fail_trials(self.storage, self.ids[name], stale, STALE_ATTR)

    def _requeue(self, name: str, stale_only: bool = False) -> list[int]:
        """Enqueue again the dead (and, unless `stale_only`, stopped) trials of a study that no
        trial continues yet and whose slot has no trial that counts; their numbers."""
        budget = self.plans[name].search.budget
        trials = self.trials(name)
        taken = {slot_of(t) for t in trials if counts_towards_budget(t)}
        continued = {t.user_attrs.get(RESUME_OF_ATTR) for t in trials}
        study = None  # loaded only when something is enqueued (workers call this while idle)
        requeued = []
        for trial in trials:
            if not is_rerun(trial, stale_only):
                continue
            if trial.number in continued or slot_of(trial) in taken or slot_of(trial) >= budget:
                continue
            study = study or self.study(name)
            study.enqueue_trial(dict(trial.params), user_attrs={
                SLOT_ATTR: slot_of(trial), PHASE_ATTR: "tune", RESUME_OF_ATTR: trial.number})
            taken.add(slot_of(trial))
            requeued.append(trial.number)
        return requeued

    def top_up(self) -> int:
        """Enqueue an empty trial for every slot of the budget that has none; returns how many
        trials wait or run now (over all studies)."""
        active = 0
        with adapter.claim_lock(self.url):
            for name, plan in self.plans.items():
                trials = self.trials(name)
                taken = {slot_of(t) for t in trials if counts_towards_budget(t)}
                study = self.study(name)
                for slot in range(plan.search.budget):
                    if slot not in taken:
                        study.enqueue_trial({}, user_attrs={SLOT_ATTR: slot, PHASE_ATTR: "tune"})
                active += len(self.trials(name, *ACTIVE))
        return active

    def complete(self) -> bool:
        """Every slot of every budget has a finished trial (completed, pruned or failed)."""
        for name, plan in self.plans.items():
            done = {slot_of(t) for t in self.trials(name, TrialState.COMPLETE, TrialState.PRUNED,
                                                     TrialState.FAIL) if counts_towards_budget(t)}
            if not set(range(plan.search.budget)) <= done:
                return False
        return True

    def best(self, name: str) -> FrozenTrial | None:
        """The completed trial of the budget with the lowest objective (first by number on a
        tie); None when no trial completed."""
        budget = self.plans[name].search.budget
        done = [t for t in self.trials(name, TrialState.COMPLETE)
                if 0 <= slot_of(t) < budget and t.value is not None]
        return min(done, key=lambda t: (t.value, t.number)) if done else None


    # ---- workers
    def claim(self, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> ClaimedTrial | None:
        """Move the WAITING trial with the lowest slot (arms in order on a tie) to RUNNING; the
        claimant promises a heartbeat every `heartbeat_seconds`."""
        order = list(self.plans)
        while True:
            with adapter.claim_lock(self.url):
                waiting = [(slot_of(t), order.index(name), name, t) for name in order
                           for t in self.trials(name, TrialState.WAITING)]
                if not waiting:
                    return None
                _, _, name, trial = min(waiting, key=lambda w: (w[0], w[1], w[3].number))
                trial_id = adapter.trial_id(self.storage, self.ids[name], trial)
                if not adapter.set_state(self.storage, trial_id, TrialState.RUNNING):
                    continue
                if not self._slot_taken_before(name, trial):
                    break
                # Two processes enqueued this slot at once (PostgreSQL has no claim lock, so
                # `top_up` or `recover` may race): the lower-numbered trial is the slot's.
                self.storage.set_trial_system_attr(trial_id, DUPLICATE_SLOT_ATTR, True)
                adapter.set_state(self.storage, trial_id, TrialState.FAIL)
                # (if that trial is a stale one meanwhile, `recover_stale` enqueues it again)
        for key, value in ((HOST_ATTR, host_name()), (PID_ATTR, os.getpid()),
                           (HEARTBEAT_ATTR, time.time()),
                           (HEARTBEAT_PERIOD_ATTR, heartbeat_seconds)):
            self.storage.set_trial_system_attr(trial_id, key, value)
        resume_of = trial.user_attrs.get(RESUME_OF_ATTR)
        return ClaimedTrial(self.plans[name], trial.number, trial_id, slot_of(trial),
                            None if resume_of is None else int(resume_of))

    def _slot_taken_before(self, name: str, trial: FrozenTrial) -> bool:
        return any(slot_of(t) == slot_of(trial) and t.number < trial.number
                   and counts_towards_budget(t) for t in self.trials(name))

    @retried
    def heartbeat(self, claimed: ClaimedTrial) -> bool:
        """Beat for this trial; False when it is no longer this worker's (beat_trial)."""
        return beat_trial(self.storage, claimed.trial_id)

    @retried
    def holds(self, claimed: ClaimedTrial) -> bool:
        """Whether this worker still holds the trial (not failed and enqueued again by another
        worker or a restarted `rtlab run`)."""
        return still_running(self.storage, claimed.trial_id)

    @retried
    def running_count(self) -> int:
        """RUNNING trials of other processes, over all the studies (see claimed_by_others)."""
        return claimed_by_others([t for name in self.plans
                                  for t in self.trials(name, TrialState.RUNNING)])

    @retried
    def recover_stale(self) -> list[tuple[str, int]]:
        """A live worker's recovery: fail the RUNNING trials whose worker is gone and enqueue
        every dead trial again that nothing continues yet (also one failed by a process that died
        or lost its connection before enqueueing it); the (study, number) of those. Stopped
        trials wait for the next `rtlab run`: someone stopped them. Safe to repeat."""
        again = []
        with adapter.claim_lock(self.url):
            for name in self.plans:
                self._fail_stale(name)
                again += [(name, n) for n in self._requeue(name, stale_only=True)]
        return again

    def trial_by_number(self, name: str, number: int) -> FrozenTrial:
        return self.storage.get_trial(adapter.trial_id(self.storage, self.ids[name], number))


def check_unchanged(storage: optuna.storages.BaseStorage, plans: list[StudyPlan]) -> None:
    """Raise SearchChanged when a study of these names was made for another search or config."""
    names = {s.study_name: s for s in storage.get_all_studies()}
    changed = []
    for plan in plans:
        existing = names.get(plan.study_name)
        if existing is None:
            continue
        recorded = existing.user_attrs.get(FINGERPRINT_ATTR)
        if recorded is not None and recorded != plan.fingerprint():
            changed.append(plan.study_name)
    if changed:
        raise SearchChanged(
            f"the search or config of {', '.join(changed)} changed since its study was created "
            "(only `trials` may change between runs): rerun with --force to start the search "
            "afresh"
        )


def delete_studies(storage: optuna.storages.BaseStorage, names: list[str]) -> None:
    """`--force`: the studies go (those that exist); `SearchStudies.create` starts them afresh."""
    for name in names:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass


def study_names(attrs: dict[str, Any]) -> list[str]:
    """The search studies the experiment's queue study names (none for a plain experiment)."""
    raw = attrs.get(STUDIES_ATTR)
    return list(json.loads(raw)) if raw else []
