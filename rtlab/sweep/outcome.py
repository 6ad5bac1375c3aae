"""What workers emit: progress events for the display, and how each run ended (`RunOutcome`: a
typed value that workers return or, from a worker process, send over the message queue (it
pickles), and that the sweep summary collects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# FINISHED: trained to the end and logged. FAILED: diverged or raised (see failure_reason).
# KILLED: stopped on request; its checkpoint is kept and the next sweep resumes it.
# SKIPPED: already FINISHED in MLflow (another sweep got there first); not run again.
# PRUNED: a tuning trial's run stopped by the pruner (MLflow: KILLED, tag rtlab.state=pruned).
# LOST: another worker took the run over (this one's heartbeat was judged stale); this worker
# stopped and left the MLflow run, its metrics and checkpoints to the new owner.
RunStatus = Literal["FINISHED", "FAILED", "KILLED", "SKIPPED", "PRUNED", "LOST"]


@dataclass(frozen=True)
class RunTimings:
    """Where a run's time went, in seconds."""

    train_wall: float = 0.0  # the train() call, start to return (0 when it raised)
    steps: float = 0.0  # inside optimizer steps
    eval: float = 0.0  # evaluations
    tracking: float = 0.0  # MLflow work outside train(): opening, artifacts, ending the run

    @property
    def train_other(self) -> float:
        """Inside train() but outside steps and eval: setup, checkpoints, the sample."""
        return self.train_wall - self.steps - self.eval


@dataclass(frozen=True)
class RunOutcome:
    run_name: str
    config_hash: str
    arm: str
    seed: int
    status: RunStatus
    final_val_loss: float | None = None  # FINISHED (and SKIPPED) runs
    failure_reason: str | None = None  # FAILED runs
    run_id: str | None = None  # the MLflow run
    worker: int = 0  # index of the worker that ran it
    timings: RunTimings = field(default_factory=RunTimings)
    best_val_loss: float | None = None  # FINISHED (and SKIPPED) runs
    steps: int = 0  # optimizer steps the run has trained (resumed steps included)
    tokens: float = 0.0  # tokens those steps saw
    flops: float = 0.0  # and their training FLOPs
    phase: str | None = None  # searched experiments: "tune" or "confirm"
    pruned_at: int | None = None  # PRUNED runs: the step of the evaluation that pruned them


Event = dict[str, Any]  # progress for the display: start, step, worker_done, worker_error
Message = Event | RunOutcome
