"""What a search leaves besides its runs: each arm's best configuration, its confirm runs, and a
summary of every study (trials, states, values, budget spent) that `rtlab run` logs on the
parent run as `search.json`, for the report to read without Optuna or the study storage."""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

from rtlab.config import RunConfig, StudyPlan
from rtlab.sweep.search import (
    DUPLICATE_OF_ATTR,
    FAILURE_ATTR,
    FLOPS_ATTR,
    HASHES_ATTR,
    PRUNE_SECONDS_ATTR,
    RESUME_OF_ATTR,
    RUN_IDS_ATTR,
    SAMPLE_SECONDS_ATTR,
    SECONDS_ATTR,
    STEPS_ATTR,
    TOKENS_ATTR,
    SearchStudies,
    counts_towards_budget,
    slot_of,
)

SUMMARY_FORMAT = 1
STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
               TrialState.FAIL: "failed", TrialState.RUNNING: "running",
               TrialState.WAITING: "waiting"}


def confirm_runs(studies: SearchStudies) -> tuple[list[RunConfig], list[str]]:
    """Each study's best configuration on its confirm seeds; and a note per study without a
    completed trial (nothing to confirm)."""
    from rtlab.plan import trial_run

    runs: list[RunConfig] = []
    notes: list[str] = []
    for name, plan in studies.plans.items():
        best = studies.best(name)
        if best is None:
            notes.append(f"{name}: no trial completed (all pruned or failed): nothing to confirm")
            continue
        runs += [trial_run(plan, best.params, seed, phase="confirm", trial=best.number)
                 for seed in plan.confirm_seeds]
    return runs, notes


def stored_studies(experiment: str, plans: list[StudyPlan],
                   storage_url: str | None = None) -> SearchStudies | None:
    """The spec's studies in the experiment's storage (default: the local one,
    `.rtlab/<experiment>/optuna.db`), read with the spec's plans (its budget); None before
    `rtlab run` created them. Writes nothing; SearchChanged when the spec's search or config
    differs from the one the studies were made for (`rtlab run` would refuse it)."""
    from rtlab.sweep.queue import open_storage, storage_url_if_created
    from rtlab.sweep.search import check_unchanged

    url = storage_url_if_created(experiment, storage_url)
    if url is None:
        return None
    storage = open_storage(url, create=False)
    check_unchanged(storage, plans)
    try:
        return SearchStudies(url, storage, plans)
    except KeyError:  # no study yet for an arm (the search was added to the spec later)
        return None


def search_summary(studies: SearchStudies) -> dict[str, Any]:
    """Every study with its plan, trials and best trial, as plain JSON values."""
    return {
        "format": SUMMARY_FORMAT,
        "storage": studies.url,
        "studies": [_study(studies, name, plan) for name, plan in studies.plans.items()],
    }


def _study(studies: SearchStudies, name: str, plan: StudyPlan) -> dict[str, Any]:
    trials = studies.trials(name)
    counted = [t for t in trials
               if counts_towards_budget(t) and 0 <= slot_of(t) < plan.search.budget]
    best = studies.best(name)
    return {
        "study": name,
        "arm": plan.arm,
        "grid_point": plan.grid_point,
        "label": plan.label,
        "budget": plan.search.budget,
        "objective": plan.search.objective,
        "sampler": plan.search.sampler.model_dump(),
        "pruner": plan.search.pruner.model_dump(),
        "params": {key: param.model_dump() for key, param in plan.search.params.items()},
        "tune_seeds": plan.tune_seeds,
        "confirm_seeds": plan.confirm_seeds,
        "confirm_max_iters": plan.confirm_max_iters,
        "counts": {label: sum(1 for t in counted if t.state == state)
                   for state, label in STATE_NAMES.items()},
        "best": None if best is None else {"number": best.number, "value": best.value,
                                           "params": dict(best.params)},
        "trials": [_trial(t) for t in trials if t.state != TrialState.WAITING],
    }


def _trial(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "slot": slot_of(trial),
        "state": STATE_NAMES.get(trial.state, trial.state.name.lower()),
        "counted": counts_towards_budget(trial),
        "value": trial.value,
        "params": dict(trial.params),
        "intermediate": sorted([int(s), float(v)] for s, v in trial.intermediate_values.items()),
        "steps": int(attrs.get(STEPS_ATTR, 0)),
        "tokens": float(attrs.get(TOKENS_ATTR, 0.0)),
        "flops": float(attrs.get(FLOPS_ATTR, 0.0)),
        "seconds": attrs.get(SECONDS_ATTR),
        "sample_seconds": attrs.get(SAMPLE_SECONDS_ATTR),
        "prune_seconds": attrs.get(PRUNE_SECONDS_ATTR),
        "duplicate_of": attrs.get(DUPLICATE_OF_ATTR),
        "resume_of": attrs.get(RESUME_OF_ATTR),
        "failure_reason": attrs.get(FAILURE_ATTR),
        "config_hashes": list(attrs.get(HASHES_ATTR, [])),
        "run_ids": list(attrs.get(RUN_IDS_ATTR, [])),
    }
