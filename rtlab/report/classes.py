"""Validation loss by position class: where an arm gains or loses.

Datasets that sort positions into classes (the pre-caching tasks: `copy` / `needs_past`,
`other` / `answer`) make the trainer log `val_loss/<class>` next to `val_loss`, on the same
batches. Per run the class's value is its last logged point (the final evaluation); per arm, grid
point and class the table holds the mean over seeds and the Welch difference from the baseline arm
at the same grid point, with its power: exactly the numbers the overall loss gets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtlab.report.tables import (
    comparison_fields,
    fmt_delta,
    fmt_detectable,
    fmt_mean_ci,
    fmt_seeds,
    group_keys,
    summary_fields,
)
from rtlab.track.names import CLASS_VAL_LOSS_PREFIX, VAL_LOSS

PREFIX = VAL_LOSS  # the class table's column prefix: it holds validation losses


def class_metric(name: str) -> str:
    return CLASS_VAL_LOSS_PREFIX + name


def class_names(history: pd.DataFrame) -> list[str]:
    """The position classes any run logged a validation loss for, in name order."""
    metrics = history["metric"].drop_duplicates().astype(str)
    return sorted(m[len(CLASS_VAL_LOSS_PREFIX):] for m in metrics
                  if m.startswith(CLASS_VAL_LOSS_PREFIX))


def final_class_values(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """(run_id, arm, grid_label, class, value): each included run's last value of each class."""
    included = runs[runs["included"]]
    points = history[history["metric"].astype(str).str.startswith(CLASS_VAL_LOSS_PREFIX)
                     & history["run_id"].isin(included["run_id"])]
    last = points.sort_values("step").groupby(["run_id", "metric"]).tail(1)
    last = last.assign(**{"class": last["metric"].str[len(CLASS_VAL_LOSS_PREFIX):]})
    return last[["run_id", "class", "value"]].merge(
        included[["run_id", "arm", "grid_label"]], on="run_id")


def class_frame(
    runs: pd.DataFrame, history: pd.DataFrame, arms: list[str], baseline: str | None
) -> pd.DataFrame:
    """One row per (class, arm, grid point): final class loss over seeds and its difference from
    the baseline arm; empty when no run logged a class loss (the report then skips the section)."""
    names = class_names(history)
    if not names:
        return pd.DataFrame()
    finals = final_class_values(runs, history)

    def values(name: str, arm: str, label: str) -> np.ndarray:
        chosen = finals[(finals["class"] == name) & (finals["arm"] == arm)
                        & (finals["grid_label"] == label)]
        return chosen["value"].to_numpy(float)

    rows = []
    for name in names:
        for arm, label in group_keys(runs, arms):
            own = values(name, arm, label)
            row: dict[str, object] = {"class": name, "arm": arm, "grid_point": label,
                                      "is_baseline": arm == baseline,
                                      **summary_fields(PREFIX, own)}
            if baseline is not None:
                row.update(comparison_fields(PREFIX, own, values(name, baseline, label)))
            rows.append(row)
    return pd.DataFrame(rows)


def class_markdown_rows(frame: pd.DataFrame, has_grid: bool) -> tuple[list[str], list[list]]:
    header = ["class", "arm"] + (["grid point"] if has_grid else []) + [
        "final val loss", "Δ [95% CI]", "Δ % [95% CI]", "p (Welch)", "detectable Δ (80% power)",
        "seeds/arm for 1%",
    ]
    rows = []
    for _, row in frame.iterrows():
        absolute, percent, p = fmt_delta(row, PREFIX)
        rows.append(
            [row["class"], f"**{row['arm']}**" if row["is_baseline"] else row["arm"]]
            + ([row["grid_point"]] if has_grid else [])
            + [fmt_mean_ci(row, PREFIX), absolute, percent, p, fmt_detectable(row, PREFIX),
               fmt_seeds(row, PREFIX)]
        )
    return header, rows
