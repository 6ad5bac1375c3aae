"""Per-arm aggregates over seeds and the comparisons against the baseline arm.

Numbers live in plain DataFrames (written as CSV at full precision); `format_*` turn them into
the markdown/HTML cells of the report. Only runs with `included` set enter any aggregate.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rtlab.report.stats import (
    MAX_SEEDS,
    Comparison,
    Power,
    Summary,
    power_of,
    summarize,
    welch,
)
from rtlab.track.names import (
    BEST_VAL_LOSS,
    FINAL_TRAIN_LOSS,
    FINAL_VAL_LOSS,
    FLOPS_SEEN,
    MFU,
    TOKENS_PER_SEC,
    TOKENS_SEEN,
    VAL_LOSS,
)

LOSS_COLUMNS = (FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, BEST_VAL_LOSS)
LOSS_TITLES = {
    FINAL_TRAIN_LOSS: "final train loss",
    FINAL_VAL_LOSS: "final val loss",
    BEST_VAL_LOSS: "best val loss",
}


def group_keys(runs: pd.DataFrame, arms: list[str]) -> list[tuple[str, str]]:
    """(arm, grid label) pairs in report order: arms as given, grid points in first-seen order."""
    keys: list[tuple[str, str]] = []
    for arm in arms:
        labels = runs.loc[runs["arm"] == arm, "grid_label"].drop_duplicates().tolist()
        keys.extend((arm, label) for label in (labels or [""]))
    return keys


def _values(runs: pd.DataFrame, arm: str, label: str, column: str) -> np.ndarray:
    chosen = runs[(runs["arm"] == arm) & (runs["grid_label"] == label) & runs["included"]]
    return chosen[column].to_numpy(dtype=float)


def _summary_fields(prefix: str, s: Summary) -> dict[str, float]:
    return {
        f"{prefix}_n": s.n,
        f"{prefix}_mean": s.mean,
        f"{prefix}_std": s.std,
        f"{prefix}_ci_low": s.low,
        f"{prefix}_ci_high": s.high,
        f"{prefix}_ci_half_width": s.half_width,
    }


def _comparison_fields(prefix: str, c: Comparison, power: Power) -> dict[str, float]:
    return {
        f"{prefix}_delta": c.delta,
        f"{prefix}_delta_ci_low": c.low,
        f"{prefix}_delta_ci_high": c.high,
        f"{prefix}_delta_pct": c.delta_pct,
        f"{prefix}_delta_pct_ci_low": c.low_pct,
        f"{prefix}_delta_pct_ci_high": c.high_pct,
        f"{prefix}_p_value": c.p_value,
        f"{prefix}_welch_df": c.df,
        # What this comparison could see (80% power, two-sided 5%, pooled seed spread), and the
        # seeds per arm that would see 1% of the baseline mean.
        f"{prefix}_detectable": power.detectable,
        f"{prefix}_detectable_pct": power.detectable_pct,
        f"{prefix}_seeds_for_1pct": power.seeds_needed,
    }


def comparison_fields(prefix: str, values: np.ndarray, base: np.ndarray) -> dict[str, float]:
    """Welch difference of `values` over `base` with its interval and p-value, and its power."""
    return _comparison_fields(prefix, welch(values, base), power_of(values, base))


def summary_fields(prefix: str, values: np.ndarray) -> dict[str, float]:
    return _summary_fields(prefix, summarize(values))


def summary_frame(runs: pd.DataFrame, arms: list[str], baseline: str | None) -> pd.DataFrame:
    """One row per (arm, grid point): counts, loss summaries, Welch deltas vs the baseline arm
    at the same grid point, throughput and FLOPs per token."""
    rows = []
    for arm, label in group_keys(runs, arms):
        members = runs[(runs["arm"] == arm) & (runs["grid_label"] == label)]
        row: dict[str, object] = {
            "arm": arm,
            "grid_point": label,
            "is_baseline": arm == baseline,
            "n_runs": len(members),
            "n": int(members["included"].sum()) if len(members) else 0,
        }
        for column in LOSS_COLUMNS:
            values = _values(runs, arm, label, column)
            row.update(_summary_fields(column, summarize(values)))
            if baseline is not None:
                base = _values(runs, baseline, label, column)
                row.update(comparison_fields(column, values, base))
        for column in (TOKENS_PER_SEC, MFU, "flops_per_token", TOKENS_SEEN, FLOPS_SEEN):
            values = _values(runs, arm, label, column)
            values = values[np.isfinite(values)]
            row[f"{column}_mean"] = float(values.mean()) if values.size else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def matched_compute_frame(
    runs: pd.DataFrame, history: pd.DataFrame, arms: list[str], baseline: str | None
) -> pd.DataFrame:
    """Validation loss at equal tokens and at equal training FLOPs.

    Per grid point the budget is the largest one every included run reached (the minimum over
    runs of their last val step's tokens / FLOPs); each run's val curve is interpolated linearly
    at it. Runs whose first val point lies beyond the budget give no value there.
    """
    val = history[history["metric"] == VAL_LOSS]
    included_ids = set(runs.loc[runs["included"], "run_id"])
    val = val[val["run_id"].isin(included_ids)]
    rows = []
    for label in runs["grid_label"].drop_duplicates():
        point = val[val["grid_point"] == label]
        if point.empty:
            continue
        for axis in ("tokens", "flops"):
            budget = float(point.groupby("run_id")[axis].max().min())
            per_run: dict[str, float] = {}
            for run_id, curve in point.groupby("run_id"):
                curve = curve.sort_values(axis)
                x, y = curve[axis].to_numpy(float), curve["value"].to_numpy(float)
                per_run[run_id] = float(np.interp(budget, x, y)) if x[0] <= budget else math.nan
            arm_of = runs.set_index("run_id")["arm"]
            by_arm = {
                arm: np.array([v for rid, v in per_run.items() if arm_of[rid] == arm])
                for arm in arms
            }
            for arm in arms:
                if arm not in by_arm or by_arm[arm].size == 0:
                    continue
                row: dict[str, object] = {
                    "arm": arm, "grid_point": label, "matched": axis, "budget": budget,
                    "is_baseline": arm == baseline,
                }
                row.update(_summary_fields(VAL_LOSS, summarize(by_arm[arm])))
                if baseline is not None and baseline in by_arm:
                    row.update(comparison_fields(VAL_LOSS, by_arm[arm], by_arm[baseline]))
                rows.append(row)
    return pd.DataFrame(rows)


# ---- formatting ---------------------------------------------------------------------------

def fmt_number(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def fmt_si(value: float) -> str:
    """1.23e9 -> '1.23 G' (for tokens/s and FLOPs)."""
    if value is None or not math.isfinite(value):
        return "—"
    for factor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {suffix}"
    return f"{value:.3g}"


def fmt_mean_ci(row: pd.Series, prefix: str, digits: int = 4) -> str:
    n = int(row[f"{prefix}_n"])
    if n == 0:
        return "no value"
    mean = fmt_number(float(row[f"{prefix}_mean"]), digits)
    half = float(row[f"{prefix}_ci_half_width"])
    if n < 2 or not math.isfinite(half):
        return f"{mean} (n=1, no interval)"
    return f"{mean} ± {fmt_number(half, digits)}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_delta(row: pd.Series, prefix: str, digits: int = 4) -> tuple[str, str, str]:
    """(absolute delta [CI], percent delta [CI], p) cells."""
    if row.get("is_baseline"):
        return "baseline", "baseline", "—"
    delta = float(row.get(f"{prefix}_delta", math.nan))
    if not math.isfinite(delta):
        return "—", "—", "—"
    low, high = float(row[f"{prefix}_delta_ci_low"]), float(row[f"{prefix}_delta_ci_high"])
    pct = float(row[f"{prefix}_delta_pct"])
    if math.isfinite(low):
        absolute = f"{delta:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
        lo_pct, hi_pct = row[f"{prefix}_delta_pct_ci_low"], row[f"{prefix}_delta_pct_ci_high"]
        percent = f"{pct:+.2f}% [{lo_pct:+.2f}, {hi_pct:+.2f}]"
    else:
        absolute = f"{delta:+.{digits}f} (no interval: n<2)"
        percent = f"{pct:+.2f}%"
    return absolute, percent, fmt_p(float(row[f"{prefix}_p_value"]))


def no_difference(row: pd.Series, prefix: str) -> bool:
    """The comparison's interval contains 0 (a "no difference" result)."""
    low = float(row.get(f"{prefix}_delta_ci_low", math.nan))
    high = float(row.get(f"{prefix}_delta_ci_high", math.nan))
    return math.isfinite(low) and math.isfinite(high) and low <= 0 <= high


def fmt_seeds(row: pd.Series, prefix: str) -> str:
    """Seeds per arm to detect 1% of the baseline, for a "no difference" result; "—" otherwise."""
    if row.get("is_baseline") or not no_difference(row, prefix):
        return "—"
    seeds = float(row.get(f"{prefix}_seeds_for_1pct", math.nan))
    return f"{seeds:.0f}" if math.isfinite(seeds) else f"> {MAX_SEEDS:,}"


def fmt_detectable(row: pd.Series, prefix: str, digits: int = 4) -> str:
    """The smallest difference this comparison detects at 80% power: absolute (% of baseline)."""
    if row.get("is_baseline"):
        return "—"
    absolute = float(row.get(f"{prefix}_detectable", math.nan))
    if not math.isfinite(absolute):
        return "— (n<2)"
    return f"{absolute:.{digits}f} ({float(row[f'{prefix}_detectable_pct']):.2f}%)"


def summary_markdown_rows(summary: pd.DataFrame, has_grid: bool) -> tuple[list[str], list[list]]:
    header = ["arm"] + (["grid point"] if has_grid else []) + [
        "n", "final train", "final val", "best val", "Δ final val", "Δ final val %",
        "p (Welch)", "tokens/s", "FLOPs/token",
    ]
    rows = []
    for _, row in summary.iterrows():
        n_text = f"{row['n']}" + (f" of {row['n_runs']}" if row["n_runs"] != row["n"] else "")
        absolute, percent, p = fmt_delta(row, FINAL_VAL_LOSS)
        rows.append(
            [f"**{row['arm']}**" if row["is_baseline"] else row["arm"]]
            + ([row["grid_point"]] if has_grid else [])
            + [
                n_text,
                fmt_mean_ci(row, FINAL_TRAIN_LOSS),
                fmt_mean_ci(row, FINAL_VAL_LOSS),
                fmt_mean_ci(row, BEST_VAL_LOSS),
                absolute, percent, p,
                fmt_si(row["tokens_per_sec_mean"]),
                fmt_si(row["flops_per_token_mean"]),
            ]
        )
    return header, rows


def deltas_markdown_rows(summary: pd.DataFrame, has_grid: bool) -> tuple[list[str], list[list]]:
    header = ["arm"] + (["grid point"] if has_grid else []) + [
        "metric", "arm mean", "baseline mean", "Δ [95% CI]", "Δ % [95% CI]", "p (Welch)",
        "detectable Δ (80% power)", "seeds/arm for 1%",
    ]
    rows = []
    base_means = {
        (r["grid_point"], c): r[f"{c}_mean"]
        for _, r in summary[summary["is_baseline"]].iterrows() for c in LOSS_COLUMNS
    }
    for _, row in summary[~summary["is_baseline"]].iterrows():
        for column in LOSS_COLUMNS:
            absolute, percent, p = fmt_delta(row, column)
            rows.append(
                [row["arm"]] + ([row["grid_point"]] if has_grid else []) + [
                    LOSS_TITLES[column],
                    fmt_number(row[f"{column}_mean"]),
                    fmt_number(base_means.get((row["grid_point"], column), math.nan)),
                    absolute, percent, p, fmt_detectable(row, column), fmt_seeds(row, column),
                ]
            )
    return header, rows


def matched_markdown_rows(matched: pd.DataFrame, has_grid: bool) -> tuple[list[str], list[list]]:
    header = ["matched on", "budget"] + (["grid point"] if has_grid else []) + [
        "arm", "val loss", "Δ vs baseline [95% CI]", "Δ %", "p (Welch)",
        "detectable Δ (80% power)",
    ]
    rows = []
    for _, row in matched.iterrows():
        absolute, percent, p = fmt_delta(row, VAL_LOSS)
        rows.append(
            ["tokens" if row["matched"] == "tokens" else "training FLOPs", fmt_si(row["budget"])]
            + ([row["grid_point"]] if has_grid else [])
            + [
                f"**{row['arm']}**" if row["is_baseline"] else row["arm"],
                fmt_mean_ci(row, VAL_LOSS), absolute, percent, p, fmt_detectable(row, VAL_LOSS),
            ]
        )
    return header, rows


def runs_markdown_rows(runs: pd.DataFrame, has_grid: bool) -> tuple[list[str], list[list]]:
    header = ["run", "arm"] + (["grid point"] if has_grid else []) + [
        "seed", "status", "in aggregates", "final train", "final val", "best val", "tokens",
        "config hash",
    ]
    rows = []
    for _, row in runs.iterrows():
        status = row["status"]
        if row["failure_reason"]:
            reason = str(row["failure_reason"]).strip().splitlines()[0]
            status = f"{status}: {reason[:120]}{'…' if len(reason) > 120 else ''}"
        rows.append(
            [row["run_name"], row["arm"]] + ([row["grid_label"]] if has_grid else []) + [
                "—" if row["seed"] is None or pd.isna(row["seed"]) else int(row["seed"]),
                status,
                "yes" if row["included"] else f"no ({row['excluded_because']})",
                fmt_number(row[FINAL_TRAIN_LOSS]),
                fmt_number(row[FINAL_VAL_LOSS]),
                fmt_number(row[BEST_VAL_LOSS]),
                fmt_si(row[TOKENS_SEEN]),
                row["config_hash"],
            ]
        )
    return header, rows
