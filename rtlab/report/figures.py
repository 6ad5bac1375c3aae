"""The six figures: PNG (150 dpi, fixed pixel size) and SVG, one colour per arm everywhere.

Curves are means over the included seeds at each step with a 95% t-band (no band where n < 2).
The baseline arm is drawn in near-black, thicker and on top, so every other arm reads against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from rtlab.track.names import (
    BEST_VAL_LOSS,
    CLASS_VAL_LOSS_PREFIX,
    FINAL_VAL_LOSS,
    MFU,
    TOKENS_PER_SEC,
    TRAIN_LOSS,
    VAL_LOSS,
)

DPI = 150
BASELINE_COLOUR = "#1a1a1a"
# Colour-blind-friendly cycle (Okabe-Ito without black).
ARM_COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442"]
MAX_GRID_PANELS = 4


@dataclass(frozen=True)
class FigureFile:
    stem: str
    title: str
    caption: str
    png: Path
    svg: Path
    size_px: tuple[int, int]


def arm_colours(arms: list[str], baseline: str | None) -> dict[str, str]:
    colours, others = {}, iter(ARM_COLOURS * (1 + len(arms) // len(ARM_COLOURS)))
    for arm in arms:
        colours[arm] = BASELINE_COLOUR if arm == baseline else next(others)
    return colours


def _style(arm: str, baseline: str | None) -> dict:
    if arm == baseline:
        return {"linewidth": 2.6, "zorder": 5}
    return {"linewidth": 1.6, "zorder": 3}


def band_frame(curves: pd.DataFrame, x_axis: str = "step") -> pd.DataFrame:
    """Per step: mean x, mean value, 95% t-band over runs (NaN band where n < 2)."""
    grouped = curves.groupby("step")
    out = pd.DataFrame({
        "x": grouped[x_axis].mean(),
        "mean": grouped["value"].mean(),
        "std": grouped["value"].std(ddof=1),
        "n": grouped["value"].count(),
    }).reset_index()
    n = out["n"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_quantile = np.where(n >= 2, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
        half = t_quantile * out["std"].to_numpy(float) / np.sqrt(n)
    out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


class FigureMaker:
    def __init__(
        self,
        runs: pd.DataFrame,
        history: pd.DataFrame,
        arms: list[str],
        baseline: str | None,
        out_dir: Path,
        objective: str = FINAL_VAL_LOSS,
    ) -> None:
        self.runs, self.arms, self.baseline = runs, arms, baseline
        included = set(runs.loc[runs["included"], "run_id"])
        self.history = history[history["run_id"].isin(included)]
        self.excluded_history = history[~history["run_id"].isin(included)]
        self.colours = arm_colours(arms, baseline)
        self.out_dir = out_dir
        self.objective = objective
        self.grid_labels = [label for label in runs["grid_label"].drop_duplicates() if label]
        self.panels = self._panels()
        self.seed_note = self._seed_note()
        self._band_lows: dict[int, list[float]] = {}  # per axes, for the y-range

    def _panels(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Curve panels: one per grid point when few, else each arm at its best grid point."""
        if not self.grid_labels:
            return [("", [(arm, "") for arm in self.arms])]
        if len(self.grid_labels) <= MAX_GRID_PANELS:
            return [(label, [(arm, label) for arm in self.arms]) for label in self.grid_labels]
        chosen = self.runs[self.runs["included"]]
        best = chosen.groupby(["arm", "grid_label"])[self.objective].mean()
        pairs = []
        for arm in self.arms:
            if arm in best.index.get_level_values(0):
                pairs.append((arm, str(best.loc[arm].idxmin())))
        return [(f"each arm at its best grid point (by mean {self.objective})", pairs)]

    def _seed_note(self) -> str:
        """Say why bands are wide when few seeds make the t quantile large."""
        counts = self.runs[self.runs["included"]].groupby(["arm", "grid_label"]).size()
        if counts.empty or counts.min() > 3:
            return ""
        n = int(counts.min())
        if n < 2:
            return " Some arms have a single finished seed: no band for them."
        return (f" With {n} seeds the band is wide by construction "
                f"(t quantile {stats.t.ppf(0.975, n - 1):.1f}).")

    def _label(self, arm: str, grid: str, many: bool) -> str:
        return f"{arm} ({grid})" if many and grid else arm

    def _save(
        self, fig: plt.Figure, stem: str, title: str, caption: str
    ) -> FigureFile:
        fig.suptitle(title, fontsize=12)
        figures_dir = self.out_dir / "figures"
        png, svg = figures_dir / f"{stem}.png", figures_dir / f"{stem}.svg"
        fig.savefig(png, dpi=DPI)
        fig.savefig(svg)
        width, height = fig.get_size_inches()
        plt.close(fig)
        return FigureFile(
            stem, title, caption, png, svg, (round(width * DPI), round(height * DPI))
        )

    def _curve(
        self, ax: plt.Axes, metric: str, arm: str, grid: str, x_axis: str, label: str,
        frame: pd.DataFrame | None = None,
    ) -> bool:
        source = self.history if frame is None else frame
        curves = source[
            (source["metric"] == metric) & (source["arm"] == arm) & (source["grid_point"] == grid)
        ]
        if curves.empty:
            return False
        band = band_frame(curves, x_axis)
        colour = self.colours[arm]
        ax.plot(band["x"], band["mean"], color=colour, label=label, **_style(arm, self.baseline))
        ax.fill_between(band["x"], band["low"], band["high"], color=colour, alpha=0.18,
                        linewidth=0)
        lows = band["low"].to_numpy(float)
        if np.isfinite(lows).any():
            self._band_lows.setdefault(id(ax), []).append(float(np.nanmin(lows)))
        return True

    def _focus_loss_axis(self, ax: plt.Axes) -> None:
        """Start the y-axis below the first tenth of training, where the initial loss
        (~ln vocab) would otherwise squash the differences that matter."""
        tops, bottoms = [], []
        for line in ax.get_lines():
            if line.get_gid() == "unfinished":
                continue
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            keep = np.isfinite(y) & (x >= x.min() + 0.10 * (x.max() - x.min())) if x.size else []
            if np.any(keep):
                tops.append(y[keep].max())
                bottoms.append(y[np.isfinite(y)].min())
        if tops:
            low, high = min(bottoms), max(tops)
            span = high - low if high > low else 0.05 * abs(high) + 1e-3
            # Show the bands below the lowest mean too, but not so far that a wide band from
            # few seeds flattens the curves.
            band_low = min(self._band_lows.get(id(ax), [low]))
            low = max(min(low, band_low), low - 0.5 * span)
            margin = 0.05 * (high - low) if high > low else span
            ax.set_ylim(low - margin, high + margin)

    def _finish_axes(self, ax: plt.Axes, xlabel: str, ylabel: str, title: str = "") -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)

    def _empty(self, ax: plt.Axes, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")

    # ---- 1 -----------------------------------------------------------------------------
    def loss_vs_step(self) -> FigureFile:
        columns = len(self.panels)
        fig, axes = plt.subplots(2, columns, figsize=(6.4 * columns, 7.6), squeeze=False,
                                 layout="constrained")
        for col, (panel_title, pairs) in enumerate(self.panels):
            for row, metric in enumerate((TRAIN_LOSS, VAL_LOSS)):
                ax = axes[row][col]
                drawn = False
                for arm, grid in pairs:
                    drawn |= self._curve(ax, metric, arm, grid, "step",
                                         self._label(arm, grid, len(self.panels) == 1))
                    # Unfinished runs: their own curves, dotted, never averaged.
                    stray = self.excluded_history[
                        (self.excluded_history["metric"] == metric)
                        & (self.excluded_history["arm"] == arm)
                        & (self.excluded_history["grid_point"] == grid)
                    ]
                    for _, curve in stray.groupby("run_id"):
                        ax.plot(curve["step"], curve["value"], color=self.colours[arm],
                                linestyle=":", linewidth=1.0, alpha=0.8, gid="unfinished")
                if drawn:
                    self._focus_loss_axis(ax)
                else:
                    self._empty(ax, f"no {metric} logged")
                self._finish_axes(ax, "optimizer step", metric.replace("_", " "),
                                  panel_title if row == 0 else "")
            _legend(axes[0][col])
        has_stray = not self.excluded_history.empty
        caption = (
            "Train (top) and validation (bottom) loss against optimizer step: mean over seeds, "
            "shaded 95% t-interval (none where a single seed); the y-axis starts after the "
            "first tenth of training."
            + (" Dotted: runs that did not finish, not in any average." if has_stray else "")
            + self.seed_note
        )
        return self._save(fig, "1_loss_vs_step", "Loss during training", caption)

    # ---- 2 -----------------------------------------------------------------------------
    def val_vs_compute(self) -> FigureFile:
        columns = len(self.panels)
        fig, axes = plt.subplots(2, columns, figsize=(6.4 * columns, 7.6), squeeze=False,
                                 layout="constrained")
        for col, (panel_title, pairs) in enumerate(self.panels):
            for row, (x_axis, xlabel) in enumerate(
                (("tokens", "tokens seen"), ("flops", "training FLOPs"))
            ):
                ax = axes[row][col]
                drawn = False
                for arm, grid in pairs:
                    drawn |= self._curve(ax, VAL_LOSS, arm, grid, x_axis,
                                         self._label(arm, grid, len(self.panels) == 1))
                if drawn:
                    self._focus_loss_axis(ax)
                else:
                    self._empty(ax, "no val_loss logged")
                self._finish_axes(ax, xlabel, "val loss", panel_title if row == 0 else "")
            _legend(axes[0][col])
        caption = (
            "Validation loss against tokens seen (top) and against training FLOPs (bottom, the "
            "compute-matched view: reasoning slots cost extra FLOPs per token). Mean and 95% band."
            + self.seed_note
        )
        return self._save(fig, "2_val_vs_compute", "Validation loss per token and per FLOP",
                          caption)

    # ---- 3 -----------------------------------------------------------------------------
    def final_and_best(self) -> FigureFile:
        """One slot per arm; with a grid, one group per grid point holding every arm."""
        groups = self.grid_labels or [""]
        n_arms = len(self.arms)
        slot = 0.8 / n_arms if self.grid_labels else 1.0
        width = (max(8.0, 1.0 + 0.9 * n_arms) if not self.grid_labels
                 else max(8.0, 1.0 + 0.35 * n_arms * len(groups)))
        fig, axes = plt.subplots(1, 2, figsize=(width, 4.8), layout="constrained")
        included = self.runs[self.runs["included"]]
        for ax, column, title in zip(
            axes, (FINAL_VAL_LOSS, BEST_VAL_LOSS), ("final val loss", "best val loss"),
            strict=True,
        ):
            for group_index, grid in enumerate(groups):
                for arm_index, arm in enumerate(self.arms):
                    position = (group_index + (arm_index - (n_arms - 1) / 2) * slot
                                if self.grid_labels else arm_index)
                    self._seed_points(ax, included, column, arm, grid, position, slot)
            if self.grid_labels:
                ax.set_xticks(range(len(groups)))
                ax.set_xticklabels(groups, fontsize=8, rotation=30 if len(groups) > 3 else 0,
                                   ha="right" if len(groups) > 3 else "center")
                handles = [plt.Line2D([], [], color=self.colours[a], marker="o", label=a)
                           for a in self.arms]
                ax.legend(handles=handles, fontsize=8)
            else:
                ax.set_xticks(range(n_arms))
                ax.set_xticklabels(self.arms, fontsize=8, rotation=30 if n_arms > 6 else 0)
                base = included.loc[included["arm"] == self.baseline, column].to_numpy(float)
                base = base[np.isfinite(base)]
                if base.size:
                    ax.axhline(base.mean(), color=BASELINE_COLOUR, linestyle="--", linewidth=0.8,
                               alpha=0.6)
            self._finish_axes(ax, "", title)
        caption = (
            "Final and best validation loss per arm"
            + (" and grid point" if self.grid_labels else "")
            + ": dots are seeds, the marker with bars is the mean with its 95% t-interval "
            "(hollow marker: one seed, no interval)"
            + ("." if self.grid_labels else "; dashed line: baseline mean.")
        )
        return self._save(fig, "3_final_best_val", "Final and best validation loss", caption)

    def _seed_points(
        self, ax: plt.Axes, included: pd.DataFrame, column: str, arm: str, grid: str,
        position: float, slot: float,
    ) -> None:
        values = included.loc[
            (included["arm"] == arm) & (included["grid_label"] == grid), column
        ].to_numpy(float)
        values = values[np.isfinite(values)]
        colour = self.colours[arm]
        if values.size == 0:
            ax.text(position, 0.5, "no runs", rotation=90, ha="center", va="center",
                    transform=ax.get_xaxis_transform(), color="0.4", fontsize=7)
            return
        spread = 0.12 * slot
        jitter = np.linspace(-spread, spread, values.size) if values.size > 1 else np.zeros(1)
        ax.scatter(position - 0.15 * slot + jitter, values, color=colour, s=12, alpha=0.6,
                   zorder=2)
        mean = values.mean()
        if values.size >= 2:
            half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(
                values.size)
            ax.errorbar(position + 0.2 * slot, mean, yerr=half, fmt="o", color=colour,
                        capsize=3, markersize=5, zorder=4,
                        linewidth=2.2 if arm == self.baseline else 1.4)
        else:
            ax.plot(position + 0.2 * slot, mean, "o", color=colour, markerfacecolor="white",
                    zorder=4)

    # ---- 4 -----------------------------------------------------------------------------
    def generalisation_gap(self) -> FigureFile:
        gaps = _gap_history(self.history)
        columns = len(self.panels)
        fig, axes = plt.subplots(1, columns, figsize=(6.4 * columns, 4.4), squeeze=False,
                                 layout="constrained")
        for col, (panel_title, pairs) in enumerate(self.panels):
            ax = axes[0][col]
            drawn = False
            for arm, grid in pairs:
                drawn |= self._curve(ax, "gap", arm, grid, "step",
                                     self._label(arm, grid, len(self.panels) == 1), frame=gaps)
            if drawn:
                ax.axhline(0, color="0.5", linewidth=0.8)
                _legend(ax)
            else:
                self._empty(ax, "needs both train_loss and val_loss")
            self._finish_axes(ax, "optimizer step", "val loss − train loss", panel_title)
        caption = (
            "Generalisation gap: validation minus train loss at each eval step (train loss "
            "interpolated to the eval step when logged at other steps), mean and 95% band."
            + self.seed_note
        )
        return self._save(fig, "4_generalisation_gap", "Generalisation gap", caption)

    # ---- 5 -----------------------------------------------------------------------------
    def grid_objective(self) -> FigureFile | None:
        grids = self.runs["grid"].tolist()
        keys = sorted({key for grid in grids for key in grid})
        if not keys:
            return None
        included = self.runs[self.runs["included"]]
        fig, axes = plt.subplots(1, len(keys), figsize=(5.6 * len(keys), 4.4), squeeze=False,
                                 layout="constrained")
        for ax, key in zip(axes[0], keys, strict=True):
            values = sorted({grid[key] for grid in grids if key in grid}, key=_sort_key)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            positions = {v: (v if numeric else i) for i, v in enumerate(values)}
            for arm in self.arms:
                rows = included[included["arm"] == arm]
                xs, means, halves = [], [], []
                for value in values:
                    chosen = rows[[grid.get(key) == value for grid in rows["grid"]]]
                    y = chosen[self.objective].to_numpy(float)
                    y = y[np.isfinite(y)]
                    if y.size == 0:
                        continue
                    ax.scatter([positions[value]] * y.size, y, color=self.colours[arm], s=10,
                               alpha=0.45)
                    xs.append(positions[value])
                    means.append(y.mean())
                    halves.append(
                        stats.t.ppf(0.975, y.size - 1) * y.std(ddof=1) / math.sqrt(y.size)
                        if y.size >= 2 else np.nan
                    )
                if xs:
                    ax.errorbar(xs, means, yerr=halves, color=self.colours[arm], marker="o",
                                capsize=3, label=arm, **_style(arm, self.baseline))
            if numeric and len(values) > 2 and min(values) > 0 and max(values) / min(values) > 20:
                ax.set_xscale("log")
            ax.set_xticks([positions[v] for v in values])
            ax.set_xticklabels([f"{v:g}" if numeric else str(v) for v in values])
            ax.minorticks_off()
            self._finish_axes(ax, key, self.objective.replace("_", " "))
            _legend(ax)
        others = "; with several swept keys each point pools the other keys' values" if len(
            keys) > 1 else ""
        caption = (
            f"{self.objective.replace('_', ' ')} against each swept value, per arm: dots are runs, "
            f"line is the mean with its 95% t-interval{others}."
        )
        return self._save(fig, "5_grid_objective", "Objective across the grid", caption)

    # ---- 6 -----------------------------------------------------------------------------
    def throughput(self) -> FigureFile:
        included = self.runs[self.runs["included"]]
        has_mfu = bool(np.isfinite(included[MFU].to_numpy(float)).any())
        panels = [(TOKENS_PER_SEC, "tokens / s")] + ([(MFU, "MFU")] if has_mfu else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 1.2 * len(self.arms) + 2)
                                                           * len(panels), 4.4),
                                 squeeze=False, layout="constrained")
        for ax, (column, ylabel) in zip(axes[0], panels, strict=True):
            for position, arm in enumerate(self.arms):
                values = included.loc[included["arm"] == arm, column].to_numpy(float)
                values = values[np.isfinite(values)]
                if values.size == 0:
                    continue
                ax.bar(position, values.mean(), color=self.colours[arm], alpha=0.75, width=0.6)
                ax.scatter(np.full(values.size, position), values, color="white",
                           edgecolor=self.colours[arm], s=16, zorder=3)
            ax.set_xticks(range(len(self.arms)))
            ax.set_xticklabels(self.arms, fontsize=8)
            self._finish_axes(ax, "", ylabel)
        caption = (
            "Throughput per arm: median logged tokens/s of each run after its first log point "
            "(warm-up), bar = mean over runs, dots = runs"
            + ("; MFU where the device peak is known." if has_mfu else
               "; no MFU was logged (device peak unknown, e.g. CPU).")
        )
        return self._save(fig, "6_throughput", "Throughput", caption)

    # ---- 7 -----------------------------------------------------------------------------
    def val_loss_by_class(self) -> FigureFile | None:
        """One column per position class, one row per curve panel; None without class losses."""
        metrics = sorted({str(m) for m in self.history["metric"].drop_duplicates()
                          if str(m).startswith(CLASS_VAL_LOSS_PREFIX)})
        if not metrics:
            return None
        rows, columns = len(self.panels), len(metrics)
        fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows),
                                 squeeze=False, layout="constrained")
        for row, (panel_title, pairs) in enumerate(self.panels):
            for col, metric in enumerate(metrics):
                ax = axes[row][col]
                drawn = False
                for arm, grid in pairs:
                    drawn |= self._curve(ax, metric, arm, grid, "step",
                                         self._label(arm, grid, len(self.panels) == 1))
                if drawn:
                    self._focus_loss_axis(ax)
                else:
                    self._empty(ax, f"no {metric} logged")
                title = metric[len(CLASS_VAL_LOSS_PREFIX):]
                self._finish_axes(ax, "optimizer step", "val loss",
                                  f"{title} ({panel_title})" if panel_title else title)
            _legend(axes[row][0])
        caption = (
            "Validation loss at each class of positions the dataset labels (one panel per "
            "class), against optimizer step: mean over seeds with a 95% t-band, on the same "
            "validation batches as the overall loss. Where an arm gains or loses."
            + self.seed_note
        )
        return self._save(fig, "7_val_loss_by_class", "Validation loss by position class",
                          caption)

    def all(self) -> list[FigureFile]:
        (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
        made = [self.loss_vs_step(), self.val_vs_compute(), self.final_and_best(),
                self.generalisation_gap()]
        grid_figure = self.grid_objective()
        if grid_figure is not None:
            made.append(grid_figure)
        made.append(self.throughput())
        by_class = self.val_loss_by_class()
        if by_class is not None:
            made.append(by_class)
        return made


def _legend(ax: plt.Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _sort_key(value: object) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _gap_history(history: pd.DataFrame) -> pd.DataFrame:
    """val - train at each val step of each run, train interpolated over its logged steps."""
    parts = []
    for _, own in history.groupby("run_id"):
        val = own[own["metric"] == VAL_LOSS].sort_values("step")
        train = own[own["metric"] == TRAIN_LOSS].sort_values("step")
        if val.empty or train.empty:
            continue
        train_at_val = np.interp(val["step"], train["step"], train["value"])
        gap = val.copy()
        gap["value"] = val["value"].to_numpy(float) - train_at_val
        gap["metric"] = "gap"
        parts.append(gap)
    return pd.concat(parts, ignore_index=True) if parts else history.iloc[0:0]
