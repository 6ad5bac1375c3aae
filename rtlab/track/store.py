"""The MLflow store: tracking URI, experiment, the one parent run, and finding child runs.

`setup_experiment` runs in the main process before workers start: several processes creating a
fresh SQLite store at once race in its schema migration. The sweep reaches the store only through
the functions here and `rtlab.track.run`, which take and return rtlab types and plain values.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from rtlab.track.names import (
    ARM_TAG,
    BEST_VAL_LOSS,
    CHILD,
    EXPERIMENT_KIND_TAG,
    FINAL_VAL_LOSS,
    FLOPS_PER_TOKEN_PARAM,
    FLOPS_SEEN,
    GRID_POINT_TAG,
    HASH_TAG,
    NOTE_TAG,
    OVERRIDES_TAG,
    PARENT,
    ROLE_TAG,
    RUN_NOTE_TAG,
    SEARCH_PARAMS_TAG,
    SEED_PARAM,
    SEED_TAG,
    SPEC_ARTIFACT,
    SPEC_PATH_TAG,
    TOKENS_SEEN,
    TRAINING_KIND,
)
from rtlab.track.view import view_tag
from rtlab.urls import redact_url

# MLflow's own default when no URI is set (mlflow.get_tracking_uri() with no ./mlruns store).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MAX_NOTE = 5000  # within MLflow's tag value limit

# MLflow logs its schema migrations at INFO; they are noise in a progress display.
logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass(frozen=True)
class ExperimentHandle:
    """What a worker needs to log into an experiment (plain strings: it crosses processes)."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else MLflow's default, made absolute.

    An absolute path matters: workers and `rtlab ui` may run from another directory.
    """
    if uri:
        return absolute_uri(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return absolute_uri(os.environ["MLFLOW_TRACKING_URI"])
    return absolute_uri(mlflow_default_uri())


def mlflow_default_uri() -> str:
    """What MLflow itself uses here with no URI set (`mlflow ui` included): sqlite:///mlflow.db,
    or ./mlruns where an old file store already lives. Not `mlflow.get_tracking_uri()`: that
    returns whatever `mlflow.set_tracking_uri` set earlier in this process."""
    try:
        from mlflow.tracking._tracking_service.utils import _get_default_tracking_uri
    except ImportError:  # a future MLflow moved it: its documented default
        return DEFAULT_TRACKING_URI
    return _get_default_tracking_uri()


def absolute_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(unquote(uri[len("sqlite:///") :])).resolve())
    if "://" not in uri and not uri.startswith("sqlite:"):
        return Path(uri).resolve().as_uri()  # a bare path means a file store
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or folder a local store lives in, None for a server."""
    if uri.startswith("sqlite:///"):
        return Path(unquote(uri[len("sqlite:///") :]))
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return None


def store_exists(uri: str) -> bool:
    """Whether reading `uri` can happen without creating it (servers: assume yes)."""
    path = local_store_path(uri)
    return path is None or path.exists()


def setup_experiment(
    name: str, tracking_uri: str, description: str = "", artifact_root: Path | None = None
) -> ExperimentHandle:
    """Get or create the experiment and its parent run; return the handle workers use.

    Local stores put artifacts under ./mlartifacts/<experiment> (next to mlflow.db, as
    `mlflow server` does); a server decides for itself.
    """
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if local_store_path(tracking_uri) is not None:
            root = artifact_root or Path(ARTIFACT_DIR)
            location = (root.resolve() / name).as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    for key, value in experiment_tags(description).items():
        client.set_experiment_tag(experiment_id, key, value)
    parent = find_parent_run(client, experiment_id)
    if parent is None:
        parent = client.create_run(experiment_id, run_name=name, tags={ROLE_TAG: PARENT})
    return ExperimentHandle(tracking_uri, experiment_id, name, parent.info.run_id)


def experiment_tags(description: str) -> dict[str, str]:
    """Set on every `rtlab run`, so a store written before them gets them on its next run: the
    kind that makes MLflow open its Model-training views, the description, and the runs view
    `rtlab ui` links to (`rtlab.track.view`)."""
    tags = {EXPERIMENT_KIND_TAG: TRAINING_KIND}
    if description:
        tags[NOTE_TAG] = description
    key, value = view_tag()
    tags[key] = value
    return tags


def experiment_id(tracking_uri: str, name: str) -> str | None:
    """The id of the live experiment called `name`, None where there is none."""
    experiment = MlflowClient(tracking_uri).get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return None
    return experiment.experiment_id


def find_parent_run(client: MlflowClient, experiment_id: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = '{PARENT}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def child_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every live (not deleted) child run of the experiment, all pages."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = '{CHILD}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


_STATUS_RANK = {"FINISHED": 0, "RUNNING": 1, "KILLED": 2, "FAILED": 3, "SCHEDULED": 4}


def _preference(run: Run) -> tuple[int, int]:
    return (_STATUS_RANK.get(run.info.status, 9), -(run.info.start_time or 0))


def find_run_by_hash(client: MlflowClient, experiment_id: str, config_hash: str) -> Run | None:
    """The live child run with this config hash (a FINISHED one first, then the newest)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = '{CHILD}' and tags.`{HASH_TAG}` = '{config_hash}'",
        run_view_type=ViewType.ACTIVE_ONLY,
    )
    return min(runs, key=_preference) if runs else None


def runs_by_hash(client: MlflowClient, experiment_id: str) -> dict[str, Run]:
    """Child runs keyed by config hash; one per hash (a FINISHED one first, then the newest)."""
    best: dict[str, Run] = {}
    for run in child_runs(client, experiment_id):
        config_hash = run.data.tags.get(HASH_TAG)
        if config_hash is None:
            continue
        current = best.get(config_hash)
        if current is None or _preference(run) < _preference(current):
            best[config_hash] = run
    return best


def start_parent(
    handle: ExperimentHandle,
    spec_path: Path | None = None,
    spec_text: str | None = None,
    overrides: Sequence[str] = (),
) -> None:
    """Mark the parent run RUNNING (a rerun reopens it) and record the spec it runs: the file,
    its text, and the `--set` overrides applied to it."""
    client = MlflowClient(handle.tracking_uri)
    if client.get_run(handle.parent_run_id).info.status != "RUNNING":
        client.update_run(handle.parent_run_id, status="RUNNING")
    if spec_path is not None:
        client.set_tag(handle.parent_run_id, SPEC_PATH_TAG, str(spec_path))
    client.set_tag(handle.parent_run_id, OVERRIDES_TAG, json.dumps(list(overrides)))
    if spec_text:
        client.log_text(handle.parent_run_id, spec_text, SPEC_ARTIFACT)


def finish_parent(handle: ExperimentHandle, status: str) -> None:
    """End the parent run; first give every child run its description (`describe_children`)."""
    describe_children(handle)
    MlflowClient(handle.tracking_uri).set_terminated(handle.parent_run_id, status)


# ---------------------------------------------------------------------------------------------
# Child run descriptions: what a run is, in the words of the spec, on its MLflow Overview page.


def run_note(arm: str, seed: str, grid_point: str = "{}") -> str:
    """"reasoning_1, seed 0" (and the grid point, if any): a run's name in words."""
    point = json.loads(grid_point or "{}")
    where = "".join(f", {key} = {value}" for key, value in sorted(point.items()))
    return f"{arm}, seed {seed}{where}"


def config_differences(
    params: dict[str, str], baseline: dict[str, str], baseline_arm: str, ignore: set[str]
) -> list[str]:
    """"model.reasoning.n_tokens = 1 (baseline: 0)" for every config param that differs."""
    ignore = ignore | {SEED_PARAM, FLOPS_PER_TOKEN_PARAM}
    return [
        f"{key} = {params.get(key, 'unset')} ({baseline_arm}: {baseline.get(key, 'unset')})"
        for key in sorted(set(params) | set(baseline))
        if key not in ignore and params.get(key) != baseline.get(key)
    ]


def child_description(run: Run, baseline: Run | None, baseline_arm: str) -> str:
    """The note of one child run: its arm and seed, then what differs from the baseline arm's
    run at the same grid point; a searched run's sampled values are its own, listed apart."""
    tags = run.data.tags
    note = run_note(tags.get(ARM_TAG, "?"), tags.get(SEED_TAG, "?"),
                    tags.get(GRID_POINT_TAG, "{}"))
    searched = json.loads(tags.get(SEARCH_PARAMS_TAG, "{}"))
    if baseline is None:
        detail = f"no {baseline_arm} run to compare with"
    elif tags.get(ARM_TAG) == baseline_arm:
        detail = "the baseline arm"
    else:
        ignore = set(searched) | set(json.loads(baseline.data.tags.get(SEARCH_PARAMS_TAG, "{}")))
        differences = config_differences(run.data.params, baseline.data.params, baseline_arm,
                                         ignore)
        detail = "; ".join(differences) or f"same config as {baseline_arm}"
    if searched:
        detail += "; searched: " + ", ".join(f"{k} = {v}" for k, v in sorted(searched.items()))
    return f"{note}: {detail}"


def baseline_arm(runs: Sequence[Run]) -> str | None:
    """An arm called "baseline", else the arm of the first run started (the sweep starts runs
    in the spec's order, so that is the spec's first arm)."""
    arms = [run.data.tags.get(ARM_TAG) for run in sorted(runs, key=lambda r: r.info.start_time)]
    return "baseline" if "baseline" in arms else next(iter(arms), None)


def describe_children(handle: ExperimentHandle) -> int:
    """Write each child run's description (`child_description`) where it changed; return how
    many changed. Done when the sweep ends, when every arm's runs and params are in the store."""
    client = MlflowClient(handle.tracking_uri)
    runs = child_runs(client, handle.experiment_id)
    arm = baseline_arm(runs)
    if arm is None:
        return 0
    reference: dict[str, Run] = {}  # grid point -> the first baseline run there
    for run in sorted(runs, key=lambda r: r.info.start_time):
        if run.data.tags.get(ARM_TAG) == arm:
            reference.setdefault(run.data.tags.get(GRID_POINT_TAG, "{}"), run)
    changed = 0
    for run in runs:
        baseline = reference.get(run.data.tags.get(GRID_POINT_TAG, "{}"))
        note = child_description(run, baseline, arm)
        if run.data.tags.get(RUN_NOTE_TAG) != note:
            client.set_tag(run.info.run_id, RUN_NOTE_TAG, note[:MAX_NOTE])
            changed += 1
    return changed


# ---------------------------------------------------------------------------------------------
# Child runs as the sweep sees them: by config hash, as plain values.


@dataclass(frozen=True)
class ChildState:
    """The live child run of a config hash (see `find_run_by_hash` for which one)."""

    run_id: str
    status: str  # MLflow's run status: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    final_val_loss: float | None  # logged once, at the last step of a finished run
    best_val_loss: float | None = None  # likewise
    tokens_seen: float | None = None  # at the last logged step
    flops_seen: float | None = None


def find_child(handle: ExperimentHandle, config_hash: str) -> ChildState | None:
    client = MlflowClient(handle.tracking_uri)
    run = find_run_by_hash(client, handle.experiment_id, config_hash)
    if run is None:
        return None
    metrics = run.data.metrics
    return ChildState(run.info.run_id, run.info.status, metrics.get(FINAL_VAL_LOSS),
                      metrics.get(BEST_VAL_LOSS), metrics.get(TOKENS_SEEN),
                      metrics.get(FLOPS_SEEN))


def delete_all_children(handle: ExperimentHandle) -> int:
    """Soft-delete every live child run (`--force` on a searched experiment: its trials are
    sampled afresh, so which hashes it will run is not known in advance)."""
    client = MlflowClient(handle.tracking_uri)
    doomed = [run.info.run_id for run in child_runs(client, handle.experiment_id)]
    for run_id in doomed:
        client.delete_run(run_id)
    return len(doomed)


def log_parent_text(handle: ExperimentHandle, text: str, artifact_file: str) -> None:
    """A text artifact on the parent run (a searched experiment's search.json)."""
    MlflowClient(handle.tracking_uri).log_text(handle.parent_run_id, text, artifact_file)


def set_parent_tags(handle: ExperimentHandle, tags: dict[str, str]) -> None:
    client = MlflowClient(handle.tracking_uri)
    for key, value in tags.items():
        client.set_tag(handle.parent_run_id, key, value)


def finished_hashes(handle: ExperimentHandle) -> set[str]:
    """Config hashes whose run is FINISHED: the runs a sweep never starts again."""
    runs = runs_by_hash(MlflowClient(handle.tracking_uri), handle.experiment_id)
    return {h for h, run in runs.items() if run.info.status == "FINISHED"}


def delete_children(handle: ExperimentHandle, config_hashes: Collection[str]) -> int:
    """Soft-delete every live child run of these hashes (`--force`: the runs start afresh, and
    one live run per hash remains the rule). Returns how many were deleted."""
    client = MlflowClient(handle.tracking_uri)
    doomed = [run.info.run_id for run in child_runs(client, handle.experiment_id)
              if run.data.tags.get(HASH_TAG) in config_hashes]
    for run_id in doomed:
        client.delete_run(run_id)
    return len(doomed)


def kill_running_children(handle: ExperimentHandle, config_hashes: Collection[str]) -> list[str]:
    """Mark KILLED the RUNNING child runs of these hashes (their workers died); return the hashes
    marked. They are not FINISHED, so the next sweep queues them again and they resume."""
    client = MlflowClient(handle.tracking_uri)
    killed = []
    for config_hash in config_hashes:
        run = find_run_by_hash(client, handle.experiment_id, config_hash)
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(config_hash)
    return killed


def lost_server_reason(error: BaseException) -> str | None:
    """One line saying that the MLflow tracking server could not be reached, when `error` (from
    any call into MLflow) is a failed connection after the client's own retries (about 4
    minutes by default: MLFLOW_HTTP_REQUEST_MAX_RETRIES); None for any other error."""
    import requests

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (requests.ConnectionError, requests.exceptions.RetryError)):
            request = getattr(cause, "request", None)
            where = urlparse(getattr(request, "url", "") or "")
            server = f"{where.scheme}://{where.netloc}" if where.netloc else "(its URL)"
            return (f"lost the MLflow tracking server {redact_url(server)}: no answer after "
                    f"MLflow's retries ({type(cause).__name__})")
        cause = cause.__cause__ or cause.__context__
    return None
