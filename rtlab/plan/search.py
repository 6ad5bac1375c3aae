"""Plan a searched experiment: one study per arm and grid point, and the runs of its trials.

A trial is a RunConfig like any other: the arm's written config at its grid point with the
searched keys set to the sampled values, resolved and checked exactly as a grid point is
(`trial_run`), so its config hash is its identity. The confirm runs of an arm are its best trial's
values on the confirm seeds (and, if set, the confirm `max_iters`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rtlab.config import RunConfig, StudyPlan, canonical_json
from rtlab.plan.expand import DataFingerprint
from rtlab.spec import ExperimentSpec, Problem, SpecError


def study_name(experiment: str, label: str) -> str:
    """`mini_tune/baseline`, `exp/reasoning-n_layer=2`: how optuna-dashboard lists it."""
    return f"{experiment}/{label}"


def plan_studies(
    spec: ExperimentSpec, data_fingerprint: DataFingerprint | None = None
) -> list[StudyPlan]:
    """One study per arm x grid point (arm order, then grid order), [] without a search."""
    if spec.search is None or spec.confirm is None:
        return []
    fingerprints: dict[str, str] = {}
    studies = []
    for arm in spec.arms:
        for point in spec.grid_points():
            data = spec.resolve(arm, point).data
            key = canonical_json(data.model_dump())
            if key not in fingerprints:
                fingerprints[key] = data_fingerprint(data) if data_fingerprint else ""
            plan = StudyPlan(
                experiment=spec.name, arm=arm, grid_point=dict(point), study_name="-",
                written=spec.merged(arm, point), search=spec.search,
                tune_seeds=spec.tune_seeds, confirm_seeds=spec.confirm_seeds,
                confirm_max_iters=spec.confirm.max_iters, data_fingerprint=fingerprints[key],
            )
            studies.append(plan.model_copy(update={"study_name": study_name(spec.name,
                                                                             plan.label)}))
    return studies


def trial_run(
    plan: StudyPlan,
    values: Mapping[str, Any],
    seed: int,
    *,
    phase: str = "tune",
    trial: int | None = None,
) -> RunConfig:
    """The run of a trial (phase "tune") or of a confirm seed (phase "confirm": with the confirm
    `max_iters` when set). Raises SpecError when the values make an invalid config (a sampled
    value between two valid endpoints can still break a cross-field rule)."""
    from rtlab.spec.loader import with_values
    from rtlab.spec.schema import check_sections

    settings = dict(values)
    if phase == "confirm" and plan.confirm_max_iters is not None:
        settings["train.max_iters"] = plan.confirm_max_iters
    sections, issues = check_sections(with_values(plan.written, settings))
    if sections is None:
        where = f"{plan.study_name} with {canonical_json(dict(values))}"
        raise SpecError(Problem(where, ".".join(map(str, i.loc)), i.message) for i in issues)
    return RunConfig(
        experiment=plan.experiment, arm=plan.arm, seed=seed, grid_point=dict(plan.grid_point),
        data=sections.data, model=sections.model, train=sections.train,
        data_fingerprint=plan.data_fingerprint, phase=phase, study=plan.study_name,
        trial=trial, search_params=dict(values),
    )
