"""MLflow tracking: the store, one parent run per experiment, child runs, batched metrics.

The MLflow schema written here is the one in docs/ARCHITECTURE.md ("MLflow schema"); readers
(report, reproduce, status, sample) get it back as typed records from `rtlab.track.records`.
"""

from rtlab.track.logger import MetricLogger
from rtlab.track.names import HASH_TAG, ROLE_TAG
from rtlab.track.provenance import provenance_tags
from rtlab.track.records import (
    ExperimentRecord,
    RunLookupError,
    RunRecord,
    find_run,
    read_experiment,
    read_runs_by_hash,
)
from rtlab.track.run import ChildRun, config_params, last_logged_steps, write_metrics_csv
from rtlab.track.store import (
    ChildState,
    ExperimentHandle,
    delete_all_children,
    delete_children,
    describe_children,
    experiment_id,
    find_child,
    finish_parent,
    finished_hashes,
    kill_running_children,
    log_parent_text,
    lost_server_reason,
    resolve_tracking_uri,
    set_parent_tags,
    setup_experiment,
    start_parent,
    store_exists,
)
from rtlab.track.view import runs_page_url

__all__ = [
    "HASH_TAG",
    "ROLE_TAG",
    "ChildRun",
    "ChildState",
    "ExperimentHandle",
    "ExperimentRecord",
    "MetricLogger",
    "RunLookupError",
    "RunRecord",
    "config_params",
    "delete_all_children",
    "delete_children",
    "describe_children",
    "experiment_id",
    "find_child",
    "finish_parent",
    "find_run",
    "finished_hashes",
    "kill_running_children",
    "last_logged_steps",
    "log_parent_text",
    "lost_server_reason",
    "provenance_tags",
    "read_experiment",
    "read_runs_by_hash",
    "resolve_tracking_uri",
    "runs_page_url",
    "set_parent_tags",
    "setup_experiment",
    "start_parent",
    "store_exists",
    "write_metrics_csv",
]
