"""MLflow tracking: the store, one parent run per experiment, child runs, batched metrics.

The MLflow schema written here is the one in docs/ARCHITECTURE.md ("MLflow schema");
`rtlab.report` reads it back.
"""

from rtlab.track.logger import MetricLogger
from rtlab.track.provenance import provenance_tags
from rtlab.track.run import ChildRun, config_params, last_logged_steps, write_metrics_csv
from rtlab.track.store import (
    HASH_TAG,
    ROLE_TAG,
    ExperimentHandle,
    child_runs,
    find_run_by_hash,
    finish_parent,
    mark_parent_running,
    read_experiment_runs,
    resolve_tracking_uri,
    runs_by_hash,
    setup_experiment,
    store_exists,
)

__all__ = [
    "HASH_TAG",
    "ROLE_TAG",
    "ChildRun",
    "ExperimentHandle",
    "MetricLogger",
    "child_runs",
    "config_params",
    "find_run_by_hash",
    "finish_parent",
    "last_logged_steps",
    "mark_parent_running",
    "provenance_tags",
    "read_experiment_runs",
    "resolve_tracking_uri",
    "runs_by_hash",
    "setup_experiment",
    "store_exists",
    "write_metrics_csv",
]
