"""Optuna-scheduled sweeps: the runs of an experiment are trials of one study; workers pull them.

    prepared = prepare_experiment("experiments/mini_sweep.yaml")   # spec -> datasets -> plan
    audits = audit_experiment(prepared)                            # METHODS §4 per arm
    summary = run_sweep(prepared, SweepOptions(workers=2))         # stores -> queue -> workers
    for outcome in summary.outcomes: ...                           # RunOutcome per run

See `rtlab.sweep.queue` for how a worker on another machine joins a sweep, and
`rtlab.sweep.optuna_adapter` for what the queue needs beyond Optuna's public API.
"""

from rtlab.sweep.outcome import RunOutcome, RunStatus, RunTimings
from rtlab.sweep.queue import (
    QueuedRun,
    RunQueue,
    StorageError,
    StorageLost,
    default_storage_url,
    experiment_state_dir,
    open_storage,
)
from rtlab.sweep.runner import (
    ArmAudit,
    PreparedExperiment,
    SweepOptions,
    SweepSummary,
    audit_experiment,
    prepare_experiment,
    run_sweep,
)
from rtlab.sweep.worker import RunFailedUnderTorchrun, WorkerConfig, run_dir_for, run_worker

__all__ = [
    "ArmAudit",
    "PreparedExperiment",
    "QueuedRun",
    "RunOutcome",
    "RunFailedUnderTorchrun",
    "RunQueue",
    "RunStatus",
    "RunTimings",
    "SweepOptions",
    "SweepSummary",
    "WorkerConfig",
    "audit_experiment",
    "StorageError",
    "StorageLost",
    "open_storage",
    "default_storage_url",
    "experiment_state_dir",
    "prepare_experiment",
    "run_dir_for",
    "run_sweep",
    "run_worker",
]
