"""MLflow -> pandas: the experiment's runs and their full metric histories.

Reads the schema in docs/ARCHITECTURE.md ("MLflow schema"). Two frames come out:
- `runs`: one row per child run (identity, status, whether it enters the aggregates and why not,
  per-run summary values);
- `history`: the tidy frame, one row per (run, metric, step) with the tokens and FLOPs seen at that
  step, so every figure is a group-by on it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from rtlab.report.errors import ReportError
from rtlab.track.store import local_store_path, resolve_tracking_uri, store_exists

PARENT, CHILD = "parent", "child"
FINISHED = "FINISHED"
# Metrics whose history is drawn; the final_*/best_* ones are logged once at the last step.
SUMMARY_METRICS = ("final_train_loss", "final_val_loss", "best_val_loss")
HISTORY_COLUMNS = [
    "run_id", "run_name", "arm", "grid_point", "seed", "step", "tokens", "flops", "metric", "value",
]


@dataclass
class ExperimentData:
    """Everything the report needs from the tracking store, already tidied."""

    experiment_name: str
    experiment_id: str
    tracking_uri: str
    parent_run: Run | None
    runs: pd.DataFrame
    history: pd.DataFrame
    messages: list[str] = field(default_factory=list)  # shown in the report's "Data notes"


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


def _parse_grid_point(raw: str | None) -> tuple[dict, str | None]:
    if not raw:
        return {}, None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        return {}, f"tag rtlab.grid_point is not JSON ({error.msg})"
    if not isinstance(value, dict):
        return {}, "tag rtlab.grid_point is not a JSON object"
    return value, None


def _to_int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _to_float(raw: str | None) -> float:
    try:
        return float(raw) if raw is not None else math.nan
    except ValueError:
        return math.nan


def _search_all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(
            [experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _metric_histories(
    client: MlflowClient, run_ids: list[str], keys: Iterable[str]
) -> pd.DataFrame:
    """All (run_id, metric, step, timestamp, value) rows.

    On a SQL store one query per metric key covers every run (the bulk API); elsewhere fall back
    to one call per (run, key), issued from a few threads to hide round-trip latency.
    """
    keys = sorted(set(keys))
    rows: list[tuple[str, str, int, int, float]] = []
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    if bulk is not None and run_ids:
        try:
            for key in keys:
                for item in bulk(run_ids, key, max_results=None):
                    m = item.metric
                    rows.append((item.run_id, m.key, m.step, m.timestamp, m.value))
        except Exception:  # noqa: BLE001 - any store quirk: use the portable path instead
            rows = []
            bulk = None
    if bulk is None or not run_ids:
        pairs = [(run_id, key) for run_id in run_ids for key in keys]

        def fetch(pair: tuple[str, str]) -> list[tuple[str, str, int, int, float]]:
            run_id, key = pair
            return [
                (run_id, m.key, m.step, m.timestamp, m.value)
                for m in client.get_metric_history(run_id, key)
            ]

        with ThreadPoolExecutor(max_workers=8) as pool:
            for chunk in pool.map(fetch, pairs):
                rows.extend(chunk)
    frame = pd.DataFrame(rows, columns=["run_id", "metric", "step", "timestamp", "value"])
    if frame.empty:
        return frame
    # A resumed run re-logs the steps after its last checkpoint: keep the latest value per step.
    frame = frame.sort_values(["run_id", "metric", "step", "timestamp"], kind="stable")
    frame = frame.drop_duplicates(["run_id", "metric", "step"], keep="last")
    return frame.drop(columns="timestamp").reset_index(drop=True)


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
    check_store_exists(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments(max_results=50))
        known_text = ", ".join(repr(name) for name in known) or "none"
        raise ReportError(
            f"no experiment {experiment_name!r} in {uri} (experiments there: {known_text})"
        )
    messages: list[str] = []
    all_runs = _search_all_runs(client, experiment.experiment_id)
    parents = [r for r in all_runs if r.data.tags.get("rtlab.role") == PARENT]
    children = [
        r for r in all_runs
        if r.data.tags.get("rtlab.role") == CHILD
        or (r.data.tags.get("rtlab.role") != PARENT and "mlflow.parentRunId" in r.data.tags)
    ]
    parents.sort(key=lambda r: r.info.start_time or 0)
    parent = parents[0] if parents else None  # the tracker reuses the first one, so do we
    if len(parents) > 1:
        messages.append(
            f"{len(parents)} parent runs found; report artifacts go to the first "
            f"({parent.info.run_id}); child runs of all of them are included."
        )
    if parent is None:
        messages.append("no parent run (tag rtlab.role=parent): report artifacts are not logged.")
    if not children:
        raise ReportError(
            f"experiment {experiment_name!r} in {uri} has no child runs (tag rtlab.role=child) yet"
        )

    run_ids = [r.info.run_id for r in children]
    metric_keys = {key for r in children for key in r.data.metrics}
    raw = _metric_histories(client, run_ids, metric_keys)

    by_run = {run_id: frame for run_id, frame in raw.groupby("run_id")} if not raw.empty else {}
    empty = raw.iloc[0:0]
    run_rows, history_parts = [], []
    fallbacks: dict[str, list[str]] = {}
    for run in children:
        tags, params, latest = run.data.tags, run.data.params, run.data.metrics
        run_id = run.info.run_id
        run_name = run.info.run_name or tags.get("mlflow.runName", run_id[:8])
        grid_point, grid_problem = _parse_grid_point(tags.get("rtlab.grid_point"))
        if grid_problem:
            messages.append(f"run {run_name}: {grid_problem}; treated as no grid point.")
        arm = tags.get("rtlab.arm") or "?"
        if arm == "?":
            messages.append(f"run {run_name}: no rtlab.arm tag; shown as arm '?'.")
        seed = _to_int(tags.get("rtlab.seed") or params.get("seed"))
        own = by_run.get(run_id, empty)

        summaries: dict[str, float] = {}
        for key, fallback_metric, how in (
            ("final_train_loss", "train_loss", "last"),
            ("final_val_loss", "val_loss", "last"),
            ("best_val_loss", "val_loss", "lowest"),
        ):
            summaries[key], used_fallback = _summary_value(latest, own, key, fallback_metric, how)
            if used_fallback and run.info.status == FINISHED:  # unfinished: expected, unreported
                fallbacks.setdefault(f"no {key}; used the {how} {fallback_metric}", []).append(
                    run_name
                )
        tokens_seen = float(latest.get("tokens_seen", math.nan))
        flops_seen = float(latest.get("flops_seen", math.nan))
        flops_per_token = _to_float(params.get("flops_per_token"))
        throughput = (
            _steady_median(_series(own, "tokens_per_sec")["value"].to_numpy(dtype=float))
            if not own.empty else math.nan
        )
        mfu = (
            _steady_median(_series(own, "mfu")["value"].to_numpy(dtype=float))
            if not own.empty else math.nan
        )
        status = run.info.status
        run_rows.append({
            "run_id": run_id,
            "run_name": run_name,
            "arm": arm,
            "seed": seed,
            "grid_point": json.dumps(grid_point, sort_keys=True),
            "grid_label": grid_label(grid_point),
            "grid": grid_point,
            "config_hash": tags.get("rtlab.config_hash", ""),
            "status": status,
            "failure_reason": tags.get("rtlab.failure_reason", ""),
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
            **summaries,
            "tokens_seen": tokens_seen,
            "flops_seen": flops_seen,
            "flops_per_token": flops_per_token,
            "tokens_per_sec": throughput,
            "mfu": mfu,
            "git_commit": tags.get("rtlab.git_commit", ""),
            "git_dirty": tags.get("rtlab.git_dirty", ""),
            "rtlab_version": tags.get("rtlab.version", ""),
            "python": tags.get("rtlab.python", ""),
            "torch": tags.get("rtlab.torch", ""),
            "device": tags.get("rtlab.device", ""),
            "params": dict(params),
        })
        if not own.empty:
            history_parts.append(
                _with_tokens_and_flops(own, params, flops_per_token).assign(
                    run_name=run_name, arm=arm, grid_point=grid_label(grid_point), seed=seed
                )
            )
    for what, names in fallbacks.items():
        messages.append(f"{len(names)} run(s) had {what}: {', '.join(sorted(names))}.")

    runs = _sorted_runs(pd.DataFrame(run_rows))
    runs = _mark_included(runs, messages)
    history = (
        pd.concat(history_parts, ignore_index=True)[HISTORY_COLUMNS]
        if history_parts else pd.DataFrame(columns=HISTORY_COLUMNS)
    )
    return ExperimentData(
        experiment_name=experiment_name,
        experiment_id=experiment.experiment_id,
        tracking_uri=uri,
        parent_run=parent,
        runs=runs,
        history=history,
        messages=messages,
    )


def _with_tokens_and_flops(
    own: pd.DataFrame, params: dict[str, str], flops_per_token: float
) -> pd.DataFrame:
    """Attach tokens/FLOPs seen at each row's step, interpolated over the logged steps.

    When a run logged no tokens_seen, derive it from the batch geometry (batch x accum x block
    per optimizer step); when it logged no flops_seen, from tokens x flops_per_token.
    """
    steps = own["step"].to_numpy(dtype=float)
    out = own.copy()
    tokens_series = _series(own, "tokens_seen")
    if len(tokens_series):
        out["tokens"] = _counter_at(steps, tokens_series)
    else:
        out["tokens"] = steps * _tokens_per_step(params)
    flops_series = _series(own, "flops_seen")
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
