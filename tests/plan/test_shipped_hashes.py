"""The config hashes of every shipped experiment, pinned: a run's hash is its identity in every
store, so a change to the config types, their defaults or the hash function that moved one would
orphan finished runs (a rerun would train them again under a new name)."""

from pathlib import Path

import pytest

from rtlab.plan import plan_runs
from rtlab.spec import load_spec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

# Hashes of the spec alone (no data fingerprint): every experiment, even one whose data needs a hub.
SPEC_HASHES = {
    "gpt2_owt.yaml": {
        "baseline-s0": "0e685366c87f",
        "reasoning_1-s0": "2fb34da172ab",
    },
    "mini_sweep.yaml": {
        "baseline-s0": "8271f0124f42",
        "baseline-s1": "8a9fe02e77f4",
        "reasoning_1-s0": "0ca270d4dc6a",
        "reasoning_1-s1": "45b0052c6b49",
        "reasoning_2-s0": "edb389cbc34e",
        "reasoning_2-s1": "71982193e2a2",
        "myopic-s0": "fc17e05f404c",
        "myopic-s1": "51ce283a3983",
    },
    "mini_tune.yaml": {  # a searched experiment: each arm's config before its values are sampled
        "baseline-s0": "bdeeb2c79de7",
        "baseline-s1": "bffae3a5274a",
        "reasoning_1-s0": "55381ab477e4",
        "reasoning_1-s1": "d5278b3fa7ab",
        "myopic-s0": "6b0937e99d63",
        "myopic-s1": "31ccc793a53f",
    },
    "myopia_synthetic.yaml": {
        "baseline-s0": "a1379fbbd1db",
        "baseline-s1": "eeb2b5717fe9",
        "baseline-s2": "bb37ee4b6e6f",
        "myopic_strict-s0": "425365eacfd0",
        "myopic_strict-s1": "f2bc57705c1a",
        "myopic_strict-s2": "4b673c273bc1",
        "myopic_paper-s0": "bc8dbf89885e",
        "myopic_paper-s1": "04ecee8e277b",
        "myopic_paper-s2": "9058c08f8b9d",
        "reasoning_1-s0": "44ea700aa94e",
        "reasoning_1-s1": "83ece37b2407",
        "reasoning_1-s2": "7f39e8e26fdd",
    },
    "precache_discrete.yaml": {
        "baseline-s0": "98adaae8df69",
        "baseline-s1": "96b3112ec2b0",
        "baseline-s2": "eca68c23126d",
        "reasoning_1-s0": "dbb24760f6c9",
        "reasoning_1-s1": "d3b4bc3a3260",
        "reasoning_1-s2": "d969eb49eb87",
        "reasoning_2-s0": "a7d199fbc308",
        "reasoning_2-s1": "2e8d7197fd78",
        "reasoning_2-s2": "7afb9172ff70",
        "myopic-s0": "d79f388009c1",
        "myopic-s1": "9e74a8c879f2",
        "myopic-s2": "7a46cd5eddd4",
    },
    "reasoning_depth.yaml": {
        "reasoning-n_tokens=0-delay=1-s0": "7478552e58f0",
        "reasoning-n_tokens=0-delay=1-s1": "754b058d8ca1",
        "reasoning-n_tokens=0-delay=2-s0": "9624a6745f46",
        "reasoning-n_tokens=0-delay=2-s1": "c1dc2438dd75",
        "reasoning-n_tokens=1-delay=1-s0": "dd7ebab2455d",
        "reasoning-n_tokens=1-delay=1-s1": "3a0558b6a488",
        "reasoning-n_tokens=1-delay=2-s0": "46c777125a08",
        "reasoning-n_tokens=1-delay=2-s1": "f8f1d4d2f179",
        "reasoning-n_tokens=2-delay=1-s0": "1db037ade76e",
        "reasoning-n_tokens=2-delay=1-s1": "c50151ce6a1e",
        "reasoning-n_tokens=2-delay=2-s0": "6eddbadae1a2",
        "reasoning-n_tokens=2-delay=2-s1": "7889bc2a6aa0",
        "reasoning-n_tokens=4-delay=1-s0": "ffacf4808eba",
        "reasoning-n_tokens=4-delay=1-s1": "afae5b31b39f",
        "reasoning-n_tokens=4-delay=2-s0": "d1b3909a3477",
        "reasoning-n_tokens=4-delay=2-s1": "1d5f0b9da099",
    },
    "seed_shakespeare_char.yaml": {
        "baseline-s0": "a8d22c4ddc95",
        "baseline-s1": "ca6b1c8f4d0a",
        "baseline-s2": "d9a80f16b8c6",
        "reasoning_1-s0": "3a38131d6c00",
        "reasoning_1-s1": "fa0f606aa56b",
        "reasoning_1-s2": "c973b4a3094f",
        "reasoning_3-s0": "30cb79abf9e4",
        "reasoning_3-s1": "7e63c99a49a8",
        "reasoning_3-s2": "d6cb7ac06eab",
        "myopic-s0": "cdc1a1b862be",
        "myopic-s1": "1c2995b3772f",
        "myopic-s2": "0ca8e399cc2f",
    },
    "shakespeare_overfit.yaml": {
        "baseline-s0": "87d14bae94ac",
        "baseline-s1": "e70fea869132",
        "baseline-s2": "e6fe98df5b2d",
        "reasoning_1-s0": "31cb334b7bc8",
        "reasoning_1-s1": "0b37b36812c0",
        "reasoning_1-s2": "df479b8d39f9",
        "reasoning_2-s0": "f7c0bb223a93",
        "reasoning_2-s1": "f0b2331ce1a5",
        "reasoning_2-s2": "246919f298f1",
    },
}

# Hashes as `rtlab run` computes them, with the prepared data's fingerprint.
RUN_HASHES = {
    "mini_sweep.yaml": {
        "baseline-s0": "cf6805fd252f",
        "baseline-s1": "c4d525499ab6",
        "reasoning_1-s0": "6a83bc54f618",
        "reasoning_1-s1": "74f7eb85c22a",
        "reasoning_2-s0": "070e89e3d03f",
        "reasoning_2-s1": "e1f704a3096c",
        "myopic-s0": "f20164528408",
        "myopic-s1": "3c480b06d7ba",
    },
    "myopia_synthetic.yaml": {
        "baseline-s0": "7de35e4d640b",
        "baseline-s1": "a5ce5109e054",
        "baseline-s2": "ab7690503767",
        "myopic_strict-s0": "f6d2c3c8d5f7",
        "myopic_strict-s1": "675b4c050570",
        "myopic_strict-s2": "56f3b50d76f0",
        "myopic_paper-s0": "dd24874d2db7",
        "myopic_paper-s1": "899d8129ce04",
        "myopic_paper-s2": "1df2a1981348",
        "reasoning_1-s0": "450b35031fd3",
        "reasoning_1-s1": "9d76609cee55",
        "reasoning_1-s2": "9ebc4fed182f",
    },
    "reasoning_depth.yaml": {
        "reasoning-n_tokens=0-delay=1-s0": "888148eda74e",
        "reasoning-n_tokens=0-delay=1-s1": "a49a08d5cb4a",
        "reasoning-n_tokens=0-delay=2-s0": "9833cd7d3393",
        "reasoning-n_tokens=0-delay=2-s1": "eded740c62b5",
        "reasoning-n_tokens=1-delay=1-s0": "30458e9cf4f4",
        "reasoning-n_tokens=1-delay=1-s1": "d5b5df97964e",
        "reasoning-n_tokens=1-delay=2-s0": "6f491c16ae3f",
        "reasoning-n_tokens=1-delay=2-s1": "72bd23ede3d3",
        "reasoning-n_tokens=2-delay=1-s0": "caea32ccc757",
        "reasoning-n_tokens=2-delay=1-s1": "faebeab6b008",
        "reasoning-n_tokens=2-delay=2-s0": "31698eff2ab1",
        "reasoning-n_tokens=2-delay=2-s1": "0fb132771709",
        "reasoning-n_tokens=4-delay=1-s0": "884291b19833",
        "reasoning-n_tokens=4-delay=1-s1": "fce7cbe8a653",
        "reasoning-n_tokens=4-delay=2-s0": "81994098caec",
        "reasoning-n_tokens=4-delay=2-s1": "26bab1563cb7",
    },
    "seed_shakespeare_char.yaml": {
        "baseline-s0": "1361b534964d",
        "baseline-s1": "96e5620e6c71",
        "baseline-s2": "2ea2573d9bd5",
        "reasoning_1-s0": "81e76c55c4f4",
        "reasoning_1-s1": "5e037a2b3e4d",
        "reasoning_1-s2": "abab5a52333b",
        "reasoning_3-s0": "5026ee4ce06e",
        "reasoning_3-s1": "0afe0ad194ea",
        "reasoning_3-s2": "208f0ac380e4",
        "myopic-s0": "50aac77227bc",
        "myopic-s1": "ea74b3038a6b",
        "myopic-s2": "9fec3724e8f6",
    },
}


@pytest.mark.parametrize("name", sorted(SPEC_HASHES))
def test_spec_hashes_of_shipped_experiments_do_not_change(name):
    runs = plan_runs(load_spec(EXPERIMENTS / name))
    assert {run.run_name: run.config_hash for run in runs} == SPEC_HASHES[name]


def test_every_shipped_experiment_is_pinned():
    assert sorted(p.name for p in EXPERIMENTS.glob("*.yaml")) == sorted(SPEC_HASHES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUN_HASHES))
def test_run_hashes_with_data_fingerprints_do_not_change(name):
    from rtlab.sweep.runner import prepare_experiment  # prepares the data (cached after once)

    runs = prepare_experiment(EXPERIMENTS / name).runs
    assert {run.run_name: run.config_hash for run in runs} == RUN_HASHES[name]
