"""The README's Findings table, from the committed reports' tables (nothing typed by hand).

For every report under reports/: each arm against its baseline on the final validation loss (and
the final train loss), the same at equal FLOPs where the report has that comparison, and each
position class's validation loss where the dataset labels classes. Verdicts: a claims-check
verdict (in bold) where the report checks a claim on that arm and metric; otherwise "lower" /
"higher" when the 95% interval excludes 0, else "no difference (detects ±X%)".

    python scripts/findings.py            # prints the Markdown table
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

REPORTS = Path(__file__).resolve().parents[1] / "reports"


def pct(value: float) -> str:
    return f"{value:+.1f}%"


def delta_cell(row: pd.Series, prefix: str) -> str:
    low, high = row[f"{prefix}_delta_pct_ci_low"], row[f"{prefix}_delta_pct_ci_high"]
    if math.isnan(low):
        return pct(row[f"{prefix}_delta_pct"])
    return f"{pct(row[f'{prefix}_delta_pct'])} [{pct(low)}, {pct(high)}]"


def verdict(row: pd.Series, prefix: str, claimed: str | None) -> str:
    if claimed:
        return f"**{claimed}** (claim)"
    low, high = row[f"{prefix}_delta_pct_ci_low"], row[f"{prefix}_delta_pct_ci_high"]
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return f"no difference (detects ±{row[f'{prefix}_detectable_pct']:.1f}%)"


def claim_verdicts(tables: Path) -> dict[tuple[str, str], str]:
    """(arm, metric) -> the claims check's verdict, for metrics val_loss and train_loss."""
    path = tables / "claims.csv"
    if not path.exists():
        return {}
    claims = pd.read_csv(path)
    return {(arm, metric): v for arm, metric, v in zip(
        claims["claim_arm"], claims["claim_metric"], claims["verdict"], strict=True)}


def rows_of(report: Path) -> list[list[str]]:
    tables = report / "tables"
    claims = claim_verdicts(tables)
    link = f"[{report.name}](reports/{report.name}/report.md)"
    rows = []
    summary = pd.read_csv(tables / "summary.csv")
    for _, row in summary[~summary["is_baseline"]].iterrows():
        point = f" ({row['grid_point']})" if isinstance(row["grid_point"], str) else ""
        arm = f"{row['arm']}{point}"
        for prefix, metric, claim in (
                ("final_val_loss", "val loss", claims.get((row["arm"], "val_loss"))),
                ("final_train_loss", "train loss", claims.get((row["arm"], "train_loss")))):
            rows.append([link, arm, metric, delta_cell(row, prefix),
                         f"{row[f'{prefix}_detectable_pct']:.1f}%", verdict(row, prefix, claim)])
    matched = tables / "matched_compute.csv"
    if matched.exists():
        frame = pd.read_csv(matched)
        for _, row in frame[(frame["matched"] == "flops") & ~frame["is_baseline"]].iterrows():
            rows.append([link, row["arm"], "val loss at equal FLOPs", delta_cell(row, "val_loss"),
                         f"{row['val_loss_detectable_pct']:.1f}%", verdict(row, "val_loss", None)])
    classes = tables / "val_loss_by_class.csv"
    if classes.exists():
        frame = pd.read_csv(classes)
        for _, row in frame[~frame["is_baseline"]].iterrows():
            rows.append([link, row["arm"], f"val loss on {row['class']} positions",
                         delta_cell(row, "val_loss"), f"{row['val_loss_detectable_pct']:.1f}%",
                         verdict(row, "val_loss", None)])
    return rows


def main() -> None:
    header = ["study", "arm", "metric", "Δ vs baseline [95% CI]", "detectable Δ (80% power)",
              "verdict"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for report in sorted(p for p in REPORTS.iterdir() if (p / "tables" / "summary.csv").exists()):
        for row in rows_of(report):
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
