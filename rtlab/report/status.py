"""Where an experiment's planned runs stand: what `rtlab status`, `rtlab run --dry-run` and the
end of `rtlab run` show.

Reads the tracking store through `rtlab.track.records` and the local run queue (read-only, never
created). Light: no pandas, no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rtlab.config import RunConfig, grid_labels
from rtlab.track.names import BEST_VAL_LOSS, FINAL_VAL_LOSS, TRAIN_LOSS, VAL_LOSS
from rtlab.track.records import last_logged_step, read_runs_by_hash

FINISHED = "FINISHED"
QUEUED, PENDING = "queued", "pending"


@dataclass(frozen=True)
class RunState:
    """One planned run: its MLflow status, else QUEUED (waiting in the local queue) or PENDING;
    its last logged step and latest losses (None: not logged)."""

    run: RunConfig
    state: str
    step: int
    train_loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None


@dataclass(frozen=True)
class ConfigResult:
    """The final validation losses of the finished seeds of one arm at one grid point."""

    arm: str
    grid_point: str  # "key=value, ..." with the short grid labels
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def stored_states(experiment: str, tracking_uri: str) -> dict[str, str]:
    """The MLflow status of each config hash that has a run (the run `rtlab run` would keep)."""
    return {h: run.status for h, run in read_runs_by_hash(experiment, tracking_uri).items()}


def run_states(
    runs: Sequence[RunConfig], experiment: str, tracking_uri: str,
    storage_url: str | None = None,
) -> list[RunState]:
    """Each planned run as the store and the queue (default: the local one) have it, in plan
    order."""
    stored = read_runs_by_hash(experiment, tracking_uri)
    queued = queued_hashes(experiment, storage_url)
    states = []
    for planned in runs:
        run = stored.get(planned.config_hash)
        if run is None:
            state = QUEUED if planned.config_hash in queued else PENDING
            states.append(RunState(planned, state, 0))
            continue
        states.append(RunState(
            planned, run.status, last_logged_step(tracking_uri, run),
            run.metrics.get(TRAIN_LOSS), run.metrics.get(VAL_LOSS), run.metrics.get(BEST_VAL_LOSS),
        ))
    return states


def queued_hashes(experiment: str, storage_url: str | None = None) -> set[str]:
    """Hashes WAITING in the experiment's queue (default: the local one, .rtlab/<experiment>),
    if it exists."""
    from rtlab.sweep.queue import storage_url_if_created, waiting_hashes

    url = storage_url_if_created(experiment, storage_url)
    if url is None:
        return set()
    try:
        return waiting_hashes(url, experiment)
    except KeyError:
        return set()


def final_val_loss_by_config(
    runs: Sequence[RunConfig], experiment: str, tracking_uri: str
) -> list[ConfigResult]:
    """The finished planned runs' final validation losses, one entry per (arm, grid point) in
    plan order."""
    stored = read_runs_by_hash(experiment, tracking_uri)
    by_config: dict[tuple[str, str], list[float]] = {}
    for planned in runs:
        run = stored.get(planned.config_hash)
        if run is None or run.status != FINISHED or FINAL_VAL_LOSS not in run.metrics:
            continue
        labels = grid_labels(planned.grid_point)
        point = ", ".join(f"{labels[key]}={value}" for key, value in planned.grid_point.items())
        by_config.setdefault((planned.arm, point), []).append(run.metrics[FINAL_VAL_LOSS])
    return [ConfigResult(arm, point, tuple(values)) for (arm, point), values in by_config.items()]
