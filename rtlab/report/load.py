"""The tracking store -> pandas: the experiment's runs and their full metric histories.

Reads the experiment through `rtlab.track.records` (the schema in docs/ARCHITECTURE.md, "MLflow
schema"). Two frames come out:
- `runs`: one row per child run (identity, status, whether it enters the aggregates and why not,
  per-run summary values);
- `history`: the tidy frame, one row per (run, metric, step) with the tokens and FLOPs seen at that
  step, so every figure is a group-by on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rtlab.report.errors import ReportError
from rtlab.track.names import (
    ARM_TAG,
    BEST_VAL_LOSS,
    CHILD,
    FINAL_TRAIN_LOSS,
    FINAL_VAL_LOSS,
    FLOPS_PER_TOKEN_PARAM,
    FLOPS_SEEN,
    MFU,
    PARENT,
    ROLE_TAG,
    TOKENS_PER_SEC,
    TOKENS_SEEN,
    TRAIN_LOSS,
    TUNE,
    VAL_LOSS,
)
from rtlab.track.records import (
    ExperimentRecord,
    MetricPoint,
    RunRecord,
    experiment_names,
    metric_histories,
    read_experiment,
    read_search_summary,
)
from rtlab.track.store import local_store_path, resolve_tracking_uri, store_exists

FINISHED = "FINISHED"
# Per-run summary values: the metric logged once at the last step, else (metric, how) of the
# history it summarises.
SUMMARIES = (
    (FINAL_TRAIN_LOSS, TRAIN_LOSS, "last"),
    (FINAL_VAL_LOSS, VAL_LOSS, "last"),
    (BEST_VAL_LOSS, VAL_LOSS, "lowest"),
)
HISTORY_COLUMNS = [
    "run_id", "run_name", "arm", "grid_point", "seed", "step", "tokens", "flops", "metric", "value",
]
_NO_HISTORY = pd.DataFrame(columns=["run_id", "metric", "step", "value"])


@dataclass
class ExperimentData:
    """Everything the report needs from the tracking store, already tidied."""

    experiment: ExperimentRecord
    runs: pd.DataFrame
    history: pd.DataFrame
    messages: list[str] = field(default_factory=list)  # shown in the report's "Data notes"
    # A searched experiment: its tuning runs (left out of `runs`: every comparison uses the
    # confirm runs) and the search summary logged on the parent (rtlab.sweep.search_summary)
    tuning: tuple[RunRecord, ...] = ()
    search: dict[str, Any] | None = None

    @property
    def experiment_name(self) -> str:
        return self.experiment.name

    @property
    def experiment_id(self) -> str:
        return self.experiment.experiment_id

    @property
    def tracking_uri(self) -> str:
        return self.experiment.tracking_uri

    @property
    def parent_run(self) -> RunRecord | None:
        return self.experiment.parent


def check_store_exists(tracking_uri: str) -> None:
    """Refuse to read a local store that is not there: MLflow would silently create an empty one."""
    if not store_exists(tracking_uri):
        raise ReportError(
            f"no MLflow store at {tracking_uri} ({local_store_path(tracking_uri)} does not exist); "
            "pass --tracking-uri or run `rtlab run` first"
        )


def grid_label(grid_point: dict) -> str:
    """'k=v, k2=v2' with the last dotted component of each key; '' for no grid."""
    return ", ".join(f"{key.split('.')[-1]}={value}" for key, value in grid_point.items())


def _to_float(raw: str | None) -> float:
    try:
        return float(raw) if raw is not None else math.nan
    except ValueError:
        return math.nan


def _series(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    return frame[frame["metric"] == metric].sort_values("step")


def _steady_median(values: np.ndarray) -> float:
    """Median throughput, skipping the first logged value (warm-up/compile) when there are more."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan
    return float(np.median(values[1:] if values.size > 2 else values))


def _summary_value(
    latest: dict[str, float], own: pd.DataFrame, key: str, fallback_metric: str, how: str
) -> tuple[float, bool]:
    """The once-logged summary metric, else the last/lowest value of its history.

    Returns (value, whether the fallback was used)."""
    if key in latest and math.isfinite(latest[key]):
        return float(latest[key]), False
    series = _series(own, fallback_metric)["value"].to_numpy(dtype=float) if len(own) else None
    if series is None:
        return math.nan, False
    series = series[np.isfinite(series)]
    if series.size == 0:
        return math.nan, False
    return float(series[-1] if how == "last" else series.min()), True


def _tokens_per_step(params: dict[str, str]) -> float:
    batch = _to_float(params.get("train.batch_size"))
    accum = _to_float(params.get("train.grad_accum", "1"))
    block = _to_float(params.get("model.block_size"))
    return batch * accum * block


def load_experiment(experiment_name: str, tracking_uri: str | None) -> ExperimentData:
    """Read one experiment's parent and child runs; raise ReportError when there is nothing."""
    # The tracker's resolution, so `rtlab report` reads the store `rtlab run` wrote.
    uri = resolve_tracking_uri(tracking_uri)
    experiment = _read_experiment(experiment_name, uri)
    messages = _parent_notes(experiment)
    children, tuning, search = _split_search(uri, experiment, messages)
    histories = _histories(uri, children)
    run_rows, history_parts = [], []
    fallbacks: dict[str, list[str]] = {}
    for run in children:
        own = histories.get(run.run_id, _NO_HISTORY)
        row = _run_row(run, own, messages, fallbacks)
        run_rows.append(row)
        if not own.empty:
            history_parts.append(
                _with_tokens_and_flops(own, row["params"], row["flops_per_token"]).assign(
                    run_name=row["run_name"], arm=row["arm"], grid_point=row["grid_label"],
                    seed=row["seed"],
                )
            )
    for what, names in fallbacks.items():
        messages.append(f"{len(names)} run(s) had {what}: {', '.join(sorted(names))}.")
    runs = _mark_included(_sorted_runs(pd.DataFrame(run_rows)), messages)
    history = (
        pd.concat(history_parts, ignore_index=True)[HISTORY_COLUMNS]
        if history_parts else pd.DataFrame(columns=HISTORY_COLUMNS)
    )
    return ExperimentData(experiment, runs, history, messages, tuning, search)


def _split_search(
    uri: str, experiment: ExperimentRecord, messages: list[str]
) -> tuple[tuple[RunRecord, ...], tuple[RunRecord, ...], dict[str, Any] | None]:
    """A searched experiment's runs: (the confirm runs, the tuning runs, the search summary);
    any other experiment's: (its runs, (), None)."""
    tuning = tuple(run for run in experiment.children if run.phase == TUNE)
    children = tuple(run for run in experiment.children if run.phase != TUNE)
    parent = experiment.parent
    search = read_search_summary(uri, parent) if parent is not None else None
    if not tuning and search is None:
        return children, tuning, None
    if not children:
        raise ReportError(
            f"experiment {experiment.name!r} has only tuning runs so far: the report compares "
            "each arm's confirm runs, which start when the search is done (rtlab run FILE)")
    messages.append(
        f"{len(tuning)} tuning run(s) are summarised under Search; every other table and figure "
        f"uses the {len(children)} confirm run(s) (each arm's best configuration).")
    if search is None:
        messages.append("no search.json on the parent run: the Search section is missing.")
    return children, tuning, search


def _read_experiment(experiment_name: str, uri: str) -> ExperimentRecord:
    """The experiment, with at least one child run, or ReportError saying what is missing."""
    check_store_exists(uri)
    experiment = read_experiment(experiment_name, uri)
    if experiment is None:
        known_text = ", ".join(repr(name) for name in experiment_names(uri)) or "none"
        raise ReportError(
            f"no experiment {experiment_name!r} in {uri} (experiments there: {known_text})"
        )
    if not experiment.children:
        raise ReportError(
            f"experiment {experiment_name!r} in {uri} has no child runs "
            f"(tag {ROLE_TAG}={CHILD}) yet"
        )
    return experiment


def _parent_notes(experiment: ExperimentRecord) -> list[str]:
    parent = experiment.parent  # the tracker reuses the first one, so do we
    if parent is None:
        return [f"no parent run (tag {ROLE_TAG}={PARENT}): report artifacts are not logged."]
    if len(experiment.parents) > 1:
        return [
            f"{len(experiment.parents)} parent runs found; report artifacts go to the first "
            f"({parent.run_id}); child runs of all of them are included."
        ]
    return []


def _histories(uri: str, runs: tuple[RunRecord, ...]) -> dict[str, pd.DataFrame]:
    """Each run's full histories of every metric it logged: (run_id, metric, step, value)."""
    keys = {key for run in runs for key in run.metrics}
    points = metric_histories(uri, [run.run_id for run in runs], keys)
    frame = pd.DataFrame(points, columns=list(MetricPoint._fields)).drop(columns="timestamp")
    return {run_id: own for run_id, own in frame.groupby("run_id")}


def _run_row(
    run: RunRecord, own: pd.DataFrame, messages: list[str], fallbacks: dict[str, list[str]]
) -> dict[str, Any]:
    """One row of the runs frame; notes what is missing from the run to `messages`."""
    if run.grid_point_problem:
        messages.append(f"run {run.name}: {run.grid_point_problem}; treated as no grid point.")
    if run.arm is None:
        messages.append(f"run {run.name}: no {ARM_TAG} tag; shown as arm '?'.")
    grid_point = dict(run.grid_point)
    return {
        "run_id": run.run_id,
        "run_name": run.name,
        "arm": run.arm or "?",
        "seed": run.seed,
        "grid_point": json.dumps(grid_point, sort_keys=True),
        "grid_label": grid_label(grid_point),
        "grid": grid_point,
        "config_hash": run.config_hash,
        "status": run.status,
        "failure_reason": run.failure_reason,
        "start_time": run.start_time,
        "end_time": run.end_time,
        **_summaries(run, own, fallbacks),
        **_throughput(run, own),
        "git_commit": run.git_commit,
        "git_dirty": run.git_dirty,
        "rtlab_version": run.rtlab_version,
        "python": run.python,
        "torch": run.torch,
        "device": run.device,
        "params": dict(run.params),
    }


def _summaries(
    run: RunRecord, own: pd.DataFrame, fallbacks: dict[str, list[str]]
) -> dict[str, float]:
    """final_train_loss, final_val_loss, best_val_loss; a finished run that had to fall back on
    its history is listed in `fallbacks` (an unfinished one is expected to)."""
    summaries: dict[str, float] = {}
    for key, fallback_metric, how in SUMMARIES:
        summaries[key], used_fallback = _summary_value(
            dict(run.metrics), own, key, fallback_metric, how
        )
        if used_fallback and run.status == FINISHED:
            fallbacks.setdefault(f"no {key}; used the {how} {fallback_metric}", []).append(run.name)
    return summaries


def _throughput(run: RunRecord, own: pd.DataFrame) -> dict[str, float]:
    def steady(metric: str) -> float:
        if own.empty:
            return math.nan
        return _steady_median(_series(own, metric)["value"].to_numpy(dtype=float))

    return {
        "tokens_seen": float(run.metrics.get(TOKENS_SEEN, math.nan)),
        "flops_seen": float(run.metrics.get(FLOPS_SEEN, math.nan)),
        "flops_per_token": _to_float(run.params.get(FLOPS_PER_TOKEN_PARAM)),
        "tokens_per_sec": steady(TOKENS_PER_SEC),
        "mfu": steady(MFU),
    }


def _with_tokens_and_flops(
    own: pd.DataFrame, params: dict[str, str], flops_per_token: float
) -> pd.DataFrame:
    """Attach tokens/FLOPs seen at each row's step, interpolated over the logged steps.

    When a run logged no tokens_seen, derive it from the batch geometry (batch x accum x block
    per optimizer step); when it logged no flops_seen, from tokens x flops_per_token.
    """
    steps = own["step"].to_numpy(dtype=float)
    out = own.copy()
    tokens_series = _series(own, TOKENS_SEEN)
    if len(tokens_series):
        out["tokens"] = _counter_at(steps, tokens_series)
    else:
        out["tokens"] = steps * _tokens_per_step(params)
    flops_series = _series(own, FLOPS_SEEN)
    if len(flops_series):
        out["flops"] = _counter_at(steps, flops_series)
    else:
        out["flops"] = out["tokens"] * flops_per_token
    return out


def _counter_at(steps: np.ndarray, series: pd.DataFrame) -> np.ndarray:
    """A cumulative counter (tokens/FLOPs seen) at arbitrary steps: linear between logged steps,
    0 at step 0 (nothing trained yet; trackers log it from the first log step on), and extended
    past the last logged step at the last rate."""
    x = series["step"].to_numpy(dtype=float)
    y = series["value"].to_numpy(dtype=float)
    if x[0] > 0:
        x, y = np.concatenate([[0.0], x]), np.concatenate([[0.0], y])
    values = np.interp(steps, x, y)
    beyond = steps > x[-1]
    if beyond.any() and x[-1] > x[0]:
        rate = (y[-1] - y[-2]) / (x[-1] - x[-2])
        values[beyond] = y[-1] + rate * (steps[beyond] - x[-1])
    return values


def _grid_sort_key(grid: dict) -> tuple:
    """Order grid points by their values (numbers numerically), key by key."""
    return tuple(
        (key, 0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool)
        else (key, 1, 0, str(value))
        for key, value in sorted(grid.items())
    )


def _sorted_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs by grid point (in value order), then seed, then start: every later group-by and
    drop_duplicates then lists grid points in a stable, readable order."""
    order = {label: i for i, label in enumerate(sorted(
        runs.drop_duplicates("grid_point")["grid_point"],
        key=lambda raw: _grid_sort_key(json.loads(raw)),
    ))}
    keys = pd.DataFrame({
        "grid": runs["grid_point"].map(order),
        "seed": runs["seed"].fillna(-1),
        "start": runs["start_time"].fillna(0),
    })
    return runs.loc[keys.sort_values(["grid", "seed", "start"], kind="stable").index].reset_index(
        drop=True)


def _mark_included(runs: pd.DataFrame, messages: list[str]) -> pd.DataFrame:
    """Only finished runs enter the aggregates; a config run twice counts once (the latest)."""
    runs = runs.copy()
    runs["included"] = runs["status"] == FINISHED
    runs["excluded_because"] = np.where(
        runs["included"], "", "status " + runs["status"].astype(str)
    )
    finished = runs[runs["included"] & (runs["config_hash"] != "")]
    finished = finished.sort_values(["end_time", "start_time"], na_position="first", kind="stable")
    duplicated = finished.duplicated("config_hash", keep="last")
    for index in finished.index[duplicated.to_numpy()]:
        runs.loc[index, "included"] = False
        runs.loc[index, "excluded_because"] = "duplicate of a later finished run (same config hash)"
    n_dup = int(duplicated.sum())
    if n_dup:
        messages.append(
            f"{n_dup} finished run(s) repeat a config hash; only the latest of each counts."
        )
    not_finished = runs[runs["status"] != FINISHED]
    if len(not_finished):
        listing = ", ".join(
            f"{name} ({status})" for name, status in zip(
                not_finished["run_name"], not_finished["status"], strict=True
            )
        )
        messages.append(f"left out of aggregates (not finished): {listing}.")
    return runs
