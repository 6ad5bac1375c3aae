"""Small, explicit statistics for the report: mean, t-interval, Welch comparison.

Every function takes plain sequences of per-seed values and returns plain numbers, so that the
tests can recompute each number independently with numpy/scipy. Intervals are two-sided 95%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

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


# ---- power: what a comparison of this many seeds could have detected ----------------------------

POWER, ALPHA = 0.80, 0.05
DEFAULT_RELATIVE_EFFECT = 0.01  # "how many seeds to detect 1% of the baseline mean"
MAX_SEEDS = 1_000_000  # the search for seeds per arm stops here (returned as NaN beyond)


@dataclass(frozen=True)
class Power:
    """What a two-sample comparison could detect at POWER, two-sided ALPHA, from its seed spread.

    `detectable` is in the metric's units, `detectable_pct` in % of the baseline mean;
    `seeds_needed` is per arm (equal arms) for a difference of `relative_effect` x the baseline
    mean. NaN where a side has fewer than 2 seeds (no spread to plan from).
    """

    sd: float  # pooled standard deviation of the two arms
    detectable: float
    detectable_pct: float
    relative_effect: float
    seeds_needed: float  # an integer, or NaN


def pooled_sd(arm_values: Sequence[float], baseline_values: Sequence[float]) -> float:
    """sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)); NaN when a side has n < 2."""
    a, b = _finite(arm_values), _finite(baseline_values)
    if a.size < 2 or b.size < 2:
        return math.nan
    squares = (a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)
    return float(math.sqrt(squares / (a.size + b.size - 2)))


def t_test_power(ncp: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test: P(|T'| > t_crit) with T' noncentral t(df, ncp)."""
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    # The far tail is negligible for a large ncp, where scipy's nct.cdf can underflow to NaN.
    far_tail = float(stats.nct.cdf(-critical, df, abs(ncp)))
    near_tail = float(stats.nct.sf(critical, df, abs(ncp)))
    return near_tail + (far_tail if math.isfinite(far_tail) else 0.0)


def _ncp_for_power(df: float, power: float, alpha: float) -> float:
    """The noncentrality at which the two-sided t-test reaches `power`."""
    high = 1.0
    while t_test_power(high, df, alpha) < power:  # bracket the root; power rises with ncp
        high *= 2.0
    return float(optimize.brentq(lambda ncp: t_test_power(ncp, df, alpha) - power, 0.0, high,
                                 xtol=1e-12))


def detectable_effect(
    n_arm: int, n_baseline: int, sd: float, power: float = POWER, alpha: float = ALPHA
) -> float:
    """The smallest true difference of means a two-sample t-test (pooled sd, n_a + n_b - 2
    degrees of freedom) detects with probability `power` at two-sided level `alpha`."""
    if n_arm < 2 or n_baseline < 2 or not math.isfinite(sd):
        return math.nan
    df = n_arm + n_baseline - 2
    return _ncp_for_power(df, power, alpha) * sd * math.sqrt(1 / n_arm + 1 / n_baseline)


def seeds_needed(effect: float, sd: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """Seeds per arm (equal arms, at least 2) for a two-sample t-test to detect `effect` with
    probability `power` at two-sided level `alpha`; NaN when it takes more than MAX_SEEDS."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return math.nan
    if sd == 0:
        return 2.0

    def shortfall(n: float) -> float:
        return t_test_power(abs(effect) / (sd * math.sqrt(2 / n)), 2 * n - 2, alpha) - power

    if shortfall(2) >= 0:
        return 2.0
    if shortfall(MAX_SEEDS) < 0:
        return math.nan
    # Power rises with n: solve on the continuous n, then round up to whole seeds.
    return float(math.ceil(optimize.brentq(shortfall, 2, MAX_SEEDS, xtol=1e-9) - 1e-9))


def power_of(
    arm_values: Sequence[float], baseline_values: Sequence[float],
    relative_effect: float = DEFAULT_RELATIVE_EFFECT,
) -> Power:
    """The detectable difference of this comparison, and the seeds needed for `relative_effect`
    of the baseline mean, from the measured spread of both arms."""
    a, b = _finite(arm_values), _finite(baseline_values)
    sd = pooled_sd(a, b)
    detectable = detectable_effect(int(a.size), int(b.size), sd)
    base_mean = float(b.mean()) if b.size else math.nan
    scale = 100.0 / abs(base_mean) if b.size and base_mean != 0 else math.nan
    needed = seeds_needed(relative_effect * abs(base_mean), sd) if a.size >= 2 else math.nan
    return Power(sd, detectable, detectable * scale, relative_effect, needed)
