"""Small, explicit statistics for the report: mean, t-interval, Welch comparison.

Every function takes plain sequences of per-seed values and returns plain numbers, so that the
tests can recompute each number independently with numpy/scipy. Intervals are two-sided 95%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with a t-interval; `half_width` is NaN when n < 2 (no interval)."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.half_width)


@dataclass(frozen=True)
class Comparison:
    """arm minus baseline (Welch). Percentages are relative to the baseline mean."""

    n_arm: int
    n_baseline: int
    delta: float
    low: float  # NaN when either side has n < 2
    high: float
    p_value: float  # NaN when either side has n < 2, or both sides have zero spread
    df: float
    delta_pct: float
    low_pct: float
    high_pct: float

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[np.isfinite(array)]


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample std and the t-interval half width of the mean over the finite values."""
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan)
    std = float(x.std(ddof=1))
    t_quantile = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return Summary(n, mean, std, t_quantile * std / math.sqrt(n))


def welch(
    arm_values: Sequence[float], baseline_values: Sequence[float], confidence: float = CONFIDENCE
) -> Comparison:
    """Difference of means (arm - baseline) with a Welch-Satterthwaite t-interval and p-value."""
    a, b = _finite(arm_values), _finite(baseline_values)
    n_a, n_b = int(a.size), int(b.size)
    nan = math.nan
    if n_a == 0 or n_b == 0:
        return Comparison(n_a, n_b, nan, nan, nan, nan, nan, nan, nan, nan)
    mean_a, mean_b = float(a.mean()), float(b.mean())
    delta = mean_a - mean_b
    # Percent of the baseline mean; the interval is scaled by the same (estimated) denominator,
    # which ignores the denominator's own uncertainty (stated in the report notes).
    scale = 100.0 / mean_b if mean_b != 0 else nan
    low = high = p_value = df = nan
    if n_a >= 2 and n_b >= 2:
        var_a, var_b = float(a.var(ddof=1)) / n_a, float(b.var(ddof=1)) / n_b
        se = math.sqrt(var_a + var_b)
        if se > 0:
            df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
            half = float(stats.t.ppf(0.5 + confidence / 2, df=df)) * se
            low, high = delta - half, delta + half
            p_value = float(2.0 * stats.t.sf(abs(delta) / se, df))  # two-sided Welch t-test
        else:  # both sides constant: the difference is exact, a p-value is undefined
            low = high = delta
    return Comparison(
        n_a, n_b, delta, low, high, p_value, df, delta * scale, low * scale, high * scale
    )
