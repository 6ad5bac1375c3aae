"""One tuning trial, as a worker runs it: sample, train each tuning seed, report, prune, tell.

The trial's sampled values go through Optuna's suggest API (so optuna-dashboard shows them with
their distributions), its runs report the validation loss at every evaluation as intermediate
values (step = optimizer step, offset by `max_iters` per earlier tuning seed), and the pruner's
verdict stops a run through the trainer's `should_stop`. The trial ends COMPLETE (value: the
objective, averaged over its tuning seeds), PRUNED, or FAIL (a diverged or broken run; or, marked
stopped, a run stopped on request, which the next `rtlab run` enqueues again).
A worker whose trial was taken for stale (its heartbeat starved) and enqueued again stops as it
learns it, at its next heartbeat or report, and tells nothing: the trial is its new owner's.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import OperationalError

from rtlab.config import CategoricalParam, FloatParam, RunConfig, SearchConfig, StudyPlan
from rtlab.sweep import optuna_adapter as adapter
from rtlab.sweep.outcome import RunOutcome
from rtlab.sweep.queue import is_stale
from rtlab.sweep.search import (
    DUPLICATE_OF_ATTR,
    FAILURE_ATTR,
    FLOPS_ATTR,
    HASHES_ATTR,
    PRUNE_SECONDS_ATTR,
    PRUNED_AT_ATTR,
    RUN_IDS_ATTR,
    RUN_NAMES_ATTR,
    SAMPLE_SECONDS_ATTR,
    SECONDS_ATTR,
    STEPS_ATTR,
    STOPPED_ATTR,
    TOKENS_ATTR,
    ClaimedTrial,
    SearchStudies,
    counts_towards_budget,
    slot_seed,
)
from rtlab.track.names import TRIAL_TAG, VAL_LOSS

if TYPE_CHECKING:
    from rtlab.sweep.worker import Worker

T = TypeVar("T")
DUPLICATE_POLL_SECONDS = 2.0
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def make_sampler(search: SearchConfig, slot: int) -> optuna.samplers.BaseSampler:
    """The study's sampler for one slot, seeded by (spec seed, slot)."""
    seed = slot_seed(search.sampler.seed, slot)
    if search.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler.type == "grid":
        space = {key: param.values() for key, param in search.params.items()}
        return optuna.samplers.GridSampler(space, seed=seed)  # type: ignore[arg-type]
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials(),
                                      constant_liar=True)


def make_pruner(plan: StudyPlan, template: RunConfig) -> optuna.pruners.BasePruner:
    """The study's pruner; resources are optimizer steps (over all tuning seeds)."""
    pruner = plan.search.pruner
    first_eval = template.train.eval_interval
    if pruner.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials,
                                           n_warmup_steps=pruner.n_warmup_steps,
                                           interval_steps=pruner.interval_steps)
    if pruner.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource or first_eval,
            reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=pruner.min_early_stopping_rate)
    if pruner.type == "hyperband":
        total = template.train.max_iters * len(plan.tune_seeds)
        return optuna.pruners.HyperbandPruner(min_resource=pruner.min_resource or first_eval,
                                              max_resource=pruner.max_resource or total,
                                              reduction_factor=pruner.reduction_factor)
    return optuna.pruners.NopPruner()


def suggest(trial: optuna.Trial, search: SearchConfig) -> dict[str, Any]:
    """Each searched key's value, through Optuna's suggest API (a resumed trial's are fixed)."""
    values: dict[str, Any] = {}
    for key, param in search.params.items():
        if isinstance(param, CategoricalParam):
            values[key] = trial.suggest_categorical(key, param.choices)
        elif isinstance(param, FloatParam):
            values[key] = trial.suggest_float(key, param.low, param.high, log=param.log,
                                              step=param.step)
        else:
            values[key] = trial.suggest_int(key, param.low, param.high, log=param.log,
                                            step=param.step)
    return values


def _retrying(call: Callable[[], T], attempts: int = 6) -> T:
    """A study write or read from inside training: a busy SQLite storage (another worker
    writing) is waited out rather than failing the run."""
    for attempt in range(attempts):
        try:
            return call()
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


class TrialWatch:
    """Reports a trial's validation losses to Optuna and asks its pruner, run by run; after a
    resume, first re-reports what the dead trial had reported before the run's checkpoint.
    A trial finished under it (taken for stale by another worker) calls `on_lost`."""

    def __init__(self, trial: optuna.Trial, earlier: dict[int, float],
                 pruned_earlier: int | None = None,
                 on_lost: Callable[[], None] = lambda: None) -> None:
        self.trial = trial
        self.on_lost = on_lost
        self.earlier = earlier  # intermediate values of the dead trial this one continues
        # The step (over all seeds) at which the pruner stopped the dead trial: its checkpoint
        # may be past that evaluation, so the decision is kept rather than asked again.
        self.pruned_earlier = pruned_earlier
        self.reported: set[int] = set()
        self.pruned_at: int | None = None
        self.seconds = 0.0  # reporting and asking the pruner
        self.offset = 0
        self.max_iters = 0

    def start_run(self, offset: int, max_iters: int) -> None:
        self.offset, self.max_iters = offset, max_iters
        earlier = self.pruned_earlier
        if earlier is not None and offset < earlier <= offset + max_iters:
            self.pruned_at = earlier - offset  # the run stops before its first step
            self.backfill(earlier + 1)

    def backfill(self, before: int) -> None:
        for step in sorted(s for s in self.earlier if s < before and s not in self.reported):
            self.trial.report(self.earlier[step], step)
            self.reported.add(step)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if step == 0 or VAL_LOSS not in metrics:
            return  # the untrained model says nothing about the trial
        start = time.perf_counter()
        try:
            self._report(step, metrics[VAL_LOSS])
        except UpdateFinishedTrialError:
            self.on_lost()  # failed and enqueued again by another worker: no longer ours
        self.seconds += time.perf_counter() - start

    def _report(self, step: int, val_loss: float) -> None:
        at = self.offset + step
        _retrying(lambda: self.backfill(at))
        if at not in self.reported:
            _retrying(lambda: self.trial.report(val_loss, at))
            self.reported.add(at)
        if step < self.max_iters and _retrying(self.trial.should_prune):
            self.pruned_at = step
            _retrying(lambda: self.trial.set_user_attr(PRUNED_AT_ATTR, at))


class TuneTrial:
    """A claimed trial of a study, run to its end by `worker`."""

    def __init__(self, worker: Worker, studies: SearchStudies, claimed: ClaimedTrial) -> None:
        from rtlab.sweep.worker import Ownership

        self.worker = worker
        self.studies = studies
        self.claimed = claimed
        self.plan = claimed.plan
        self.started = time.perf_counter()
        self.ownership = Ownership(lambda: studies.heartbeat(claimed),
                                    lambda: studies.holds(claimed))

    def run(self) -> list[RunOutcome]:
        """Sample, train (or reuse a duplicate's result), tell. A stop or an abort tells FAIL
        marked stopped: the next `rtlab run` enqueues the same values again."""
        from rtlab.sweep.worker import RunFailedUnderTorchrun, _Heartbeat

        heartbeat = _Heartbeat(self.ownership.beat, self.worker.config.heartbeat_seconds)
        told = False
        outcomes: list[RunOutcome] = []
        try:
            trial, runs = self._sample()
            if runs is not None:
                outcomes = self._train_or_reuse(trial, runs)
                told = self._tell(trial, outcomes)
            else:
                told = True
        except UpdateFinishedTrialError:
            # Failed under us, outside training (sampling, between seeds, telling): another
            # worker took this worker for dead and enqueued the trial again. It is theirs.
            self.ownership.lost.set()
            told = True
        except RunFailedUnderTorchrun as error:  # a failed trial, not a stopped one to rerun
            told = True
            with contextlib.suppress(UpdateFinishedTrialError):  # (unless lost meanwhile)
                trial.set_user_attr(FAILURE_ATTR, str(error))
                trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        finally:
            heartbeat.stop()
            if not told:
                self._tell_stopped()
        return outcomes

    def _sample(self) -> tuple[optuna.Trial, list[RunConfig] | None]:
        """The Trial with its sampled values, and its runs (None: values that make an invalid
        config, told FAIL)."""
        from rtlab.plan import trial_run
        from rtlab.spec import SpecError

        template = trial_run(self.plan, {}, self.plan.tune_seeds[0])
        study = self.studies.study(self.plan.study_name,
                                   sampler=make_sampler(self.plan.search, self.claimed.slot),
                                   pruner=make_pruner(self.plan, template))
        trial = adapter.trial_of(study, self.claimed.trial_id)
        values = suggest(trial, self.plan.search)
        trial.set_user_attr(SAMPLE_SECONDS_ATTR, time.perf_counter() - self.started)
        try:
            runs = [trial_run(self.plan, values, seed, trial=self.claimed.slot)
                    for seed in self.plan.tune_seeds]
        except SpecError as error:
            trial.set_user_attr(FAILURE_ATTR, f"invalid config: {error}")
            self._tell_counts(trial, [])
            trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return trial, None
        trial.set_user_attr(HASHES_ATTR, [run.config_hash for run in runs])
        trial.set_user_attr(RUN_NAMES_ATTR, [run.run_name for run in runs])
        return trial, runs

    def _train_or_reuse(self, trial: optuna.Trial, runs: list[RunConfig]) -> list[RunOutcome]:
        original = self._duplicate_of(runs[0].config_hash)
        if original is not None:
            return self._reuse(trial, original)
        earlier, pruned_earlier = self._earlier()
        watch = TrialWatch(trial, earlier, pruned_earlier, on_lost=self.ownership.lost.set)
        outcomes: list[RunOutcome] = []
        for index, run in enumerate(runs):
            if index and not self.ownership.confirm():
                break  # lost between seeds: the next seed's run is the new owner's to open
            offset = index * run.train.max_iters
            watch.start_run(offset, run.train.max_iters)
            outcome = self.worker.train_run(
                run, watch, on_open=lambda child: child.set_tags({TRIAL_TAG: str(trial.number)}),
                ownership=self.ownership)
            if outcome.status == "SKIPPED":
                watch.backfill(offset + run.train.max_iters + 1)
            outcomes.append(outcome)
            if outcome.status not in ("FINISHED", "SKIPPED"):
                break
        if not self.ownership.lost.is_set():
            trial.set_user_attr(PRUNE_SECONDS_ATTR, watch.seconds)
        return outcomes

    def _earlier(self) -> tuple[dict[int, float], int | None]:
        """What the dead trial this one continues had reported, and where it was pruned."""
        if self.claimed.resume_of is None:
            return {}, None
        dead = self.studies.trial_by_number(self.plan.study_name, self.claimed.resume_of)
        pruned = dead.user_attrs.get(PRUNED_AT_ATTR)
        return dict(dead.intermediate_values), None if pruned is None else int(pruned)

    def _duplicate_of(self, config_hash: str) -> FrozenTrial | None:
        """A trial of this study that ran (or runs) the same config: wait for a running one."""
        while True:
            same = [t for t in self.studies.trials(self.plan.study_name)
                    if t.number != self.claimed.number and counts_towards_budget(t)
                    and (t.user_attrs.get(HASHES_ATTR) or [None])[0] == config_hash
                    and t.state != TrialState.WAITING]
            finished = [t for t in same if t.state in FINISHED_STATES]
            if finished:
                return finished[0]
            # Only an earlier trial is waited for: two that sampled the same config at once
            # would otherwise wait for each other.
            running = [t for t in same if t.state == TrialState.RUNNING and not is_stale(t)
                       and t.number < self.claimed.number]
            if not running or self.worker.should_stop():
                return None  # (a stop ends the run at its first step, before it trains)
            time.sleep(DUPLICATE_POLL_SECONDS)

    def _reuse(self, trial: optuna.Trial, original: FrozenTrial) -> list[RunOutcome]:
        """Tell this trial what the trial with the same config got, without training again."""
        trial.set_user_attr(DUPLICATE_OF_ATTR, original.number)
        for step, value in sorted(original.intermediate_values.items()):
            trial.report(value, step)
        self._tell_counts(trial, [])
        if original.state == TrialState.COMPLETE:
            trial.study.tell(trial, original.value, skip_if_finished=True)
        else:
            if original.state == TrialState.FAIL:
                reason = original.user_attrs.get(FAILURE_ATTR, "")
                trial.set_user_attr(FAILURE_ATTR, f"same config as trial {original.number}: "
                                                  f"{reason}")
            trial.study.tell(trial, state=original.state, skip_if_finished=True)
        self.worker.emit({"type": "note", "worker": self.worker.config.worker_index,
                          "text": f"{self.plan.study_name} trial {trial.number}: same config as "
                                  f"trial {original.number}, its result reused"})
        return []

    def _tell_counts(self, trial: optuna.Trial, outcomes: list[RunOutcome]) -> None:
        trial.set_user_attr(STEPS_ATTR, sum(o.steps for o in outcomes if o.status != "SKIPPED"))
        trial.set_user_attr(TOKENS_ATTR, sum(o.tokens for o in outcomes if o.status != "SKIPPED"))
        trial.set_user_attr(FLOPS_ATTR, sum(o.flops for o in outcomes if o.status != "SKIPPED"))
        trial.set_user_attr(RUN_IDS_ATTR, [o.run_id for o in outcomes if o.run_id])
        trial.set_user_attr(SECONDS_ATTR, time.perf_counter() - self.started)

    def _tell(self, trial: optuna.Trial, outcomes: list[RunOutcome]) -> bool:
        """Tell the trial how its runs ended; False for a stopped one (left to the caller)."""
        if not outcomes:
            return True  # a duplicate's result, told already
        last = outcomes[-1]
        if last.status == "KILLED":
            return False
        if self.ownership.lost.is_set():
            return True  # another worker failed it and enqueued it again: nothing to tell
        if self.claimed.resume_of is not None:
            # The dead trial's runs trained these steps too: count them once, here.
            outcomes = [o if o.status != "SKIPPED" else _as_spent(o) for o in outcomes]
        self._tell_counts(trial, outcomes)
        study = trial.study
        if last.status == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return True
        values = [getattr(o, self.plan.search.objective) for o in outcomes]
        if last.status == "FAILED" or any(v is None for v in values):
            trial.set_user_attr(FAILURE_ATTR, last.failure_reason or "no objective logged")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            return True
        study.tell(trial, statistics.fmean(values), skip_if_finished=True)
        return True

    def _tell_stopped(self) -> None:
        storage = self.studies.storage
        try:
            storage.set_trial_system_attr(self.claimed.trial_id, STOPPED_ATTR, True)
        except UpdateFinishedTrialError:
            return  # taken for stale meanwhile: enqueued again by whoever failed it
        adapter.set_state(storage, self.claimed.trial_id, TrialState.FAIL)


def _as_spent(outcome: RunOutcome) -> RunOutcome:
    """A run this (resumed) trial found finished: its steps were spent for this trial's slot."""
    import dataclasses

    return dataclasses.replace(outcome, status="FINISHED")
