"""The `search:` and `confirm:` sections: typed, defaulted, checked against the rest of the spec,
overridable with --set; experiments without them are unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.config import (
    CategoricalParam,
    FloatParam,
    IntParam,
    MedianPrunerConfig,
    RunConfig,
    SearchConfig,
    StudyPlan,
    TPESamplerConfig,
)
from rtlab.plan import plan_runs, plan_studies, trial_run
from rtlab.spec import SpecError, load_spec, parse_spec

HERE = Path(__file__).parent
VALID = HERE / "valid_minimal.yaml"

SEARCH = """
search:
  params:
    train.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    train.warmup_iters: {type: int, low: 0, high: 4, step: 2}
    model.bias: {type: categorical, choices: [true, false]}
  trials: 5
  pruner: none
"""


def searched(extra: str = SEARCH, sets: tuple[str, ...] = ()):
    return parse_spec(VALID.read_text() + extra, "s.yaml", sets)


def problems(extra: str, sets: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as info:
        searched(extra, sets)
    return str(info.value)


def test_a_search_is_typed_with_its_defaults():
    spec = searched()
    search = spec.search
    assert isinstance(search, SearchConfig) and search.budget == 5
    assert isinstance(search.params["train.learning_rate"], FloatParam)
    assert isinstance(search.params["train.warmup_iters"], IntParam)
    assert isinstance(search.params["model.bias"], CategoricalParam)
    assert search.sampler == TPESamplerConfig(type="tpe", seed=0)
    assert search.objective == "final_val_loss"
    # confirm on the experiment's seeds; tune on the smallest seed that is not one of them
    assert spec.confirm_seeds == [0, 1] and spec.tune_seeds == [2]
    assert spec.confirm is not None and spec.confirm.max_iters is None


def test_shorthands_and_defaults_of_sampler_and_pruner():
    spec = searched(SEARCH.replace("pruner: none", "pruner: {n_startup_trials: 1}\n  sampler: "
                                   "random"), sets=("base.train.eval_interval=5",))
    assert spec.search.pruner == MedianPrunerConfig(type="median", n_startup_trials=1)
    assert spec.search.sampler.type == "random"


def test_without_search_nothing_changes():
    spec = load_spec(VALID)
    assert spec.search is None and spec.confirm is None
    assert plan_studies(spec) == []
    assert [run.phase for run in plan_runs(spec)] == [None] * 4


@pytest.mark.parametrize("extra, where, what", [
    ("search:\n  params:\n    train.learning_rate: {type: float, low: 1, high: 0.5}\n"
     "  trials: 3\n  pruner: none\n", "s.yaml:25:54: search.params.train.learning_rate.high",
     "high (0.5) must be > low (1.0)"),
    ("search:\n  params:\n    train.learning_rate: {type: float, low: 0, high: 0.5, log: true}\n"
     "  trials: 3\n  pruner: none\n", "search.params.train.learning_rate.low", "log range"),
    ("search:\n  params:\n    model.n_layer: {type: categorical, choices: []}\n"
     "  trials: 3\n  pruner: none\n", "search.params.model.n_layer.choices", "choices is empty"),
    ("search:\n  params:\n    model.n_layer: {type: categorical, choices: [2]}\n"
     "  trials: 3\n  pruner: none\n", "search.params.model.n_layer.choices", "one choice"),
    ("search:\n  params:\n    train.lr: {type: float, low: 0.1, high: 0.5}\n"
     "  trials: 3\n  pruner: none\n", "search.params.train.lr", "unknown setting"),
    ("search:\n  params:\n    train.learning_rate: {type: float, low: 0.1, high: 0.5}\n"
     "  trials: 3\n  pruner: none\n  objectiv: best_val_loss\n", "search.objectiv",
     "did you mean 'objective'"),
    ("search:\n  params:\n    train.learning_rate: {type: uniform, low: 0.1, high: 0.5}\n"
     "  trials: 3\n  pruner: none\n", "search.params.train.learning_rate.type",
     "unknown parameter type 'uniform'"),
    ("search:\n  params: {}\n  trials: 3\n  pruner: none\n", "search.params", "params is empty"),
    ("confirm:\n  seeds: [5]\n", "s.yaml:23:1: confirm", "add a `search:` section"),
])
def test_bad_searches_are_located(extra, where, what):
    text = problems(extra)
    assert where in text and what in text, text


def test_the_sampled_range_must_be_valid_for_every_arm():
    text = problems(SEARCH.replace("train.warmup_iters: {type: int, low: 0, high: 4, step: 2}",
                                   "train.warmup_iters: {type: int, low: 0, high: 40}"))
    assert "search.params.train.warmup_iters.high: warmup_iters (40) must be <= max_iters" in text
    assert "(for every arm)" in text


def test_a_searched_key_set_by_an_arm_or_the_grid_is_refused():
    text = problems(SEARCH + "grid:\n  train.warmup_iters: [0, 2]\n")
    assert "'train.warmup_iters' is also a grid key" in text


def test_set_overrides_reach_the_search():
    spec = searched(sets=("search.params.train.learning_rate.high=0.05", "search.trials=7",
                          "search.pruner=none", "confirm.max_iters=20"))
    assert spec.search.params["train.learning_rate"].high == 0.05
    assert spec.search.budget == 7 and spec.confirm.max_iters == 20
    text = problems(SEARCH, ("search.params.train.learning_rate.low=1",))
    assert "search.params.train.learning_rate.high: high (0.01) must be > low (1.0)" in text


def test_grid_sampler_takes_the_grid_size_as_budget():
    spec = searched(SEARCH.replace("  trials: 5\n", "  sampler: grid\n").replace(
        "log: true}", "step: 1.0e-3}"))
    assert spec.search.budget == 10 * 3 * 2  # 0.0001..0.0091 by 0.001, 0/2/4, true/false


def test_studies_carry_the_written_config_and_trials_resolve_like_grid_points():
    spec = searched()
    studies = plan_studies(spec)
    assert [s.study_name for s in studies] == ["corpus/baseline", "corpus/reasoning_1"]
    plan = StudyPlan.from_json(studies[0].to_json())
    assert plan == studies[0] and plan.fingerprint() == studies[0].fingerprint()
    values = {"train.learning_rate": 0.003, "train.warmup_iters": 2, "model.bias": False}
    run = trial_run(plan, values, 2, trial=4)
    resolved = spec.resolve("baseline", {}, values)
    assert run.sections() == resolved.as_dict()
    assert run.train.min_lr == pytest.approx(0.0003)  # derived from the sampled value
    assert run.run_name == "baseline-t4-s2" and run.phase == "tune"
    again = RunConfig.from_json(run.to_json())
    assert again == run and again.config_hash == run.config_hash
    # phase, study and trial are not part of the identity
    assert run.model_copy(update={"phase": None, "trial": None}).config_hash == run.config_hash
    confirm = trial_run(plan, values, 0, phase="confirm", trial=3)
    assert confirm.run_name == "baseline-s0"


def test_the_budget_does_not_change_a_study_but_its_space_does():
    base = plan_studies(searched())[0]
    more = plan_studies(searched(sets=("search.trials=9",)))[0]
    other = plan_studies(searched(sets=("search.params.train.learning_rate.high=0.1",)))[0]
    assert base.fingerprint() == more.fingerprint() != other.fingerprint()


def test_mini_tune_tunes_three_arms_on_one_budget_and_its_studies_are_pinned():
    spec = load_spec(HERE.parents[1] / "experiments" / "mini_tune.yaml")
    assert spec.arms == ["baseline", "reasoning_1", "myopic"]
    assert spec.search.budget == 12 and set(spec.search.params) == {
        "train.learning_rate", "train.warmup_iters"}
    assert spec.search.pruner.type == "median" and spec.search.sampler.type == "tpe"
    assert spec.tune_seeds == [2] and spec.confirm_seeds == [0, 1]
    assert spec.confirm.max_iters == 600
    # A study's fingerprint is its identity across runs (a changed one refuses to resume).
    assert {p.study_name: p.fingerprint() for p in plan_studies(spec)} == {
        "mini_tune/baseline": "53ea226e5d1a",
        "mini_tune/reasoning_1": "507769c9e9b3",
        "mini_tune/myopic": "9e46fc27edda",
    }
