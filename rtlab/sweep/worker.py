"""A worker: pop a queued run, train it (rtlab.execute), log it (rtlab.track), repeat until empty.

Workers are separate processes started by `rtlab run --workers N` (or one in the main process
for N = 1), or `rtlab worker` on another machine sharing the study's database. Everything a worker
says goes to `emit(message)`: progress events (dicts, for the display) and, as each run ends, its
`RunOutcome`. From a worker process both travel over a multiprocessing queue to the main process.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rtlab.config import DataConfig, RunConfig, canonical_json
from rtlab.sweep.outcome import Message, RunOutcome, RunStatus, RunTimings
from rtlab.sweep.queue import HEARTBEAT_SECONDS, QueuedRun, RunQueue, StorageError
from rtlab.track import ChildRun, ChildState, ExperimentHandle, find_child
from rtlab.track.checkpoints import (
    CheckpointUploader,
    download_checkpoint,
    is_remote,
    read_pointer,
)
from rtlab.track.names import BATCH_LOSS, TOKENS_PER_SEC, TRAIN_LOSS, VAL_LOSS

if TYPE_CHECKING:
    from rtlab.data import Dataset
    from rtlab.execute import TrainResult

Emit = Callable[[Message], None]
ShouldStop = Callable[[], bool]
CheckpointCallback = Callable[[int, Path], None]

# Progress events carry at most this many step updates per second per worker.
STEP_EVENTS_PER_SECOND = 4.0
# A worker with nothing to claim looks again this often while other workers' runs are running.
IDLE_POLL_SECONDS = 1.0
DISPLAY_METRICS = (BATCH_LOSS, TRAIN_LOSS, VAL_LOSS, TOKENS_PER_SEC)


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
    heartbeat_seconds: float = HEARTBEAT_SECONDS  # others take its run for dead after 2 silent


def handle_from_attrs(attrs: Mapping[str, Any], tracking_uri: str | None) -> ExperimentHandle:
    """The MLflow handle the study carries (`tracking_uri`, if given, replaces its URI)."""
    handle = ExperimentHandle(**{f.name: attrs[f.name]
                                 for f in dataclasses.fields(ExperimentHandle)})
    return dataclasses.replace(handle, tracking_uri=tracking_uri or handle.tracking_uri)


def run_dir_for(state_dir: str | Path, config_hash: str) -> Path:
    return Path(state_dir) / "runs" / config_hash


def reset_run_dir(state_dir: str | Path, config_hash: str) -> None:
    """Forget a run's checkpoint (for --force: start it afresh)."""
    shutil.rmtree(run_dir_for(state_dir, config_hash), ignore_errors=True)


def run_worker(config: WorkerConfig, emit: Emit, should_stop: ShouldStop) -> list[RunOutcome]:
    """Pull WAITING trials until none remain (or a stop is asked); return what happened.

    Under torchrun, rank 0 is the worker (queue, MLflow) and trains each run with the other
    ranks, which only follow: they receive each run from it and take their share of its steps."""
    import torch

    from rtlab.execute.distributed import current_ranks, from_main, leave_process_group

    if config.threads:
        torch.set_num_threads(config.threads)
    if config.gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(config.gpu)
    ranks = current_ranks()
    if not ranks.is_main:
        follow_main()
        leave_process_group()
        return []
    # Raising (a failed run under torchrun, a lost store) skips the goodbye: the followers may be
    # inside a collective, so torchrun ends them when this process exits.
    outcomes = Worker(config, emit, should_stop).run()
    if ranks.active:
        from_main(None)  # no more runs: the followers end
        leave_process_group()
    return outcomes


class RunFailedUnderTorchrun(RuntimeError):
    """A run failed on rank 0 while the other ranks trained it: they may wait inside one of its
    collectives, which only the end of the torchrun job releases."""


def follow_main() -> None:
    """A rank other than 0: train each run rank 0 announces (nothing written here) until None."""
    import tempfile

    from rtlab.execute import train
    from rtlab.execute.distributed import from_main

    datasets = _DatasetCache()
    while (announced := from_main(None)) is not None:
        run = RunConfig.from_json(announced)
        with tempfile.TemporaryDirectory(prefix="rtlab-follower-") as scratch:
            train(run, Path(scratch), datasets.get(run.data))


class Worker:
    """One worker's loop: tuning trials of a searched experiment first, then the run queue. It
    holds the queue, the studies, the MLflow handle and loaded datasets, and trains one run in
    steps: skip a finished one, or open, train, end."""

    def __init__(self, config: WorkerConfig, emit: Emit, should_stop: ShouldStop) -> None:
        from rtlab.sweep.search import SearchStudies, study_names

        self.config = config
        self.emit = emit
        self.should_stop = should_stop
        self.queue = RunQueue.open(config.storage_url, config.study_name)
        self.handle = handle_from_attrs(self.queue.attrs, config.tracking_uri)
        self.datasets = _DatasetCache()
        names = study_names(self.queue.attrs)
        self.search = SearchStudies.open(config.storage_url, names) if names else None

    def run(self) -> list[RunOutcome]:
        outcomes: list[RunOutcome] = []
        while not self.should_stop():
            ended = self._next()
            if ended is None and not self._wait_for_others():
                break  # nothing left: every run is done
            outcomes += ended or []
            if any(o.status == "KILLED" for o in ended or []):
                break
        self.emit({"type": "worker_done", "worker": self.config.worker_index})
        return outcomes

    def _next(self) -> list[RunOutcome] | None:
        """Run the next tuning trial, else the next queued run; None when neither is left."""
        if self.search is not None:
            claimed = self.search.claim(self.config.heartbeat_seconds)
            if claimed is not None:
                from rtlab.sweep.tune import TuneTrial

                return TuneTrial(self, self.search, claimed).run()
        entry = self.queue.pop(self.config.heartbeat_seconds)
        return None if entry is None else [self.run_trial(entry)]

    def _wait_for_others(self) -> bool:
        """Nothing waits: while other workers still run trials, wait, so that a run or tuning
        trial whose worker dies meanwhile is queued again (and run here); False once none runs."""
        requeued = len(self.queue.requeue_stale())
        running = self.queue.running_count()
        if self.search is not None:
            requeued += len(self.search.recover_stale())
            running += self.search.running_count()
        if requeued:
            return True  # (the last running trial was a dead worker's: run it here)
        if running == 0:
            return False
        deadline = time.monotonic() + min(IDLE_POLL_SECONDS, self.config.heartbeat_seconds)
        while time.monotonic() < deadline and not self.should_stop():
            time.sleep(0.1)
        return True

    def run_trial(self, entry: QueuedRun) -> RunOutcome:
        """Train and log one queued run; tell the queue how it ended. Raises for a failed run
        only under torchrun (RunFailedUnderTorchrun), and a second Ctrl-C still ends the MLflow
        run and the trial. Its heartbeat also queues again the runs of workers that died."""
        ownership = Ownership(lambda: self.queue.heartbeat(entry),
                               lambda: self.queue.holds(entry))

        def beat() -> None:
            ownership.beat()
            self.queue.requeue_stale()

        heartbeat = _Heartbeat(beat, self.config.heartbeat_seconds)
        final_val = None
        try:
            outcome = self.train_run(
                entry.run, on_open=lambda child: self.queue.set_mlflow_run(entry, child.run_id),
                ownership=ownership)
            if outcome.status in ("FINISHED", "SKIPPED"):
                final_val = outcome.final_val_loss
        finally:
            heartbeat.stop()
            self.queue.finish(entry, final_val)
        return outcome

    def train_run(
        self,
        run: RunConfig,
        watch: TrainingWatch | None = None,
        on_open: Callable[[ChildRun], None] | None = None,
        ownership: Ownership | None = None,
    ) -> RunOutcome:
        """One run: skipped if FINISHED in MLflow, else opened (or resumed), trained and ended.
        `watch` sees every metric and may stop the run (a pruner); once `ownership` is lost the
        run stops and is left to the worker that took it over."""
        tracking = _Stopwatch()
        with tracking:
            existing = find_child(self.handle, run.config_hash)
        if existing is not None and existing.status == "FINISHED":
            return self._skip(run, existing)  # finished after it was queued (or a duplicate)
        with tracking:
            child = self._open(run, existing)
            if on_open is not None:
                on_open(child)
        self.emit({"type": "start", "worker": self.config.worker_index,
                   "run_name": run.run_name, "max_iters": run.train.max_iters,
                   "resumed": child.resumed, "run_id": child.run_id})
        trained = _Trained("KILLED")  # what an abort (KeyboardInterrupt) leaves
        try:
            trained = self._train(run, child, watch, ownership)
        finally:
            failed_here = trained.status == "FAILED"
            with tracking:
                if ownership is not None and not ownership.confirm():
                    trained = _Trained("LOST", LOST_REASON, trained.result)
                    child.abandon()
                    # Its checkpoint holds steps whose metrics were dropped: never resume it.
                    reset_run_dir(self.config.state_dir, run.config_hash)
                else:
                    self._end(run, child, trained, watch)
        outcome = self._outcome(run, trained.status, trained.final("final_val_loss"),
                                trained.failure_reason, child.run_id,
                                trained.timings(tracking.seconds), trained=trained, watch=watch)
        self.emit(outcome)
        if failed_here and _under_torchrun():
            raise RunFailedUnderTorchrun(
                f"{run.run_name} failed on rank 0 ({trained.failure_reason}); it is marked "
                "FAILED, and this torchrun job ends so that the other ranks stop waiting for it")
        return outcome

    def _skip(self, run: RunConfig, existing: ChildState) -> RunOutcome:
        outcome = self._outcome(run, "SKIPPED", existing.final_val_loss, run_id=existing.run_id)
        outcome = dataclasses.replace(
            outcome, best_val_loss=existing.best_val_loss, tokens=existing.tokens_seen or 0.0,
            flops=existing.flops_seen or 0.0,
            steps=int((existing.tokens_seen or 0.0)
                      // (run.train.tokens_per_step * run.model.block_size)))
        self.emit(outcome)
        return outcome

    def _open(self, run: RunConfig, existing: ChildState | None) -> ChildRun:
        from rtlab.model.device import resolve_device

        if existing is None:
            # A checkpoint belongs to the MLflow run that wrote it: a new run (another store, a
            # deleted run) must not continue someone else's training and skip its metrics.
            reset_run_dir(self.config.state_dir, run.config_hash)
        run_dir = run_dir_for(self.config.state_dir, run.config_hash)
        run_dir.mkdir(parents=True, exist_ok=True)
        if existing is not None and self.remote_checkpoints:
            self._fetch_checkpoint(existing.run_id, run_dir)
        return ChildRun.open(
            self.handle, run, device=str(resolve_device(run.train.device)),
            existing_run_id=existing.run_id if existing is not None else None,
        )

    @property
    def remote_checkpoints(self) -> bool:
        """Behind a tracking server, workers may be on other machines: checkpoints travel
        through its artifact store. On one machine the run directory is enough."""
        return is_remote(self.handle.tracking_uri)

    def _fetch_checkpoint(self, run_id: str, run_dir: Path) -> None:
        """A run begun elsewhere: continue from its last uploaded checkpoint unless this machine
        holds a later one of its own."""
        from rtlab.execute.checkpoint import CHECKPOINT_NAME, load_checkpoint

        local = run_dir / CHECKPOINT_NAME
        pointer = read_pointer(self.handle.tracking_uri, run_id)
        if pointer is None:
            return
        if local.exists() and load_checkpoint(local)["step"] >= pointer["step"]:
            return
        download_checkpoint(self.handle.tracking_uri, run_id, local)

    def _train(self, run: RunConfig, child: ChildRun, watch: TrainingWatch | None,
               ownership: Ownership | None = None) -> _Trained:
        """train(), then the finished run's artifacts; a failure is a FAILED run, not a raise."""
        from rtlab.execute import TrainingDiverged, train

        run_dir = run_dir_for(self.config.state_dir, run.config_hash)
        lost = ownership.lost.is_set if ownership is not None else (lambda: False)
        relay = _MetricsRelay(child, self.emit, self.config.worker_index, run, self.should_stop,
                              watch, lost)
        upload = (CheckpointUploader(self.handle.tracking_uri, child.run_id)
                  if self.remote_checkpoints and run.phase != "tune" else None)
        if upload is not None and ownership is not None:
            upload = ownership.fence(upload)
        announce_to_followers(run)
        try:
            result = train(run, run_dir, self.datasets.get(run.data), on_metrics=relay,
                           on_checkpoint=upload, should_stop=relay.should_stop)
            if result.status == "stopped" or lost():
                pruned = watch is not None and watch.pruned_at is not None
                return _Trained("PRUNED" if pruned else "KILLED", result=result)
            if ownership is not None and not ownership.confirm():
                return _Trained("KILLED", result=result)  # LOST: the artifacts are not ours
            artifacts = _Stopwatch()
            with artifacts:
                keep = run.train.save_checkpoint and run.phase != "tune"
                child.log_result(
                    run, flops_per_token=result.flops_per_token, sample_text=result.sample,
                    checkpoint=result.checkpoint_path if keep else None,
                )
            return _Trained("FINISHED", result=result, tracking_seconds=artifacts.seconds)
        except TrainingDiverged as error:
            return _Trained("FAILED", f"diverged: {error.reason}")
        except Exception as error:  # a broken run must not end the sweep
            (run_dir / "error.log").write_text(traceback.format_exc())
            return _Trained("FAILED", f"{type(error).__name__}: {error}")

    def _end(self, run: RunConfig, child: ChildRun, trained: _Trained,
             watch: TrainingWatch | None) -> None:
        """End the MLflow run; a searched experiment's runs say how (finished, pruned, ...)."""
        from rtlab.track.names import PRUNED_STEP_TAG

        if trained.status == "PRUNED" and watch is not None:
            child.set_tags({PRUNED_STEP_TAG: str(watch.pruned_at)})
        state = RUN_STATES[trained.status] if run.phase is not None else None
        mlflow_status = "KILLED" if trained.status == "PRUNED" else trained.status
        child.finish(mlflow_status, trained.failure_reason, state=state)
        if trained.status == "PRUNED":
            reset_run_dir(self.config.state_dir, run.config_hash)  # never resumed

    def _outcome(
        self,
        run: RunConfig,
        status: RunStatus,
        final_val_loss: float | None,
        failure_reason: str | None = None,
        run_id: str | None = None,
        timings: RunTimings | None = None,
        trained: _Trained | None = None,
        watch: TrainingWatch | None = None,
    ) -> RunOutcome:
        result = trained.result if trained is not None else None
        final = result.final_metrics if result is not None else {}
        return RunOutcome(
            run_name=run.run_name, config_hash=run.config_hash, arm=run.arm, seed=run.seed,
            status=status, final_val_loss=final_val_loss, failure_reason=failure_reason,
            run_id=run_id, worker=self.config.worker_index, timings=timings or RunTimings(),
            best_val_loss=final.get("best_val_loss"), steps=result.steps if result else 0,
            tokens=final.get("tokens_seen", 0.0), flops=final.get("flops_seen", 0.0),
            phase=run.phase, pruned_at=watch.pruned_at if watch is not None else None,
        )


def _under_torchrun() -> bool:
    from rtlab.execute.distributed import current_ranks

    return current_ranks().active


def announce_to_followers(run: RunConfig) -> None:
    """Under torchrun, the other ranks train this run with rank 0 (see follow_main)."""
    from rtlab.execute.distributed import current_ranks, from_main

    if current_ranks().active:
        from_main(run.to_json())


# How a run ended (RunStatus) -> the state tag of a searched experiment's run
RUN_STATES = {"FINISHED": "finished", "PRUNED": "pruned", "FAILED": "failed", "KILLED": "stopped"}


class TrainingWatch(Protocol):
    """What watches a run train (a tuning trial: reports to Optuna, asks its pruner)."""

    pruned_at: int | None  # the step at which it asked the run to stop

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class _Trained:
    """How train() ended for the worker."""

    status: RunStatus
    failure_reason: str | None = None
    result: TrainResult | None = None  # when train() returned
    tracking_seconds: float = 0.0  # logging the finished run's artifacts

    def final(self, key: str) -> float | None:
        """A final metric of a FINISHED run (None otherwise)."""
        if self.status != "FINISHED" or self.result is None:
            return None
        return self.result.final_metrics.get(key)

    def timings(self, other_tracking_seconds: float) -> RunTimings:
        tracking = self.tracking_seconds + other_tracking_seconds
        if self.result is None:
            return RunTimings(tracking=tracking)
        return RunTimings(
            train_wall=self.result.wall_seconds, steps=self.result.step_seconds,
            eval=self.result.overhead_seconds.get("eval", 0.0), tracking=tracking,
        )


class _Stopwatch:
    """Adds up the seconds spent inside `with stopwatch:` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


class _MetricsRelay:
    """train()'s callbacks: every metric to MLflow, a few step events to the display."""

    def __init__(
        self, child: ChildRun, emit: Emit, worker: int, run: RunConfig, should_stop: ShouldStop,
        watch: TrainingWatch | None = None, lost: ShouldStop = lambda: False,
    ) -> None:
        self.child = child
        self.lost = lost
        self.watch = watch
        self.emit = emit
        self.worker = worker
        self.run_name = run.run_name
        self.max_iters = run.train.max_iters
        self.checkpoint_interval = run.train.checkpoint_interval
        self._should_stop = should_stop
        self._last_emit = 0.0
        self._latest: dict[str, float] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.lost():
            return  # the run's metrics are its new owner's now
        self.child.log_metrics(step, metrics)
        # The trainer writes a step's checkpoint right after reporting its metrics, and a
        # resumed run re-emits only steps after its checkpoint: so the metrics must be in the
        # store before that checkpoint file can exist (the one blocking write, at checkpoints).
        if step == self.max_iters or step % self.checkpoint_interval == 0:
            self.child.flush_metrics()
        if self.watch is not None:
            self.watch.on_metrics(step, metrics)
        self._latest.update({k: metrics[k] for k in DISPLAY_METRICS if k in metrics})
        now = time.monotonic()
        evaluated = VAL_LOSS in metrics
        if evaluated or now - self._last_emit >= 1.0 / STEP_EVENTS_PER_SECOND:
            self._last_emit = now
            self.emit({"type": "step", "worker": self.worker, "run_name": self.run_name,
                       "step": step, "metrics": dict(self._latest), "eval": evaluated})

    def should_stop(self) -> bool:
        if self.lost():
            return True
        pruned = self.watch is not None and self.watch.pruned_at is not None
        if pruned or self._should_stop():
            self.child.flush_metrics()  # a stopped run writes its resume checkpoint next
            return True
        return False


class _DatasetCache:
    """Each worker loads a dataset once, whatever the number of runs using it."""

    def __init__(self) -> None:
        self._loaded: dict[str, Dataset] = {}

    def get(self, data: DataConfig) -> Dataset:
        from rtlab.data import load_data_section

        key = canonical_json(data.model_dump())
        if key not in self._loaded:
            self._loaded[key] = load_data_section(data)
        return self._loaded[key]


# Why a LOST run stopped (its outcome's failure_reason)
LOST_REASON = "taken over by another worker (this one's heartbeat was judged stale)"


class Ownership:
    """Whether this worker still holds its trial (a queued run's, or a tuning trial). Another
    worker fails the trial and queues it again when this one's heartbeat looks stale: a starved
    heartbeat, under load, looks like a dead worker. Once lost, this worker only stops: the run's
    MLflow status, metrics and checkpoints, and the trial, are the new owner's.

    `heartbeat` beats and says whether the trial is still ours; `holds` only reads that."""

    def __init__(self, heartbeat: Callable[[], bool], holds: Callable[[], bool]) -> None:
        self.heartbeat = heartbeat
        self.holds = holds
        self.lost = threading.Event()

    def beat(self) -> None:
        if not self.heartbeat():
            self.lost.set()

    def confirm(self) -> bool:
        """Whether the run is still ours, read from the store now (before a checkpoint upload,
        the finished run's artifacts and the end of its MLflow run: a heartbeat may come late).
        A store that cannot answer leaves the run ours: the heartbeat decides later."""
        if not self.lost.is_set():
            try:
                if not self.holds():
                    self.lost.set()
            except StorageError:
                pass
        return not self.lost.is_set()

    def fence(self, upload: CheckpointCallback) -> CheckpointCallback:
        """Upload a checkpoint only while the run is ours: a stale owner's upload would overwrite
        a slot the new owner's pointer names (one store read per checkpoint)."""
        def fenced(step: int, path: Path) -> None:
            if self.confirm():
                upload(step, path)

        return fenced


class _Heartbeat:
    """Tells the study this worker is alive while its trial trains (see queue.is_stale)."""

    def __init__(self, beat: Callable[[], None], seconds: float = HEARTBEAT_SECONDS) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(beat, seconds), name="rtlab-heartbeat", daemon=True
        )
        self._thread.start()

    def _loop(self, beat: Callable[[], None], seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                beat()
            except Exception:  # a busy store: the next beat will do
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def worker_process_main(
    config: WorkerConfig, messages: Any, stop_event: Any, parent_pid: int
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
        run_worker(config, messages.put, lambda: stop_event.is_set() or orphaned.is_set())
    except Exception:
        messages.put({"type": "worker_error", "worker": config.worker_index,
                      "traceback": traceback.format_exc()})
        raise
