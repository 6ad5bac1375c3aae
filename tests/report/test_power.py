"""Detectable effect and seeds needed, against statsmodels' independent power solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.power import TTestIndPower

from rtlab.report.stats import (
    MAX_SEEDS,
    detectable_effect,
    pooled_sd,
    power_of,
    seeds_needed,
    t_test_power,
)

SOLVER = TTestIndPower()


def statsmodels_detectable(n_arm: int, n_baseline: int, sd: float) -> float:
    d = SOLVER.solve_power(effect_size=None, nobs1=n_arm, ratio=n_baseline / n_arm, alpha=0.05,
                           power=0.8, alternative="two-sided")
    return d * sd  # Cohen's d is in units of the pooled sd


@pytest.mark.parametrize(
    ("n_arm", "n_baseline", "sd"),
    [(2, 2, 0.1), (3, 3, 0.05), (3, 5, 1.0), (5, 5, 0.013), (10, 10, 0.3), (2, 4, 2.0)],
)
def test_detectable_effect_matches_statsmodels(n_arm: int, n_baseline: int, sd: float) -> None:
    ours = detectable_effect(n_arm, n_baseline, sd)
    assert ours == pytest.approx(statsmodels_detectable(n_arm, n_baseline, sd), rel=1e-6)
    # At exactly that difference the test has 80% power, by statsmodels' own power function.
    d = ours / sd
    assert SOLVER.power(d, n_arm, alpha=0.05, ratio=n_baseline / n_arm) == pytest.approx(0.8)


@pytest.mark.parametrize(("effect", "sd"), [(0.03, 0.05), (0.01, 0.02), (0.5, 1.0), (0.031, 0.01)])
def test_seeds_needed_is_statsmodels_sample_size_rounded_up(effect: float, sd: float) -> None:
    n = SOLVER.solve_power(effect_size=effect / sd, nobs1=None, ratio=1.0, alpha=0.05, power=0.8)
    assert seeds_needed(effect, sd) == max(2, math.ceil(n))
    # One seed fewer would fall short of 80% power (where more than the minimum of 2).
    needed = seeds_needed(effect, sd)
    if needed > 2:
        assert SOLVER.power(effect / sd, needed - 1, alpha=0.05) < 0.8 <= SOLVER.power(
            effect / sd, needed, alpha=0.05)


def test_seeds_needed_edges() -> None:
    assert seeds_needed(1.0, 0.0) == 2  # no spread: any difference shows
    assert seeds_needed(10.0, 0.1) == 2  # huge effect: the minimum
    assert math.isnan(seeds_needed(0.0, 0.1))
    assert math.isnan(seeds_needed(1e-6, 1.0))  # beyond MAX_SEEDS
    assert MAX_SEEDS >= 100_000


def test_power_is_two_sided_and_five_percent_at_zero() -> None:
    assert t_test_power(0.0, 4) == pytest.approx(0.05)
    assert t_test_power(3.0, 8) == pytest.approx(t_test_power(-3.0, 8))
    assert t_test_power(40.0, 10_000) == pytest.approx(1.0)  # no NaN from the far tail


def test_power_of_uses_the_pooled_sd_and_the_baseline_mean() -> None:
    arm, base = [2.95, 3.01, 2.99], [3.10, 3.14, 3.05, 3.08]
    sd = math.sqrt((2 * np.var(arm, ddof=1) + 3 * np.var(base, ddof=1)) / 5)
    assert pooled_sd(arm, base) == pytest.approx(sd)
    power = power_of(arm, base)
    assert power.detectable == pytest.approx(statsmodels_detectable(3, 4, sd), rel=1e-6)
    assert power.detectable_pct == pytest.approx(100 * power.detectable / np.mean(base))
    n = SOLVER.solve_power(effect_size=0.01 * np.mean(base) / sd, nobs1=None, ratio=1.0,
                           alpha=0.05, power=0.8)
    assert power.seeds_needed == math.ceil(n)
    one_seed = power_of([3.0], base)
    assert math.isnan(one_seed.detectable) and math.isnan(one_seed.seeds_needed)
