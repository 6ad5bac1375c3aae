"""The shipped experiments/*.yaml files are valid and say what they cost."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtlab.plan import plan_runs
from rtlab.spec import load_spec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
FILES = sorted(EXPERIMENTS.glob("*.yaml"))
EXPECTED = {
    "mini_sweep", "seed_shakespeare_char", "gpt2_owt", "myopia_synthetic", "reasoning_depth",
    "precache_discrete", "shakespeare_overfit",
}


def test_the_expected_experiments_are_shipped():
    assert EXPECTED <= {path.stem for path in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_experiment_is_valid_and_states_its_cost(path: Path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert len(spec.description) > 40 and spec.cost and len(spec.cost) > 20
    plans = plan_runs(spec)
    assert len({plan.config_hash for plan in plans}) == len(plans)


def test_mini_sweep_is_the_readme_job_on_cpu():
    spec = load_spec(EXPERIMENTS / "mini_sweep.yaml")
    assert spec.arms == ["baseline", "reasoning_1", "reasoning_2", "myopic"]
    assert len(spec.seeds) >= 2
    configs = {arm: spec.resolve(arm).as_dict() for arm in spec.arms}
    assert all(c["train"]["device"] == "cpu" for c in configs.values())
    assert all(c["data"]["name"] == "shakespeare_char" for c in configs.values())
    assert configs["reasoning_2"]["model"]["reasoning"]["n_tokens"] == 2
    assert configs["myopic"]["model"]["myopic"] == "strict"


def test_seed_shakespeare_char_is_nanogpts_setting():
    spec = load_spec(EXPERIMENTS / "seed_shakespeare_char.yaml")
    config = spec.resolve("baseline").as_dict()
    model, train = config["model"], config["train"]
    assert (model["n_layer"], model["n_embd"], model["n_head"], model["block_size"]) == (
        6, 384, 6, 256
    )
    assert model["dropout"] == 0.2
    assert (train["batch_size"], train["max_iters"], train["learning_rate"], train["min_lr"]) == (
        64, 5000, 1e-3, 1e-4
    )
    assert (train["warmup_iters"], train["beta2"]) == (100, 0.99)
    assert spec.arms == ["baseline", "reasoning_1", "reasoning_3", "myopic"]
    assert len(spec.seeds) == 3


def test_reasoning_depth_and_myopia_grids():
    depth = load_spec(EXPERIMENTS / "reasoning_depth.yaml")
    assert depth.grid == {"model.reasoning.n_tokens": [0, 1, 2, 4], "model.reasoning.delay": [1, 2]}
    myopia = load_spec(EXPERIMENTS / "myopia_synthetic.yaml")
    assert myopia.arms == ["baseline", "myopic_strict", "myopic_paper", "reasoning_1"]
    assert not myopia.grid  # one p (0.5), sized to fit the CPU budget (issue 12)
    assert myopia.resolve("myopic_paper").model.head == "regression"


@pytest.mark.parametrize("name", ["myopia_synthetic", "precache_discrete", "shakespeare_overfit"])
def test_issue_12_studies_have_three_seeds_and_a_baseline(name):
    spec = load_spec(EXPERIMENTS / f"{name}.yaml")
    assert len(spec.seeds) >= 3 and "baseline" in spec.arms
