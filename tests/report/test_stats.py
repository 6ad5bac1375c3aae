"""rtlab.report.stats against independent textbook computations (numpy + scipy by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rtlab.report.stats import summarize, welch


def t_interval(x: list[float]) -> tuple[float, float, float]:
    x = np.asarray(x)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    low, high = sps.t.interval(0.95, x.size - 1, loc=x.mean(), scale=sem)
    return x.mean(), low, high


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    delta, se = a.mean() - b.mean(), math.sqrt(va + vb)
    p = sps.ttest_ind(a, b, equal_var=False).pvalue  # scipy's own Welch test
    low, high = sps.t.interval(0.95, df, loc=delta, scale=se)
    return delta, low, high, p


@pytest.mark.parametrize("values", [[3.1, 3.14, 3.05], [1.0, 2.0], [0.5, 0.51, 0.49, 0.7, 0.52]])
def test_summary_mean_and_t_interval_match_scipy(values: list[float]) -> None:
    s = summarize(values)
    mean, low, high = t_interval(values)
    assert s.n == len(values)
    assert s.mean == pytest.approx(mean, rel=1e-12)
    assert s.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert (s.low, s.high) == pytest.approx((low, high), rel=1e-12)


def test_one_value_has_no_interval_and_nonfinite_values_do_not_count() -> None:
    s = summarize([2.5, math.nan, math.inf])
    assert s.n == 1 and s.mean == 2.5
    assert not s.has_interval and math.isnan(s.half_width)
    assert summarize([]).n == 0


def test_welch_delta_interval_and_p_match_hand_computation() -> None:
    arm, base = [2.95, 3.01, 2.99], [3.10, 3.14, 3.05, 3.2]
    c = welch(arm, base)
    delta, low, high, p = welch_by_hand(arm, base)
    assert c.delta == pytest.approx(delta, rel=1e-12)
    assert (c.low, c.high) == pytest.approx((low, high), rel=1e-10)
    assert c.p_value == pytest.approx(p, rel=1e-10)
    base_mean = np.mean(base)
    assert c.delta_pct == pytest.approx(100 * delta / base_mean, rel=1e-12)
    assert c.low_pct == pytest.approx(100 * low / base_mean, rel=1e-10)


def test_welch_without_two_values_per_side_gives_a_delta_but_no_interval() -> None:
    c = welch([3.0], [3.1, 3.2])
    assert c.delta == pytest.approx(3.0 - 3.15)
    assert not c.has_interval and math.isnan(c.p_value)


def test_welch_of_constant_samples_is_exact_without_a_p_value() -> None:
    c = welch([2.0, 2.0], [3.0, 3.0])
    assert (c.delta, c.low, c.high) == (-1.0, -1.0, -1.0)
    assert math.isnan(c.p_value)
