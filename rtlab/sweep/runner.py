"""`rtlab run`: spec -> plan -> audit -> stores -> queue -> workers -> summary.

Order matters. Everything that can reject the input (the spec, the datasets, the mechanism audit)
runs before any store is touched, so a bad file leaves no MLflow experiment, run or study behind.
The MLflow store, experiment and parent run, and the Optuna study, are then created here, in the
main process, before any worker starts (concurrent creation of a fresh SQLite store races).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from rtlab.config import DataConfig, RunConfig, StudyPlan, canonical_json
from rtlab.sweep import optuna_adapter as adapter
from rtlab.sweep.outcome import RunOutcome
from rtlab.sweep.progress import SweepDisplay
from rtlab.sweep.queue import (
    RunQueue,
    default_storage_url,
    experiment_state_dir,
    open_storage,
)
from rtlab.sweep.worker import WorkerConfig, reset_run_dir, run_worker, worker_process_main
from rtlab.track.names import OPTUNA_STORAGE_TAG, SEARCH_ARTIFACT
from rtlab.urls import redact_url

if TYPE_CHECKING:
    from rtlab.data import Dataset
    from rtlab.spec import ExperimentSpec
    from rtlab.sweep.search import SearchStudies
    from rtlab.track import ExperimentHandle

# ---------------------------------------------------------------------------------------------
# Preparing: everything that may reject the input, with no store touched.


def data_key(data: DataConfig) -> str:
    return canonical_json(data.model_dump())


@dataclass
class PreparedExperiment:
    spec: ExperimentSpec
    runs: list[RunConfig]  # in plan order (searched experiments: each arm's unsearched config)
    datasets: dict[str, Dataset] = field(default_factory=dict)  # by data_key
    studies: list[StudyPlan] = field(default_factory=list)  # searched experiments: the studies

    def dataset(self, data: DataConfig) -> Dataset:
        return self.datasets[data_key(data)]


def prepare_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                       ) -> PreparedExperiment:
    """Load and check the spec, prepare its datasets, plan its runs.

    Raises SpecError (the spec, or a model head that does not fit its dataset) or DataError (a
    dataset): both are bad input.
    """
    from rtlab.data import load_data_section
    from rtlab.plan import plan_runs, plan_studies
    from rtlab.spec import load_spec

    spec = load_spec(path, list(overrides))
    datasets: dict[str, Dataset] = {}

    def fingerprint(data: DataConfig) -> str:
        key = data_key(data)
        if key not in datasets:
            datasets[key] = load_data_section(data)
        return datasets[key].fingerprint

    prepared = PreparedExperiment(spec, plan_runs(spec, fingerprint), datasets,
                                  plan_studies(spec, fingerprint))
    check_heads(prepared, str(path))
    return prepared


def check_heads(prepared: PreparedExperiment, path: str) -> None:
    """Each run's model must fit its dataset (a regression head for regression data, ...)."""
    from rtlab.execute import gpt_config
    from rtlab.spec import Problem, SpecError

    problems = []
    for run in prepared.runs:
        try:
            gpt_config(run.model, prepared.dataset(run.data))
        except ValueError as error:
            problems.append(Problem(path, f"variants.{run.arm}", str(error)))
    if problems:
        raise SpecError(problems)


def arm_label(run: RunConfig) -> str:
    point = "".join(f"-{k}={v}" for k, v in run.grid_point.items())
    return f"{run.arm}{point}"


@dataclass
class ArmAudit:
    label: str  # arm and grid point
    results: list[Any]  # rtlab.model.audit.AuditResult

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def audit_experiment(prepared: PreparedExperiment) -> list[ArmAudit]:
    """METHODS §4 on each distinct model config of the experiment (seeds share one)."""
    from rtlab.execute import gpt_config
    from rtlab.model.audit import audit_config

    audits: dict[str, ArmAudit] = {}
    for run in prepared.runs:
        config = gpt_config(run.model, prepared.dataset(run.data))
        key = canonical_json(config.to_dict())
        if key not in audits:
            audits[key] = ArmAudit(arm_label(run), audit_config(config))
    return list(audits.values())


# ---------------------------------------------------------------------------------------------
# Running.


@dataclass
class SweepOptions:
    workers: int | None = None  # None: one per GPU, else one per CPU core (see default_workers)
    force: bool = False
    tracking_uri: str | None = None
    storage_url: str | None = None  # Optuna storage; default .rtlab/<experiment>/optuna.db
    state_root: Path = Path(".rtlab")
    quiet: bool = False
    confirm: bool = True  # a searched experiment: run the confirm phase after tuning


@dataclass
class SweepSummary:
    experiment: str
    tracking_uri: str
    storage_url: str
    planned: int  # runs the spec plans
    already_finished: int  # of those, FINISHED before this sweep (not queued)
    queued: int  # queued after this sweep set up the queue (by it or earlier)
    workers: int  # workers this sweep started (0: it only queued)
    stopped: bool  # a stop was asked (Ctrl-C, SIGTERM)
    outcomes: list[RunOutcome]  # each run this sweep's workers took, in the order they ended
    wall_seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # main-process phases, seconds
    # Searched experiments: the studies (rtlab.sweep.search_summary), the confirm runs (empty
    # while the search is unfinished) and notes (an arm with nothing to confirm)
    search: dict[str, Any] | None = None
    confirm_runs: list[RunConfig] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ran(self) -> list[RunOutcome]:
        """The runs this sweep trained (the outcomes less the SKIPPED ones)."""
        return [o for o in self.outcomes if o.status != "SKIPPED"]

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]

    @property
    def step_seconds(self) -> float:
        """Inside optimizer steps, summed over runs (so over workers)."""
        return sum(o.timings.steps for o in self.outcomes)

    @property
    def eval_seconds(self) -> float:
        return sum(o.timings.eval for o in self.outcomes)

    @property
    def tracking_seconds(self) -> float:
        """Per-run MLflow work outside train(), summed over runs."""
        return sum(o.timings.tracking for o in self.outcomes)

    @property
    def train_other_seconds(self) -> float:
        """Inside train() but outside steps and eval (setup, checkpoints, sample), summed."""
        return sum(o.timings.train_other for o in self.outcomes)

    def shares(self) -> dict[str, float]:
        """Shares of the sweep's worker capacity (workers x wall time)."""
        capacity = max(self.workers, 1) * self.wall_seconds
        if capacity <= 0:
            return {"steps": 0.0, "eval": 0.0, "orchestration": 1.0}
        steps = self.step_seconds / capacity
        evaluation = self.eval_seconds / capacity
        return {"steps": steps, "eval": evaluation, "orchestration": 1.0 - steps - evaluation}


def run_sweep(
    prepared: PreparedExperiment,
    options: SweepOptions,
    console: Console | None = None,
    started_at: float | None = None,
    phases: dict[str, float] | None = None,
) -> SweepSummary:
    """Create/open the stores, queue unfinished runs, run workers until the queue is empty."""
    started_at = time.perf_counter() if started_at is None else started_at
    phases = dict(phases or {})
    if prepared.studies:
        return run_search(prepared, options, console or Console(), started_at, phases)
    with _timed(phases, "stores"):
        stores = open_stores(prepared.spec, options)
        counts = queue_runs(stores, prepared.runs, options.force)
    configs = worker_configs(stores, counts.queued, options.workers)
    display = SweepDisplay(counts.queued, quiet=options.quiet, console=console or Console())
    outcomes, stopped = work(stores, configs, display, counts, phases)
    return SweepSummary(
        experiment=stores.name,
        tracking_uri=stores.handle.tracking_uri,
        storage_url=stores.queue.url,
        planned=counts.planned,
        already_finished=counts.already_finished,
        queued=counts.queued,
        workers=len(configs),
        stopped=stopped,
        outcomes=outcomes,
        wall_seconds=time.perf_counter() - started_at,
        phases=phases,
    )


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - start


@dataclass(frozen=True)
class Stores:
    """The experiment's MLflow handle and run queue, and where its run directories live; for a
    searched experiment, its studies too."""

    name: str
    handle: ExperimentHandle
    queue: RunQueue
    state_dir: Path
    search: SearchStudies | None = None


def open_stores(
    spec: ExperimentSpec, options: SweepOptions, studies: list[StudyPlan] | None = None
) -> Stores:
    """Create or open the MLflow experiment with its parent run, then the study (whose user
    attributes carry the MLflow handle to workers), then a searched experiment's studies."""
    from rtlab.track import resolve_tracking_uri, setup_experiment, start_parent

    state_dir = experiment_state_dir(spec.name, options.state_root)
    url = options.storage_url or default_storage_url(state_dir)
    if adapter.sqlite_path(url) is None:
        open_storage(url)  # a bad shared storage fails here (StorageError), before MLflow
    if studies and not options.force:
        check_search_unchanged(url, studies)  # before any store is touched
    handle = setup_experiment(
        spec.name, resolve_tracking_uri(options.tracking_uri), spec.description or ""
    )
    start_parent(handle, spec.path, spec.text, spec.overrides)
    queue = RunQueue.create(url, spec.name, dataclasses.asdict(handle))
    search = open_studies(handle, queue, state_dir, studies, options.force) if studies else None
    return Stores(spec.name, handle, queue, state_dir, search)


def check_search_unchanged(url: str, studies: list[StudyPlan]) -> None:
    from rtlab.sweep.search import check_unchanged

    database = adapter.sqlite_path(url)
    if database is None or database.exists():
        check_unchanged(open_storage(url), studies)


def open_studies(handle: ExperimentHandle, queue: RunQueue, state_dir: Path,
                 studies: list[StudyPlan], force: bool) -> SearchStudies:
    """The studies of a searched experiment (`force`: deleted first, with every child run and
    run directory); the queue study names them for workers, the parent run names the storage."""
    import json
    import shutil

    from rtlab.sweep.search import STUDIES_ATTR, SearchStudies, delete_studies
    from rtlab.track import delete_all_children, set_parent_tags

    names = [plan.study_name for plan in studies]
    if force:
        delete_studies(queue.storage, names)
        delete_all_children(handle)
        shutil.rmtree(state_dir / "runs", ignore_errors=True)
    search = SearchStudies.create(queue.url, studies)
    queue.study.set_user_attr(STUDIES_ATTR, json.dumps(names))
    set_parent_tags(handle, {OPTUNA_STORAGE_TAG: redact_url(queue.url)})
    return search


@dataclass(frozen=True)
class QueueCounts:
    hashes: frozenset[str]  # of the planned runs
    already_finished: int
    queued: int

    @property
    def planned(self) -> int:
        return len(self.hashes)


def queue_runs(stores: Stores, runs: list[RunConfig], force: bool) -> QueueCounts:
    """Queue every planned run that is neither FINISHED in MLflow nor queued already: stale
    trials of a killed sweep first (they are queued again), then the rest, longest first."""
    from rtlab.track import delete_children, finished_hashes

    recover_stale(stores)
    hashes = [run.config_hash for run in runs]
    finished = set() if force else finished_hashes(stores.handle)
    if force:
        delete_children(stores.handle, set(hashes))  # soft delete: one live run per hash
        for config_hash in hashes:
            reset_run_dir(stores.state_dir, config_hash)
    stores.queue.drop_waiting_except(set(hashes))
    pending = stores.queue.pending_hashes()
    # Longest runs first: workers then finish close together instead of one idling at the end.
    for run in sorted(runs, key=estimated_cost, reverse=True):
        if run.config_hash not in finished and run.config_hash not in pending:
            stores.queue.enqueue(run)
            pending.add(run.config_hash)
    return QueueCounts(
        hashes=frozenset(hashes),
        already_finished=sum(1 for h in hashes if h in finished),
        queued=sum(1 for h in hashes if h in pending),
    )


def recover_stale(stores: Stores) -> None:
    """Trials whose worker died (killed sweep, crash): FAIL them, mark their MLflow runs KILLED.

    Their runs are not FINISHED in MLflow, so this or the next `rtlab run` queues them again and
    they resume from their checkpoints.
    """
    from rtlab.track import kill_running_children

    kill_running_children(stores.handle, [h for h in stores.queue.fail_stale() if h])


def estimated_cost(run: RunConfig) -> float:
    """Relative compute of a run, for scheduling only: tokens trained x (1 + reasoning tokens)
    positions x layer width^2 x depth, doubled for myopic training (it runs a second pass)."""
    tokens = run.train.max_iters * run.train.tokens_per_step
    positions = run.model.block_size * run.model.slots_per_token
    width = run.model.n_layer * run.model.n_embd**2
    myopic = 2.0 if run.model.myopic != "off" else 1.0
    return float(tokens * positions * width * myopic)


def worker_configs(stores: Stores, queued: int, wanted: int | None) -> list[WorkerConfig]:
    """One config per worker to start: `wanted` (None: see default_workers), at most one per
    queued run; none for `--workers 0` (`rtlab worker` processes do the runs)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = default_workers(gpus) if wanted is None else wanted
    n_workers = max(1, min(wanted, queued)) if queued and wanted else 0
    threads = max(1, cpu_count() // max(n_workers, 1))
    return [
        WorkerConfig(
            storage_url=stores.queue.url, study_name=stores.name, state_dir=str(stores.state_dir),
            tracking_uri=stores.handle.tracking_uri, worker_index=i,
            threads=None if gpus else threads, gpu=(i % gpus) if gpus else None,
        )
        for i in range(n_workers)
    ]


def default_workers(gpus: int) -> int:
    """One worker per GPU; on CPU one per core, each with one thread: small models train
    faster as independent runs side by side than as one run split over threads (mini_sweep on
    2 cores: about twice the throughput)."""
    return gpus if gpus else cpu_count()

def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def work(
    stores: Stores,
    configs: list[WorkerConfig],
    display: SweepDisplay,
    counts: QueueCounts | None,
    phases: dict[str, float],
    phase: str = "workers",
) -> tuple[list[RunOutcome], bool]:
    """Run the workers until the queue is empty or a stop is asked, then close the parent run
    (not after a search's tuning phase: `counts` None). Returns the outcomes and whether a stop
    was asked."""
    ctx = multiprocessing.get_context("spawn")
    process_stop = ctx.Event()

    def request_stop() -> None:
        process_stop.set()
        display.note("stopping: each run ends after its current step (Ctrl-C again to abort)")

    with display, _stop_on_signals(request_stop) as stop:
        if counts is not None:
            _announce(display, stores, counts, workers=len(configs))
        try:
            with _timed(phases, phase):
                outcomes = _run_workers(ctx, configs, display, process_stop, stop)
        finally:
            with _timed(phases, "finish"):
                if counts is not None:
                    close_parent(stores, counts, stop.is_set())
                elif stop.is_set():
                    _finish_search_parent(stores, "KILLED")
    return outcomes, stop.is_set()


def _announce(display: SweepDisplay, stores: Stores, counts: QueueCounts, workers: int) -> None:
    if counts.already_finished:
        display.note(f"{counts.already_finished} of {counts.planned} runs already finished "
                     "(skipped)")
    if counts.queued and not workers:
        display.note(
            f"{counts.queued} run(s) queued; work them off with: rtlab worker --study "
            f"{stores.name} --storage {redact_url(stores.queue.url)} --tracking-uri "
            f"{redact_url(stores.handle.tracking_uri)}"
        )


# ---------------------------------------------------------------------------------------------
# A searched experiment: tune every arm (its studies), then confirm each arm's best config.


def run_search(
    prepared: PreparedExperiment,
    options: SweepOptions,
    console: Console,
    started_at: float,
    phases: dict[str, float],
) -> SweepSummary:
    """Tuning: recover dead trials, fill every budget, run workers until no slot waits. Then,
    once every study's budget is spent, queue and run each arm's confirm runs."""
    from rtlab.sweep.search_summary import confirm_runs

    with _timed(phases, "stores"):
        stores = open_stores(prepared.spec, options, prepared.studies)
        assert stores.search is not None
        stores.search.recover()
        active = stores.search.top_up()
    configs = worker_configs(stores, active, options.workers)
    seeds = len(prepared.studies[0].tune_seeds)
    display = SweepDisplay(active * seeds, quiet=options.quiet, console=console)
    if active and not configs:
        display.note(f"{active} trial(s) queued; work them off with: rtlab worker --study "
                     f"{stores.name} --storage {redact_url(stores.queue.url)} --tracking-uri "
                     f"{redact_url(stores.handle.tracking_uri)}")
    outcomes, stopped = work(stores, configs, display, None, phases, phase="tuning")
    result = SearchResult(stores, outcomes, stopped, len(configs))
    if stopped or not stores.search.complete() or not options.confirm:
        return result.summary(started_at, phases)
    result.runs, result.notes = confirm_runs(stores.search)
    with _timed(phases, "queue confirm"):
        result.counts = queue_runs(stores, result.runs, force=False)
    configs = worker_configs(stores, result.counts.queued, options.workers)
    display = SweepDisplay(result.counts.queued, quiet=options.quiet, console=console)
    for note in result.notes:
        display.note(note)
    more, result.stopped = work(stores, configs, display, result.counts, phases,
                                phase="confirming")
    result.outcomes += more
    result.workers = max(result.workers, len(configs))
    return result.summary(started_at, phases)


@dataclass
class SearchResult:
    """What run_search did so far."""

    stores: Stores
    outcomes: list[RunOutcome]
    stopped: bool
    workers: int
    runs: list[RunConfig] = field(default_factory=list)  # the confirm runs
    notes: list[str] = field(default_factory=list)
    counts: QueueCounts | None = None  # of the confirm runs

    def summary(self, started_at: float, phases: dict[str, float]) -> SweepSummary:
        """The sweep summary; also logs the search summary (search.json) to the parent run."""
        from rtlab.sweep.search_summary import search_summary

        stores, counts = self.stores, self.counts
        assert stores.search is not None
        search = search_summary(stores.search)
        export_search(stores, search)
        return SweepSummary(
            experiment=stores.name, tracking_uri=stores.handle.tracking_uri,
            storage_url=stores.queue.url, planned=len(self.runs),
            already_finished=counts.already_finished if counts else 0,
            queued=counts.queued if counts else 0, workers=self.workers,
            stopped=self.stopped, outcomes=self.outcomes,
            wall_seconds=time.perf_counter() - started_at, phases=phases, search=search,
            confirm_runs=self.runs, notes=self.notes,
        )


def export_search(stores: Stores, search: dict[str, Any]) -> None:
    """search.json on the parent run: every study, its trials and best configuration."""
    import json

    from rtlab.track import log_parent_text

    log_parent_text(stores.handle, json.dumps(search, indent=1) + "\n", SEARCH_ARTIFACT)


def _finish_search_parent(stores: Stores, status: str) -> None:
    from rtlab.track import finish_parent

    finish_parent(stores.handle, status)


def close_parent(stores: Stores, counts: QueueCounts, stopped: bool) -> None:
    """End the parent run as the experiment stands: FINISHED when every planned run is, KILLED
    on a stop, FAILED when nothing is left queued; RUNNING while workers elsewhere (`rtlab
    worker`) still hold runs."""
    from rtlab.track import finish_parent, finished_hashes

    recover_stale(stores)  # crashed workers' trials
    if counts.hashes <= finished_hashes(stores.handle):
        finish_parent(stores.handle, "FINISHED")
    elif stopped:
        finish_parent(stores.handle, "KILLED")
    elif not stores.queue.pending_hashes() & counts.hashes:
        finish_parent(stores.handle, "FAILED")


def _run_workers(
    ctx: Any,
    configs: list[WorkerConfig],
    display: SweepDisplay,
    process_stop: Any,
    stop: threading.Event,
) -> list[RunOutcome]:
    """One worker runs in this process; more run as processes (spawned: torch is not fork-safe)."""
    if len(configs) == 1:
        return run_worker(configs[0], display.handle, stop.is_set)
    if configs:
        return _run_worker_processes(ctx, configs, display, process_stop, stop)
    return []


@contextmanager
def _stop_on_signals(on_stop: Callable[[], None]) -> Iterator[threading.Event]:
    """First Ctrl-C (or SIGTERM): ask workers to stop after their current step. Second: abort."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        on_stop()

    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals can only be caught in the main thread
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run_worker_processes(
    ctx: Any,
    configs: list[WorkerConfig],
    display: SweepDisplay,
    process_stop: Any,
    stop: threading.Event,
) -> list[RunOutcome]:
    """Start a process per config; show their events and collect their outcomes until all end."""
    messages = ctx.Queue()
    processes = [
        ctx.Process(
            target=worker_process_main,
            args=(config, messages, process_stop, os.getpid()),
            name=f"rtlab-worker-{config.worker_index}",
        )
        for config in configs
    ]
    for process in processes:
        process.start()
    outcomes: list[RunOutcome] = []
    try:
        while any(p.is_alive() for p in processes):
            _receive(messages, display, outcomes, timeout=0.2)
            if stop.is_set():
                process_stop.set()
        while _receive(messages, display, outcomes, timeout=None):  # sent just before exit
            pass
    except KeyboardInterrupt:
        for process in processes:  # second Ctrl-C: no more waiting
            process.terminate()
        raise
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return outcomes


def _receive(
    messages: Any, display: SweepDisplay, outcomes: list[RunOutcome], timeout: float | None
) -> bool:
    """Take one message off the queue (None timeout: only if one is there); False if none."""
    try:
        message = messages.get(timeout=timeout) if timeout else messages.get_nowait()
    except queue_module.Empty:
        return False
    if isinstance(message, RunOutcome):
        outcomes.append(message)
    display.handle(message)
    return True
