"""Reading runs back: typed, frozen records of what rtlab wrote to MLflow.

The report, `rtlab reproduce`, `rtlab status` and `rtlab sample` read the store only through the
functions here; MLflow's own types (`Run`, `Metric`, the client) stay inside `rtlab.track`. Tag,
param, metric and artifact names come from `rtlab.track.names`.

Nothing here creates a store: every reader checks `store_exists` first (MLflow would silently
create an empty SQLite file).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from rtlab.config import DataConfig, RunConfig
from rtlab.plan import flatten_config
from rtlab.track.names import (
    ARM_TAG,
    BATCH_LOSS,
    CHILD,
    DATA_FINGERPRINT_TAG,
    DEVICE_TAG,
    FAILURE_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    GRID_POINT_TAG,
    HASH_TAG,
    MLFLOW_PARENT_TAG,
    OVERRIDES_TAG,
    PARENT,
    PHASE_TAG,
    PYTHON_TAG,
    ROLE_TAG,
    SEARCH_ARTIFACT,
    SEED_PARAM,
    SEED_TAG,
    SPEC_PATH_TAG,
    STATE_TAG,
    STUDY_TAG,
    TOKENS_SEEN,
    TORCH_TAG,
    TRAIN_LOSS,
    TRIAL_TAG,
    VERSION_TAG,
)
from rtlab.track.store import runs_by_hash, store_exists

MLFLOW_RUN_NAME_TAG = "mlflow.runName"  # MLflow's own copy of the run name
SECTIONS = ("data", "model", "train")


class RunLookupError(LookupError):
    """No run, or more than one, answers to a reference (the message says which)."""


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as rtlab wrote it: identity, status, tags, params, latest metrics.

    Tags a run does not carry read as None (arm, seed, config hash: "" for the hash) or "" (the
    provenance strings), so a reader can say what is missing.
    """

    run_id: str
    name: str
    experiment_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    role: str | None  # names.PARENT, names.CHILD, or None (not tagged)
    start_time: int | None  # ms since the epoch
    end_time: int | None
    params: Mapping[str, str]  # the flattened config (`train.batch_size`, ...), seed, flops
    metrics: Mapping[str, float]  # the latest value of each metric
    # children
    arm: str | None = None
    seed: int | None = None
    grid_point: Mapping[str, Any] = field(default_factory=dict)
    grid_point_problem: str | None = None  # why GRID_POINT_TAG could not be read
    config_hash: str = ""
    data_fingerprint: str = ""  # of the prepared data ("" for runs from before it was tagged)
    device: str = ""
    failure_reason: str = ""
    git_commit: str = ""
    git_dirty: str = ""  # "true", "false", "unknown" or ""
    rtlab_version: str = ""
    python: str = ""
    torch: str = ""
    # parents
    spec_path: str | None = None  # the file `rtlab run` read
    overrides: tuple[str, ...] | None = None  # its `--set` overrides; None: not recorded
    # children of a searched experiment (None / "" otherwise)
    phase: str | None = None  # names.TUNE (a trial's run) or names.CONFIRM
    state: str = ""  # names.RUN_STATES: finished, pruned, failed, stopped
    study: str = ""
    trial: int | None = None  # tune: the Optuna trial number; confirm: the best trial's


@dataclass(frozen=True)
class ExperimentRecord:
    """An experiment's parent and child runs (live ones only)."""

    experiment_id: str
    name: str
    tracking_uri: str
    parents: tuple[RunRecord, ...]  # oldest first: `rtlab run` reuses the first
    children: tuple[RunRecord, ...]

    @property
    def parent(self) -> RunRecord | None:
        return self.parents[0] if self.parents else None


class MetricPoint(NamedTuple):
    run_id: str
    metric: str
    step: int
    timestamp: int  # ms since the epoch
    value: float


# ---- runs -> records --------------------------------------------------------------------------


def _to_int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _grid_point(raw: str | None) -> tuple[dict[str, Any], str | None]:
    if not raw:
        return {}, None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        return {}, f"tag {GRID_POINT_TAG} is not JSON ({error.msg})"
    if not isinstance(value, dict):
        return {}, f"tag {GRID_POINT_TAG} is not a JSON object"
    return value, None


def _overrides(raw: str | None) -> tuple[str, ...] | None:
    try:
        value = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return tuple(value)


def to_record(run: Run) -> RunRecord:
    tags, info = run.data.tags, run.info
    grid_point, grid_problem = _grid_point(tags.get(GRID_POINT_TAG))
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name or tags.get(MLFLOW_RUN_NAME_TAG) or info.run_id[:8],
        experiment_id=info.experiment_id,
        status=info.status,
        role=tags.get(ROLE_TAG),
        start_time=info.start_time,
        end_time=info.end_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        arm=tags.get(ARM_TAG) or None,
        seed=_to_int(tags.get(SEED_TAG) or run.data.params.get(SEED_PARAM)),
        grid_point=grid_point,
        grid_point_problem=grid_problem,
        config_hash=tags.get(HASH_TAG, ""),
        data_fingerprint=tags.get(DATA_FINGERPRINT_TAG, ""),
        device=tags.get(DEVICE_TAG, ""),
        failure_reason=tags.get(FAILURE_TAG, ""),
        git_commit=tags.get(GIT_COMMIT_TAG, ""),
        git_dirty=tags.get(GIT_DIRTY_TAG, ""),
        rtlab_version=tags.get(VERSION_TAG, ""),
        python=tags.get(PYTHON_TAG, ""),
        torch=tags.get(TORCH_TAG, ""),
        spec_path=tags.get(SPEC_PATH_TAG),
        overrides=_overrides(tags.get(OVERRIDES_TAG)),
        phase=tags.get(PHASE_TAG) or None,
        state=tags.get(STATE_TAG, ""),
        study=tags.get(STUDY_TAG, ""),
        trial=_to_int(tags.get(TRIAL_TAG)),
    )


def _is_child(run: Run) -> bool:
    """Tagged a child, or nested under a parent without being one (a hand-made child run)."""
    role = run.data.tags.get(ROLE_TAG)
    return role == CHILD or (role != PARENT and MLFLOW_PARENT_TAG in run.data.tags)


def _all_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# ---- experiments ------------------------------------------------------------------------------


def read_experiment(name: str, tracking_uri: str) -> ExperimentRecord | None:
    """The experiment's live parent and child runs; None (and nothing created) when the store or
    the experiment does not exist."""
    if not store_exists(tracking_uri):
        return None
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = _all_runs(client, experiment.experiment_id)
    parents = sorted((r for r in runs if r.data.tags.get(ROLE_TAG) == PARENT),
                     key=lambda r: r.info.start_time or 0)
    return ExperimentRecord(
        experiment_id=experiment.experiment_id,
        name=name,
        tracking_uri=tracking_uri,
        parents=tuple(to_record(r) for r in parents),
        children=tuple(to_record(r) for r in runs if _is_child(r)),
    )


def experiment_names(tracking_uri: str, limit: int = 50) -> list[str]:
    """Names of (up to `limit`) live experiments in the store, sorted; [] when there is none."""
    if not store_exists(tracking_uri):
        return []
    return sorted(e.name for e in MlflowClient(tracking_uri).search_experiments(max_results=limit))


def read_runs_by_hash(name: str, tracking_uri: str) -> dict[str, RunRecord]:
    """The experiment's child runs by config hash, one per hash (a FINISHED one first, then the
    newest: as `rtlab run` decides what is done); empty (and nothing created) if none."""
    if not store_exists(tracking_uri):
        return {}
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    return {h: to_record(run) for h, run in runs_by_hash(client, experiment.experiment_id).items()}


def find_run(tracking_uri: str, ref: str) -> RunRecord:
    """A run by id, or a child run by config hash (or a prefix of one) or run name, in any
    experiment. Raises RunLookupError for none or several."""
    if not store_exists(tracking_uri):
        raise RunLookupError(f"no MLflow store at {tracking_uri}")
    client = MlflowClient(tracking_uri)
    try:
        return to_record(client.get_run(ref))
    except MlflowException:
        pass
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        raise RunLookupError(f"{ref}: no experiments in the store")
    matches = [
        run for run in client.search_runs(
            experiment_ids, filter_string=f"tags.`{ROLE_TAG}` = '{CHILD}'", max_results=50000)
        if run.data.tags.get(HASH_TAG, "").startswith(ref) or run.info.run_name == ref
    ]
    if not matches:
        raise RunLookupError(f"{ref}: no run with this id, config hash or run name")
    if len(matches) > 1:
        names = ", ".join(f"{r.info.run_name} ({r.info.run_id[:8]})" for r in matches[:5])
        raise RunLookupError(f"{ref}: ambiguous, matches {names}; give a run id")
    return to_record(matches[0])


def experiment_name(tracking_uri: str, experiment_id: str) -> str:
    return MlflowClient(tracking_uri).get_experiment(experiment_id).name


# ---- metric histories -------------------------------------------------------------------------


def metric_histories(
    tracking_uri: str, run_ids: list[str], keys: Iterable[str]
) -> list[MetricPoint]:
    """Every logged point of these metrics of these runs, ordered by run, metric, step; where a
    step was logged twice (a resumed run re-logs the steps after its last checkpoint), the later
    value only."""
    client = MlflowClient(tracking_uri)
    keys = sorted(set(keys))
    points = _bulk_histories(client, run_ids, keys) if run_ids else []
    if points is None:
        points = _per_run_histories(client, run_ids, keys)
    points.sort(key=lambda p: (p.run_id, p.metric, p.step, p.timestamp))
    latest: dict[tuple[str, str, int], MetricPoint] = {}
    for point in points:
        latest[(point.run_id, point.metric, point.step)] = point
    return list(latest.values())


def _bulk_histories(
    client: MlflowClient, run_ids: list[str], keys: list[str]
) -> list[MetricPoint] | None:
    """One query per metric key covering every run, on a SQL store; None where the store has no
    bulk query (or it fails)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk = getattr(store, "get_metric_history_bulk", None)
    if bulk is None:
        return None
    try:
        return [
            MetricPoint(item.run_id, item.metric.key, item.metric.step, item.metric.timestamp,
                        item.metric.value)
            for key in keys
            for item in bulk(run_ids, key, max_results=None)
        ]
    except Exception:  # noqa: BLE001 - any store quirk: use the portable path instead
        return None


def _per_run_histories(
    client: MlflowClient, run_ids: list[str], keys: list[str]
) -> list[MetricPoint]:
    """One call per (run, key), from a few threads to hide round-trip latency (servers)."""

    def fetch(pair: tuple[str, str]) -> list[MetricPoint]:
        run_id, key = pair
        return [MetricPoint(run_id, m.key, m.step, m.timestamp, m.value)
                for m in client.get_metric_history(run_id, key)]

    pairs = [(run_id, key) for run_id in run_ids for key in keys]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [point for chunk in pool.map(fetch, pairs) for point in chunk]


def last_logged_step(tracking_uri: str, run: RunRecord) -> int:
    """The highest step of the run's training log (0 before its first log line)."""
    client = MlflowClient(tracking_uri)
    for key in (BATCH_LOSS, TRAIN_LOSS, TOKENS_SEEN):
        if key in run.metrics:
            history = client.get_metric_history(run.run_id, key)
            if history:
                return max(m.step for m in history)
    return 0


# ---- configs ----------------------------------------------------------------------------------


def _param_value(text: str) -> Any:
    """A param back as the value it was logged from (`rtlab.track.run.config_params`: str() of
    scalars, JSON of lists)."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_sections(run: RunRecord) -> dict[str, dict[str, Any]]:
    """The run's {data, model, train} from its params (sections it logged nothing of: absent)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, text in sorted(run.params.items()):
        section, _, rest = key.partition(".")
        if section not in SECTIONS or not rest:
            continue
        node = sections.setdefault(section, {})
        *path, leaf = rest.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = _param_value(text)
    return sections


def data_config(run: RunRecord) -> DataConfig | None:
    """The run's `data:` section, None when it logged none (not an rtlab run)."""
    data = config_sections(run).get("data")
    if not data or "name" not in data:
        return None
    try:
        return DataConfig.model_validate({**data, "name": str(data["name"])})
    except ValueError:
        return None


def run_config(run: RunRecord, experiment: str) -> RunConfig | None:
    """The resolved config the run trained, from its tags and params; None when they do not make
    one (a run rtlab did not write, or one from a version whose config differs from this one's).

    With the run's data fingerprint (tagged since it was), the config's hash is the run's."""
    sections = config_sections(run)
    if run.arm is None or run.seed is None or set(sections) != set(SECTIONS):
        return None
    try:
        config = RunConfig.model_validate({
            "experiment": experiment, "arm": run.arm, "seed": run.seed,
            "grid_point": dict(run.grid_point), "data_fingerprint": run.data_fingerprint,
            **sections,
        })
    except ValueError:
        return None
    # Every value must come from the run: a default filled in here is not what it trained.
    return config if set(flatten_config(config.sections())) <= set(run.params) else None


# ---- artifacts --------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr; small files do not need it."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def artifact_files(tracking_uri: str, run_id: str) -> list[str]:
    """Paths of the files at the top of the run's artifacts."""
    return [a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id) if not a.is_dir]


def download_artifact(tracking_uri: str, run_id: str, path: str, dst_dir: Path) -> Path | None:
    """The artifact (file or folder) copied under `dst_dir`; None when the run has no such one."""
    try:
        with _no_progress_bar():
            local = MlflowClient(tracking_uri).download_artifacts(run_id, path, str(dst_dir))
    except (MlflowException, OSError):
        return None
    return Path(local)


def read_text_artifact(tracking_uri: str, run_id: str, path: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="rtlab-artifact-") as scratch:
        local = download_artifact(tracking_uri, run_id, path, Path(scratch))
        return local.read_text() if local is not None and local.is_file() else None


def log_directory(tracking_uri: str, run_id: str, local_dir: Path, artifact_path: str) -> None:
    """Upload a folder as the run's artifacts under `artifact_path` (the report, on the parent)."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path=artifact_path)



def read_search_summary(tracking_uri: str, parent: RunRecord) -> dict[str, Any] | None:
    """A searched experiment's `search.json` (rtlab.sweep.search_summary) from its parent run;
    None for an experiment without a search (or an unreadable file)."""
    if SEARCH_ARTIFACT not in artifact_files(tracking_uri, parent.run_id):
        return None
    text = read_text_artifact(tracking_uri, parent.run_id, SEARCH_ARTIFACT)
    try:
        summary = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None
    return summary if isinstance(summary, dict) else None
