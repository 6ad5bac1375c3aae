"""A worker: pop a queued run, train it (rtlab.execute), log it (rtlab.track), repeat until empty.

Workers are separate processes started by `rtlab run --workers N` (or one in the main process
for N = 1), or `rtlab worker` on another machine sharing the study's database. Progress goes to
`emit(event)`: a multiprocessing queue read by the main process's display, or a plain log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from rtlab.sweep import queue as run_queue
from rtlab.sweep.queue import QueuedRun
from rtlab.track import ChildRun, ExperimentHandle, find_run_by_hash

Event = dict[str, Any]
Emit = Callable[[Event], None]
ShouldStop = Callable[[], bool]

# Progress events carry at most this many step updates per second per worker.
STEP_EVENTS_PER_SECOND = 4.0


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs (picklable: it crosses a spawn boundary)."""

    storage_url: str
    study_name: str
    state_dir: str  # run directories live in <state_dir>/runs/<config_hash>/
    tracking_uri: str | None = None  # None: the one the study was created with
    worker_index: int = 0
    threads: int | None = None  # torch CPU threads (a fair share of the machine's cores)
    gpu: int | None = None  # CUDA device index for this worker


@dataclass
class RunOutcome:
    run_name: str
    config_hash: str
    status: str  # FINISHED, FAILED, KILLED, SKIPPED
    final_val_loss: float | None = None
    failure_reason: str | None = None
    train_wall_seconds: float = 0.0
    step_seconds: float = 0.0
    eval_seconds: float = 0.0
    tracking_seconds: float = 0.0  # opening, artifacts and ending the MLflow run (outside train)


def handle_from_study(study: optuna.Study, tracking_uri: str | None) -> ExperimentHandle:
    attrs = study.user_attrs
    return ExperimentHandle(
        tracking_uri=tracking_uri or attrs["tracking_uri"],
        experiment_id=attrs["experiment_id"],
        experiment_name=attrs["experiment_name"],
        parent_run_id=attrs["parent_run_id"],
    )


def run_dir_for(state_dir: str | Path, config_hash: str) -> Path:
    return Path(state_dir) / "runs" / config_hash


def reset_run_dir(state_dir: str | Path, config_hash: str) -> None:
    """Forget a run's checkpoint (for --force: start it afresh)."""
    shutil.rmtree(run_dir_for(state_dir, config_hash), ignore_errors=True)


class _DatasetCache:
    """Each worker loads a dataset once, whatever the number of runs using it."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def get(self, data_section: dict[str, Any]) -> Any:
        from rtlab.data import load_data_section

        key = json.dumps(data_section, sort_keys=True, default=str)
        if key not in self._loaded:
            self._loaded[key] = load_data_section(data_section)
        return self._loaded[key]


class _Heartbeat:
    """Tells the study this worker is alive while a run trains (see queue.is_stale)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(study, trial), name="rtlab-heartbeat", daemon=True
        )
        self._thread.start()

    def _loop(self, study: optuna.Study, trial: optuna.Trial) -> None:
        while not self._stop.wait(run_queue.HEARTBEAT_SECONDS):
            try:
                run_queue.heartbeat(study, trial)
            except Exception:  # a busy store: the next beat will do
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_worker(config: WorkerConfig, emit: Emit, should_stop: ShouldStop) -> list[RunOutcome]:
    """Pull WAITING trials until none remain (or a stop is asked); return what happened."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    if config.gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(config.gpu)
    study = run_queue.load_study(config.storage_url, config.study_name)
    handle = handle_from_study(study, config.tracking_uri)
    datasets = _DatasetCache()
    outcomes: list[RunOutcome] = []
    while not should_stop():
        trial = run_queue.pop_waiting_trial(study)
        if trial is None:
            break  # queue empty: every run is done or taken by another worker
        run = QueuedRun.from_trial(run_queue.frozen(study, trial))
        outcome = run_trial(config, study, trial, run, handle, datasets, emit, should_stop)
        outcomes.append(outcome)
        if outcome.status == "KILLED":
            break
    emit({"type": "worker_done", "worker": config.worker_index})
    return outcomes


def run_trial(
    config: WorkerConfig,
    study: optuna.Study,
    trial: optuna.Trial,
    run: QueuedRun,
    handle: ExperimentHandle,
    datasets: _DatasetCache,
    emit: Emit,
    should_stop: ShouldStop,
) -> RunOutcome:
    """Train and log one run; tell the trial how it ended. Never raises for a failed run."""
    from rtlab.execute import TrainingDiverged, train
    from rtlab.model.device import resolve_device

    worker = config.worker_index
    tracking_start = time.perf_counter()
    client = MlflowClient(handle.tracking_uri)
    existing = find_run_by_hash(client, handle.experiment_id, run.config_hash)
    if existing is not None and existing.info.status == "FINISHED":
        # Another sweep finished it after this one was queued: never run twice.
        value = existing.data.metrics.get("final_val_loss")
        if value is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values=value, state=TrialState.COMPLETE)
        emit({"type": "skip", "worker": worker, "run_name": run.run_name})
        return RunOutcome(run.run_name, run.config_hash, "SKIPPED", value)

    run_dir = run_dir_for(config.state_dir, run.config_hash)
    if existing is None:
        # A checkpoint belongs to the MLflow run that wrote it: a new run (another store, a
        # deleted run) must not continue someone else's training and skip its metrics.
        reset_run_dir(config.state_dir, run.config_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_section = run.config.get("train", {})
    device = str(resolve_device(train_section.get("device", "auto")))
    child = ChildRun.open(
        handle,
        run_name=run.run_name,
        arm=run.arm,
        seed=run.seed,
        grid_point=run.grid_point,
        config_hash=run.config_hash,
        config=run.config,
        device=device,
        existing_run_id=existing.info.run_id if existing is not None else None,
    )
    study._storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", child.run_id)
    max_iters = int(train_section.get("max_iters", 0))
    tracking_seconds = time.perf_counter() - tracking_start
    emit({
        "type": "start", "worker": worker, "run_name": run.run_name, "max_iters": max_iters,
        "resumed": child.resumed, "run_id": child.run_id,
    })

    last_emit = [0.0]
    last_loss: dict[str, float] = {}
    checkpoint_interval = int(train_section.get("checkpoint_interval", 0) or 0)

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        child.log_metrics(step, metrics)
        # The trainer writes a step's checkpoint right after reporting its metrics, and a
        # resumed run re-emits only steps after its checkpoint: so the metrics must be in the
        # store before that checkpoint file can exist (the one blocking write, at checkpoints).
        if step == max_iters or (checkpoint_interval and step % checkpoint_interval == 0):
            child.metrics.flush()
        for key in ("batch_loss", "train_loss", "val_loss", "tokens_per_sec"):
            if key in metrics:
                last_loss[key] = metrics[key]
        now = time.monotonic()
        if now - last_emit[0] >= 1.0 / STEP_EVENTS_PER_SECOND or "val_loss" in metrics:
            last_emit[0] = now
            emit({"type": "step", "worker": worker, "run_name": run.run_name, "step": step,
                  "metrics": dict(last_loss), "eval": "val_loss" in metrics})

    def stop_requested() -> bool:
        if should_stop():
            child.metrics.flush()  # a stopped run writes its resume checkpoint next
            return True
        return False

    heartbeat = _Heartbeat(study, trial)
    status, reason = "FAILED", None
    try:
        result = train(
            run.config, run.seed, run_dir, datasets.get(run.config["data"]),
            on_metrics=on_metrics, should_stop=stop_requested,
        )
        tracking_start = time.perf_counter()
        if result.status == "stopped":
            status = "KILLED"
        else:
            child.log_param("flops_per_token", result.flops_per_token)
            keep = train_section.get("save_checkpoint", True)
            child.log_artifacts(
                config=run.config,
                sample_text=result.sample,
                checkpoint=result.checkpoint_path if keep else None,
            )
            status = "FINISHED"
    except TrainingDiverged as error:
        reason = f"diverged: {error.reason}"
        tracking_start = time.perf_counter()
    except KeyboardInterrupt:
        status, reason = "KILLED", None
        raise
    except Exception as error:  # a broken run must not end the sweep
        reason = f"{type(error).__name__}: {error}"
        (run_dir / "error.log").write_text(traceback.format_exc())
        tracking_start = time.perf_counter()
    finally:
        heartbeat.stop()
        child.finish(status, reason)
        final_val = None
        if status == "FINISHED":
            final_val = result.final_metrics.get("final_val_loss")
        if final_val is not None:
            study.tell(trial, values=final_val, state=TrialState.COMPLETE)
        else:
            study.tell(trial, state=TrialState.FAIL)
    tracking_seconds += time.perf_counter() - tracking_start
    outcome = RunOutcome(run.run_name, run.config_hash, status, final_val, reason,
                         tracking_seconds=tracking_seconds)
    if status in ("FINISHED", "KILLED"):
        outcome.train_wall_seconds = result.wall_seconds
        outcome.step_seconds = result.step_seconds
        outcome.eval_seconds = result.overhead_seconds.get("eval", 0.0)
    emit({"type": "end", "worker": worker, "run_name": run.run_name, "status": status,
          "final_val_loss": final_val, "failure_reason": reason,
          "train_wall_seconds": outcome.train_wall_seconds,
          "step_seconds": outcome.step_seconds, "eval_seconds": outcome.eval_seconds,
          "tracking_seconds": outcome.tracking_seconds})
    return outcome


def worker_process_main(
    config: WorkerConfig, events: Any, stop_event: Any, parent_pid: int
) -> None:
    """Entry point of a worker process started by `rtlab run --workers N` (spawn)."""
    # Ctrl-C in a terminal reaches the whole process group; the main process decides and tells
    # workers through stop_event, so that each ends its run cleanly (KILLED, checkpoint kept).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    orphaned = threading.Event()

    def watch_parent() -> None:
        # If the main process dies (even by SIGKILL) the worker stops at its next step.
        while not orphaned.is_set():
            if os.getppid() != parent_pid:
                orphaned.set()
            time.sleep(0.5)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        run_worker(
            config, events.put, lambda: stop_event.is_set() or orphaned.is_set()
        )
    except Exception:
        events.put({"type": "worker_error", "worker": config.worker_index,
                    "traceback": traceback.format_exc()})
        raise
