"""Set a spec's claims against what was measured.

A claim reads "`arm` reaches a `metric` `expect` (lower/higher) than `baseline_arm`", optionally
with the source's numbers (e.g. the blog's 0.621 -> 0.401). Those numbers come from another
setting (data, tokenizer, model size, training length), so absolute losses are never compared:
the verdict rests on the direction of the measured change of the arm's mean over the baseline
arm's mean (final values, Welch 95% interval over seeds):
- supported: the interval lies entirely on the expected side of 0;
- contradicted: it lies entirely on the other side;
- inconclusive at this power: it contains 0, and the smallest difference these seeds could detect
  (80% power, two-sided 5%, from the pooled seed spread; stats.power_of) exceeds the claimed
  effect: these seeds cannot tell;
- not supported: it contains 0 although the claimed effect was detectable: had it been there, the
  comparison would most likely have shown it;
- not comparable: an arm has no finished runs, one seed on a side (no interval), no direction
  given, or the answer depends on something the claim leaves open (train vs val, grid point).
The claimed effect is relative, like the verdict: |value - baseline_value| / baseline_value of
the claim's own numbers, set against the detectable difference in % of the measured baseline
mean. A claim without numbers states no size; it is taken to claim at least
DEFAULT_CLAIMED_PCT (1% of the baseline): a study that could see 1% and saw nothing does not
support it. When the claim gives numbers, the why also says whether its relative change lies
inside the measured interval (the size), without changing the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from rtlab.report.stats import power_of, welch

SUPPORTED, CONTRADICTED = "supported", "contradicted"
INCONCLUSIVE, NOT_SUPPORTED = "inconclusive at this power", "not supported"
NOT_COMPARABLE = "not comparable"
DEFAULT_CLAIMED_PCT = 1.0  # the effect a claim without numbers is taken to claim (% of baseline)
METRIC_COLUMNS = {
    "val_loss": "final_val_loss",
    "final_val_loss": "final_val_loss",
    "best_val_loss": "best_val_loss",
    "train_loss": "final_train_loss",
    "final_train_loss": "final_train_loss",
}
METRIC_WORDS = {
    "final_val_loss": "final validation loss",
    "best_val_loss": "best validation loss",
    "final_train_loss": "final train loss",
}
UNSPECIFIED = (None, "", "loss", "unspecified", "unknown")


@dataclass(frozen=True)
class ClaimVerdict:
    claim: dict
    verdict: str
    why: str
    compared: str  # what was set against what, in words
    claimed_change_pct: float
    measured_change_pct: float  # of the first reading (NaN when none)


def claim_to_dict(claim: object) -> dict:
    """Claims arrive as pydantic models from rtlab.spec or as plain dicts from YAML."""
    if isinstance(claim, dict):
        return dict(claim)
    if hasattr(claim, "model_dump"):
        return claim.model_dump()
    return dict(vars(claim))


def _reading(
    runs: pd.DataFrame, column: str, arm: str, baseline_arm: str, label: str, expect: str,
    claimed_pct: float,
) -> tuple[str, str, float]:
    """(verdict, explanation, measured %) for one metric at one grid point."""
    chosen = runs[runs["included"] & (runs["grid_label"] == label)]
    arm_values = chosen.loc[chosen["arm"] == arm, column].to_numpy(float)
    base_values = chosen.loc[chosen["arm"] == baseline_arm, column].to_numpy(float)
    comparison = welch(arm_values, base_values)
    where = f" at {label}" if label else ""
    words = METRIC_WORDS[column]
    if comparison.n_arm == 0 or comparison.n_baseline == 0:
        missing = arm if comparison.n_arm == 0 else baseline_arm
        why = f"no finished runs of arm {missing!r}{where} with a {words}"
        return NOT_COMPARABLE, why, math.nan
    measured = comparison.delta_pct
    counts = f"n={comparison.n_arm} vs {comparison.n_baseline}"
    if not comparison.has_interval:
        return (
            NOT_COMPARABLE,
            f"{words}{where}: measured {measured:+.2f}% ({counts}): "
            "one seed on a side gives no interval to test the claim against",
            measured,
        )
    low, high = comparison.low_pct, comparison.high_pct
    detectable = power_of(arm_values, base_values).detectable_pct
    text = f"{words}{where}: measured {measured:+.2f}% [{low:+.2f}, {high:+.2f}] ({counts})"
    kind = verdict_of(low, high, expect, detectable, claimed_pct)
    if kind in (INCONCLUSIVE, NOT_SUPPORTED):
        claimed = (f"the {abs(claimed_pct):.2f}% claimed" if math.isfinite(claimed_pct)
                   else f"{DEFAULT_CLAIMED_PCT:g}% (no size claimed)")
        than = "more than" if kind == INCONCLUSIVE else "no more than"
        text += (f": the interval contains 0; the smallest difference these seeds detect (80% "
                 f"power) is {detectable:.2f}%, {than} {claimed}")
    elif kind == SUPPORTED:
        text += f": {expect}, as claimed"
    else:
        text += f": {'higher' if expect == 'lower' else 'lower'}, against the claim"
    if math.isfinite(claimed_pct):
        if low <= claimed_pct <= high:
            size = "inside the interval"
        elif abs(claimed_pct) > max(abs(low), abs(high)):
            size = "outside it (the measured effect is smaller)"
        else:
            size = "outside it (the measured effect is larger)"
        text += f"; the claimed size {claimed_pct:+.2f}% lies {size}"
    return kind, text, measured


def verdict_of(
    low_pct: float, high_pct: float, expect: str, detectable_pct: float, claimed_pct: float
) -> str:
    """The verdict of one reading from its interval (% of the baseline mean), the expected
    direction, the detectable difference (%) and the claimed change (%, NaN: none claimed)."""
    if low_pct <= 0 <= high_pct:
        claimed = abs(claimed_pct) if math.isfinite(claimed_pct) else DEFAULT_CLAIMED_PCT
        return INCONCLUSIVE if detectable_pct > claimed else NOT_SUPPORTED
    return SUPPORTED if (high_pct < 0) == (expect == "lower") else CONTRADICTED


def check_claim(
    claim: object, runs: pd.DataFrame, baseline_arm_default: str | None
) -> ClaimVerdict:
    data = claim_to_dict(claim)
    arm = data.get("arm")
    baseline_arm = data.get("baseline_arm") or baseline_arm_default
    value, base_value = data.get("value"), data.get("baseline_value")
    metric = data.get("metric")
    claimed_pct = math.nan
    if value is not None and base_value:
        claimed_pct = (float(value) - float(base_value)) / float(base_value) * 100.0
    expect = data.get("expect")
    if expect not in ("lower", "higher") and math.isfinite(claimed_pct) and claimed_pct != 0:
        expect = "lower" if claimed_pct < 0 else "higher"

    def verdict(
        kind: str, why: str, compared: str = "", measured: float = math.nan
    ) -> ClaimVerdict:
        return ClaimVerdict(data, kind, why, compared, claimed_pct, measured)

    if not arm or not baseline_arm:
        return verdict(NOT_COMPARABLE, "the claim names no arm or baseline arm")
    if expect not in ("lower", "higher"):
        return verdict(NOT_COMPARABLE, "the claim gives no direction (expect) and no numbers")
    known_arms = set(runs["arm"])
    for name in (arm, baseline_arm):
        if name not in known_arms:
            return verdict(NOT_COMPARABLE, f"arm {name!r} has no runs in this experiment")
    if metric in UNSPECIFIED:
        columns, open_metric = ["final_val_loss", "final_train_loss"], True
    elif metric in METRIC_COLUMNS:
        columns, open_metric = [METRIC_COLUMNS[metric]], False
    else:
        return verdict(NOT_COMPARABLE, f"unknown claim metric {metric!r}")
    labels = [
        label for label in runs["grid_label"].drop_duplicates()
        if {arm, baseline_arm} <= set(runs.loc[runs["grid_label"] == label, "arm"])
    ] or [""]

    readings = [
        _reading(runs, column, arm, baseline_arm, label, expect, claimed_pct)
        for column in columns for label in labels
    ]
    kinds = {kind for kind, _, _ in readings}
    details = "; ".join(text for _, text, _ in readings)
    numbers = (
        f" ({float(base_value):g} -> {float(value):g}, {claimed_pct:+.2f}%)"
        if math.isfinite(claimed_pct) else ""
    )
    compared = _compared(columns, arm, baseline_arm, f"{expect}{numbers}", open_metric)
    if len(kinds) == 1:
        kind = kinds.pop()
    else:
        kind = NOT_COMPARABLE
        open_part = "train vs validation loss" if open_metric else "the grid point"
        details = f"the answer depends on {open_part}, which the claim leaves open: {details}"
    return verdict(kind, details, compared, readings[0][2])


def _compared(
    columns: list[str], arm: str, baseline_arm: str, claim: str, open_metric: bool
) -> str:
    """What a claim was checked against, in words."""
    compared = (
        f"relative change of the mean {' and '.join(METRIC_WORDS[c] for c in columns)} of arm "
        f"{arm!r} over arm {baseline_arm!r}, against the claim that it is {claim}; "
        "absolute losses from the source are not compared (other data, tokenizer, model size)"
    )
    if open_metric:
        compared += "; the claim does not say train or validation loss, so both are checked"
    return compared


def check_claims(
    claims: list[object], runs: pd.DataFrame, baseline_arm: str | None
) -> list[ClaimVerdict]:
    return [check_claim(claim, runs, baseline_arm) for claim in claims]
