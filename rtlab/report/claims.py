"""Set a spec's claims (e.g. the blog's loss 0.621 -> 0.401) against what was measured.

A claim's absolute losses come from another setting (data, tokenizer, model size), so only its
relative change is compared: claimed (value - baseline_value) / baseline_value against the
measured change of the arm's mean over the baseline arm's mean, with a Welch 95% interval.
- supported: the claimed relative change lies inside the measured interval;
- contradicted: it lies outside (the why says whether the effect is smaller, absent or reversed);
- not comparable: no finished runs of an arm, one seed (no interval), no claimed numbers, or the
  verdict depends on something the claim leaves open (train vs val loss, grid point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from rtlab.report.stats import welch

SUPPORTED, CONTRADICTED, NOT_COMPARABLE = "supported", "contradicted", "not comparable"
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
    runs: pd.DataFrame, column: str, arm: str, baseline_arm: str, label: str, claimed_pct: float
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
    measured_text = (
        f"{words}{where}: measured {measured:+.2f}% [{low:+.2f}, {high:+.2f}] ({counts})"
    )
    if low <= claimed_pct <= high:
        return SUPPORTED, f"{measured_text} contains the claimed {claimed_pct:+.2f}%", measured
    if low <= 0 <= high:
        nature = "no detectable change (the interval contains 0)"
    elif (low > 0 and claimed_pct < 0) or (high < 0 and claimed_pct > 0):
        nature = "the opposite direction"
    elif abs(claimed_pct) > max(abs(low), abs(high)):
        nature = "the same direction but a smaller effect"
    else:
        nature = "the same direction but a larger effect"
    return (
        CONTRADICTED,
        f"{measured_text} excludes the claimed {claimed_pct:+.2f}%: {nature}",
        measured,
    )


def check_claim(
    claim: object, runs: pd.DataFrame, baseline_arm_default: str | None
) -> ClaimVerdict:
    data = claim_to_dict(claim)
    arm = data.get("arm")
    baseline_arm = data.get("baseline_arm") or baseline_arm_default
    value, base_value = data.get("value"), data.get("baseline_value")
    metric = data.get("metric")
    source = data.get("source") or "the claim"

    def verdict(
        kind: str, why: str, compared: str = "", measured: float = math.nan
    ) -> ClaimVerdict:
        return ClaimVerdict(data, kind, why, compared, claimed_pct, measured)

    claimed_pct = math.nan
    if value is None or base_value is None or not base_value:
        return verdict(NOT_COMPARABLE, "the claim gives no baseline_value and value to compare")
    claimed_pct = (float(value) - float(base_value)) / float(base_value) * 100.0
    if not arm or not baseline_arm:
        return verdict(NOT_COMPARABLE, "the claim names no arm or baseline arm")
    known_arms = set(runs["arm"])
    for name in (arm, baseline_arm):
        if name not in known_arms:
            return verdict(NOT_COMPARABLE, f"arm {name!r} has no runs in this experiment")
    if metric in UNSPECIFIED:
        columns = ["final_val_loss", "final_train_loss"]
        open_metric = True
    elif metric in METRIC_COLUMNS:
        columns, open_metric = [METRIC_COLUMNS[metric]], False
    else:
        return verdict(NOT_COMPARABLE, f"unknown claim metric {metric!r}")
    labels = [
        label for label in runs["grid_label"].drop_duplicates()
        if {arm, baseline_arm} <= set(runs.loc[runs["grid_label"] == label, "arm"])
    ] or [""]

    readings = [
        _reading(runs, column, arm, baseline_arm, label, claimed_pct)
        for column in columns for label in labels
    ]
    kinds = {kind for kind, _, _ in readings}
    details = "; ".join(text for _, text, _ in readings)
    compared = (
        f"relative change of {' and '.join(METRIC_WORDS[c] for c in columns)} of arm {arm!r} "
        f"over arm {baseline_arm!r} (means over seeds, final step) vs {source}'s "
        f"{float(base_value):g} -> {float(value):g} ({claimed_pct:+.2f}%); absolute losses are "
        "not compared because they depend on the data, tokenizer and model size"
    )
    if open_metric:
        compared += "; the claim does not say train or validation loss, so both are checked"
    if len(kinds) == 1:
        kind = kinds.pop()
    else:
        kind = NOT_COMPARABLE
        open_part = "train vs validation loss" if open_metric else "the grid point"
        details = f"the verdict depends on {open_part}, which the claim leaves open: {details}"
    return verdict(kind, details, compared, readings[0][2])


def check_claims(
    claims: list[object], runs: pd.DataFrame, baseline_arm: str | None
) -> list[ClaimVerdict]:
    return [check_claim(claim, runs, baseline_arm) for claim in claims]
