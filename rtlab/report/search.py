"""The report's Search section: how each arm was tuned, from the `search.json` that `rtlab run`
logs on a searched experiment's parent run (rtlab.sweep.search_summary).

Per arm (and grid point): the budget (trials done of the budget, completed / pruned / failed,
optimizer steps and training FLOPs spent), the best configuration and its objective, and a flag
where a best value sits at the edge of its search range (the optimum may lie outside it). Two
figures, all arms on each: the objective against every searched parameter, and the optimisation
history. The comparisons elsewhere in the report use the confirm runs only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rtlab.report import document as doc
from rtlab.report.figures import DPI, FigureFile, arm_colours

EDGE_SHARE = 0.05  # a best value within 5% of the range (log scale for log ranges) of an end
MAX_PANELS_PER_ROW = 3


@dataclass
class SearchSection:
    blocks: list[doc.Block] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)


def _counted(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials that spend the budget (not those of dead workers, which ran again)."""
    return [t for t in study["trials"] if t["counted"] and 0 <= t["slot"] < study["budget"]]


def edge_flags(study: dict[str, Any]) -> list[str]:
    """'train.learning_rate at the high end (0.03 of [0.001, 0.03])' for each numeric parameter
    whose best value lies within EDGE_SHARE of an end of its range."""
    best = study.get("best")
    if not best:
        return []
    flags = []
    for key, spec in study["params"].items():
        value = best["params"].get(key)
        if spec["type"] == "categorical" or not isinstance(value, int | float):
            continue
        low, high = float(spec["low"]), float(spec["high"])
        if spec.get("log"):
            low, high, at = math.log(low), math.log(high), math.log(float(value))
        else:
            at = float(value)
        share = (at - low) / (high - low) if high > low else 0.5
        if share <= EDGE_SHARE or share >= 1 - EDGE_SHARE:
            end = "low" if share <= EDGE_SHARE else "high"
            flags.append(f"{key} at the {end} end ({_number(value)} of "
                         f"[{_number(spec['low'])}, {_number(spec['high'])}])")
    return flags


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def study_rows(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per study: budget, what was spent, the best configuration, edge flags."""
    rows = []
    for study in summary["studies"]:
        counted = _counted(study)
        states = [t["state"] for t in counted]
        full = max((t["steps"] for t in counted if t["state"] == "complete"), default=0)
        best = study.get("best") or {}
        rows.append({
            "arm": study["arm"], "label": study["label"], "study": study["study"],
            "budget": study["budget"], "done": sum(s != "running" for s in states),
            "complete": states.count("complete"), "pruned": states.count("pruned"),
            "failed": states.count("failed"),
            "steps": sum(t["steps"] for t in counted),
            "steps_unpruned": full * len(counted),
            "flops": sum(t["flops"] for t in counted),
            "best_trial": best.get("number"), "best_value": best.get("value"),
            "best_params": json.dumps(best.get("params", {}), sort_keys=True),
            "edge": "; ".join(edge_flags(study)),
            "sample_seconds": sum(t["sample_seconds"] or 0.0 for t in counted),
            "trial_seconds": sum(t["seconds"] or 0.0 for t in counted),
        })
    return pd.DataFrame(rows)


def trial_rows(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for study in summary["studies"]:
        for t in study["trials"]:
            rows.append({"study": study["study"], "arm": study["arm"], "number": t["number"],
                         "slot": t["slot"], "state": t["state"], "counted": t["counted"],
                         "value": t["value"], **{f"param {k}": v for k, v in t["params"].items()},
                         "steps": t["steps"], "flops": t["flops"], "seconds": t["seconds"],
                         "sample_seconds": t["sample_seconds"],
                         "duplicate_of": t["duplicate_of"], "resume_of": t["resume_of"],
                         "failure_reason": t["failure_reason"]})
    return pd.DataFrame(rows)


def search_section(summary: dict[str, Any], arms: list[str], baseline: str | None,
                   work_dir: Path) -> SearchSection:
    """Blocks, figures and tables of the Search section (written under work_dir)."""
    section = SearchSection()
    studies = summary.get("studies") or []
    if not studies:
        return section
    frame = study_rows(summary)
    tables_dir = work_dir / "tables"
    tables_dir.mkdir(parents=True, exist_ok=True)
    section.tables = [tables_dir / "search.csv", tables_dir / "trials.csv"]
    frame.to_csv(section.tables[0], index=False)
    trial_rows(summary).to_csv(section.tables[1], index=False)
    colours = arm_colours(arms + [s["arm"] for s in studies if s["arm"] not in arms], baseline)
    (work_dir / "figures").mkdir(parents=True, exist_ok=True)
    section.figures = [objective_figure(studies, colours, work_dir),
                       history_figure(studies, colours, work_dir)]
    section.blocks = _blocks(studies, frame, section.figures)
    return section


def _blocks(studies: list[dict[str, Any]], frame: pd.DataFrame,
            figures: list[FigureFile]) -> list[doc.Block]:
    first = studies[0]
    seeds = ", ".join(map(str, first["tune_seeds"]))
    confirm = ", ".join(map(str, first["confirm_seeds"]))
    longer = (f", {first['confirm_max_iters']} steps" if first.get("confirm_max_iters")
              else "")
    blocks: list[doc.Block] = [doc.Heading(2, "Search"), doc.Paragraph(
        f"Each arm was tuned in its own study on the same budget of {first['budget']} trials "
        f"with the same sampler ({first['sampler']['type']}, seed {first['sampler']['seed']}) and "
        f"pruner ({first['pruner']['type']}), on tuning seed(s) {seeds}; the objective is the "
        f"{first['objective'].replace('_', ' ')}. Each arm's best configuration was then rerun "
        f"on seed(s) {confirm}{longer}: those confirm runs, and only they, make every other "
        "table and figure of this report.")]
    header = ["arm", "trials (done / budget)", "completed / pruned / failed", "steps",
              "training FLOPs", "best objective (trial)", "best configuration"]
    rows = []
    for _, row in frame.iterrows():
        saved = (f" ({1 - row['steps'] / row['steps_unpruned']:.0%} fewer than unpruned)"
                 if row["steps_unpruned"] else "")
        best = ("—" if row["best_value"] is None or pd.isna(row["best_value"])
                else f"{row['best_value']:.4f} (#{int(row['best_trial'])})")
        params = json.loads(row["best_params"])
        rows.append([row["label"], f"{row['done']} / {row['budget']}",
                     f"{row['complete']} / {row['pruned']} / {row['failed']}",
                     f"{row['steps']:,}{saved}", f"{row['flops']:.3g}", best,
                     ", ".join(f"{k} = {_number(v)}" for k, v in params.items()) or "—"])
    blocks.append(doc.Table(header, rows, (
        "Budget spent per arm: trials that completed, were pruned at an evaluation (their "
        "steps count up to that evaluation), or failed; trials of dead or stopped workers ran "
        "again and count once."), "tables/search.csv"))
    flags = [f"**{row['label']}**: best {row['edge']}: the optimum may lie outside the range"
             for _, row in frame.iterrows() if row["edge"]]
    blocks.append(doc.Bullets(flags or ["No arm's best value sits at the edge of its range."]))
    for number, figure in enumerate(figures, start=1):
        blocks.append(doc.Figure(figure.png, f"figures/{figure.png.name}",
                                 f"Search figure {number}: {figure.title}",
                                 f"Search figure {number}. {figure.caption} (SVG: figures/"
                                 f"{figure.svg.name}; every trial in tables/trials.csv)"))
    return blocks


def _last_intermediate(trial: dict[str, Any]) -> float | None:
    return trial["intermediate"][-1][1] if trial["intermediate"] else None


def _save(fig: plt.Figure, work_dir: Path, stem: str, title: str, caption: str) -> FigureFile:
    fig.suptitle(title, fontsize=12)
    png, svg = work_dir / "figures" / f"{stem}.png", work_dir / "figures" / f"{stem}.svg"
    fig.savefig(png, dpi=DPI)
    fig.savefig(svg)
    width, height = fig.get_size_inches()
    plt.close(fig)
    return FigureFile(stem, title, caption, png, svg, (round(width * DPI), round(height * DPI)))


def objective_figure(studies: list[dict[str, Any]], colours: dict[str, str],
                     work_dir: Path) -> FigureFile:
    """The objective against each searched parameter, every arm in every panel."""
    keys = list(studies[0]["params"])
    ncols = min(len(keys), MAX_PANELS_PER_ROW)
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False,
                             constrained_layout=True)
    for ax, key in zip(axes.flat, keys, strict=False):
        spec = studies[0]["params"][key]
        choices = spec.get("choices") or []
        for study in studies:
            _param_points(ax, study, key, choices, colours.get(study["arm"], "#555555"))
        if spec.get("log"):
            ax.set_xscale("log")
        if choices:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        ax.set_xlabel(key)
        ax.set_ylabel(studies[0]["objective"].replace("_", " "))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        axes.flat[0].legend(handles, labels, fontsize=8)
    caption = ("Objective of every completed trial (dots) against each searched parameter, all "
               "arms; pruned trials (crosses) at the validation loss that pruned them; the star "
               "is each arm's best, the configuration its confirm runs use. Differing optima "
               "between arms show as stars at different places.")
    return _save(fig, work_dir, "search_objective_vs_params", "Objective against each searched "
                 "parameter", caption)


def _param_points(ax: plt.Axes, study: dict[str, Any], key: str, choices: list[Any],
                  colour: str) -> None:
    def x_of(value: Any) -> Any:
        return choices.index(value) if choices else value

    done = [t for t in _counted(study) if key in t["params"]]
    complete = [t for t in done if t["state"] == "complete" and t["value"] is not None]
    pruned = [t for t in done if t["state"] == "pruned" and _last_intermediate(t) is not None]
    ax.scatter([x_of(t["params"][key]) for t in complete], [t["value"] for t in complete],
               color=colour, s=22, alpha=0.8, label=study["label"])
    ax.scatter([x_of(t["params"][key]) for t in pruned], [_last_intermediate(t) for t in pruned],
               color=colour, marker="x", s=22, alpha=0.5)
    best = study.get("best")
    if best and key in best["params"]:
        ax.scatter([x_of(best["params"][key])], [best["value"]], color=colour, marker="*",
                   s=180, edgecolors="black", linewidths=0.8, zorder=6)


def history_figure(studies: list[dict[str, Any]], colours: dict[str, str],
                   work_dir: Path) -> FigureFile:
    """Objective by trial, with each arm's best so far."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    for study in studies:
        colour = colours.get(study["arm"], "#555555")
        trials = sorted(_counted(study), key=lambda t: t["number"])
        order = np.arange(len(trials))
        values = [t["value"] if t["state"] == "complete" else None for t in trials]
        xs = [i for i, v in zip(order, values, strict=True) if v is not None]
        ys = [v for v in values if v is not None]
        ax.scatter(xs, ys, color=colour, s=18, alpha=0.7)
        best, running = [], math.inf
        for value in values:
            running = min(running, value) if value is not None else running
            best.append(running if math.isfinite(running) else np.nan)
        ax.step(order, best, where="post", color=colour, linewidth=1.8, label=study["label"])
        pruned = [(i, _last_intermediate(t)) for i, t in zip(order, trials, strict=True)
                  if t["state"] == "pruned" and _last_intermediate(t) is not None]
        if pruned:
            ax.scatter(*zip(*pruned, strict=True), color=colour, marker="x", s=18, alpha=0.4)
    ax.set_xlabel("trial (in the order the study ran them)")
    ax.set_ylabel(studies[0]["objective"].replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    caption = ("Optimisation history per arm: each completed trial's objective (dots), pruned "
               "trials at the loss that pruned them (crosses), and the best so far (line).")
    return _save(fig, work_dir, "search_history", "Optimisation history", caption)
