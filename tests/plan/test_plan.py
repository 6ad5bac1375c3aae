"""plan_runs and config_hash: one RunConfig per arm x grid point x seed, with a stable identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rtlab.config import RunConfig, config_hash
from rtlab.plan import flatten_config, plan_runs, plan_table
from rtlab.spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
DEPTH = ROOT / "experiments" / "reasoning_depth.yaml"
MINI = ROOT / "experiments" / "mini_sweep.yaml"
MYOPIA = ROOT / "experiments" / "myopia_synthetic.yaml"


def test_plan_is_arm_by_grid_point_by_seed_in_file_order():
    spec = load_spec(DEPTH)
    plans = plan_runs(spec)
    assert len(plans) == len(spec.arms) * 8 * len(spec.seeds) == 16
    assert all(isinstance(p, RunConfig) for p in plans)
    assert [(p.grid_point["model.reasoning.n_tokens"], p.seed) for p in plans[:4]] == [
        (0, 0), (0, 1), (0, 0), (0, 1)
    ]
    assert plans[0].run_name == "reasoning-n_tokens=0-delay=1-s0"
    assert plans[-1].run_name == "reasoning-n_tokens=4-delay=2-s1"
    assert len({p.run_name for p in plans}) == len({p.config_hash for p in plans}) == 16
    assert plans[5].sections() == spec.resolve("reasoning", plans[5].grid_point).as_dict()
    assert all(p.experiment == spec.name for p in plans)


def test_planned_runs_are_immutable():
    plans = plan_runs(load_spec(MINI))
    with pytest.raises(ValueError):
        plans[0].train = plans[0].train.model_copy(update={"max_iters": 1})  # frozen
    with pytest.raises(ValueError):
        plans[0].data.name = "other"


@pytest.mark.slow
def test_hash_is_stable_across_processes():
    script = (
        "import json, sys; from rtlab.spec import load_spec; from rtlab.plan import plan_runs; "
        "print(json.dumps([p.config_hash for p in plan_runs(load_spec(sys.argv[1]))]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(DEPTH)], env=env, capture_output=True, text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [p.config_hash for p in plan_runs(load_spec(DEPTH))]


def test_hash_algorithm_is_pinned():
    # A change here makes every finished run look new (and re-run): change it only on purpose.
    config = {"model": {"n_layer": 2, "reasoning": {"n_tokens": 1}}, "train": {"lr": 0.001}}
    assert config_hash(config, 0, "abc") == "90f8610ac2e9"


def test_hash_ignores_key_order_and_integral_float_spelling():
    a = {"train": {"lr": 0.001, "max_iters": 10}, "model": {"n_layer": 2, "dropout": 0.0}}
    b = {"model": {"dropout": 0, "n_layer": 2.0}, "train": {"max_iters": 10, "lr": 1e-3}}
    assert config_hash(a, 1, "fp") == config_hash(b, 1, "fp")


def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 1
    raise AssertionError(f"unexpected config value {value!r}")


def _set(config: dict, dotted: str, value) -> dict:
    copy = json.loads(json.dumps(config))
    *parents, last = dotted.split(".")
    node = copy
    for part in parents:
        node = node[part]
    node[last] = value
    return copy


def test_a_change_in_any_field_seed_or_data_fingerprint_changes_the_hash():
    plan = plan_runs(load_spec(MINI))[0]
    sections = plan.sections()
    reference = config_hash(sections, plan.seed, "fp")
    assert plan.model_copy(update={"data_fingerprint": "fp"}).config_hash == reference
    flat = flatten_config(sections)
    assert len(flat) > 30
    for key, value in flat.items():
        changed = _set(sections, key, _perturb(value))
        assert config_hash(changed, plan.seed, "fp") != reference, key
    assert config_hash(sections, plan.seed + 1, "fp") != reference
    assert config_hash(sections, plan.seed, "fq") != reference
    assert config_hash({**sections, "extra": 1}, plan.seed, "fp") != reference


def test_data_fingerprint_is_asked_once_per_distinct_data_section_and_enters_the_hash():
    # The shipped myopia_synthetic spec has one p; a grid over the data section is the point here.
    text = MYOPIA.read_text() + "\ngrid:\n  data.p: [0.25, 0.5, 0.75]\n"
    spec = parse_spec(text, str(MYOPIA))
    calls = []

    def fingerprint(data) -> str:
        calls.append(data.options)
        return f"fp-{data.options['p']}"

    plans = plan_runs(spec, fingerprint)
    assert sorted(c["p"] for c in calls) == sorted(spec.grid["data.p"])
    assert all(p.data_fingerprint == f"fp-{p.data.options['p']}" for p in plans)
    without = {p.run_name: p.config_hash for p in plan_runs(spec)}
    assert all(without[p.run_name] != p.config_hash for p in plans)


def test_run_names_shorten_grid_keys_unless_ambiguous():
    run = plan_runs(load_spec(MINI))[0]

    def run_name(arm, grid_point, seed):
        return run.model_copy(update={"arm": arm, "grid_point": grid_point, "seed": seed}).run_name

    assert run_name("base", {}, 3) == "base-s3"
    assert run_name("a", {"model.n_layer": 2, "train.learning_rate": 0.001}, 0) == (
        "a-n_layer=2-learning_rate=0.001-s0"
    )
    assert run_name("a", {"data.p": 0.5, "model.p": True}, 1) == "a-data.p=0.5-model.p=true-s1"


def test_flatten_config_gives_dotted_params():
    flat = flatten_config({"model": {"reasoning": {"n_tokens": 1}, "n_layer": 2}, "data": {}})
    assert flat == {"model.reasoning.n_tokens": 1, "model.n_layer": 2}


def test_plan_table_marks_known_states_and_pending_runs():
    plans = plan_runs(load_spec(MINI))
    rows = plan_table(plans, {plans[0].config_hash: "FINISHED"})
    assert len(rows) == len(plans)
    assert rows[0]["status"] == "FINISHED" and rows[1]["status"] == "pending"
    assert set(rows[0]) == {"run", "arm", "grid_point", "seed", "config_hash", "status"}
    assert rows[0]["run"] == plans[0].run_name


@pytest.mark.parametrize("seed", [0, 7])
def test_hash_is_the_documented_sha256_prefix(seed):
    import hashlib

    config = {"a": 1}
    payload = json.dumps({"config": config, "data": "d", "seed": seed}, separators=(",", ":"),
                         sort_keys=True)
    assert config_hash(config, seed, "d") == hashlib.sha256(payload.encode()).hexdigest()[:12]
