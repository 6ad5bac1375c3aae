"""The MLflow store: tracking URI, experiment, the one parent run, and finding child runs.

Everything here runs in the main process before workers start: several processes creating a
fresh SQLite store at once race in its schema migration.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

ROLE_TAG = "rtlab.role"
HASH_TAG = "rtlab.config_hash"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's own default when no URI is set (mlflow.get_tracking_uri() with no ./mlruns store).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACT_DIR = "mlartifacts"

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
    if description:
        client.set_experiment_tag(experiment_id, "mlflow.note.content", description)
    parent = find_parent_run(client, experiment_id)
    if parent is None:
        parent = client.create_run(experiment_id, run_name=name, tags={ROLE_TAG: "parent"})
    return ExperimentHandle(tracking_uri, experiment_id, name, parent.info.run_id)


def find_parent_run(client: MlflowClient, experiment_id: str) -> Run | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'parent'",
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
            filter_string=f"tags.`{ROLE_TAG}` = 'child'",
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
        filter_string=f"tags.`{ROLE_TAG}` = 'child' and tags.`{HASH_TAG}` = '{config_hash}'",
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


def read_experiment_runs(name: str, tracking_uri: str) -> dict[str, Run]:
    """Child runs by hash of an existing experiment; empty (and nothing created) if none."""
    if not store_exists(tracking_uri):
        return {}
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    return runs_by_hash(client, experiment.experiment_id)


def finish_parent(handle: ExperimentHandle, status: str) -> None:
    MlflowClient(handle.tracking_uri).set_terminated(handle.parent_run_id, status)


def mark_parent_running(handle: ExperimentHandle) -> None:
    client = MlflowClient(handle.tracking_uri)
    if client.get_run(handle.parent_run_id).info.status != "RUNNING":
        client.update_run(handle.parent_run_id, status="RUNNING")
