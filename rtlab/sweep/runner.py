"""`rtlab run`: spec -> plan -> audit -> stores -> queue -> workers -> summary.

Order matters. Everything that can reject the input (the spec, the datasets, the mechanism audit)
runs before any store is touched, so a bad file leaves no MLflow experiment, run or study behind.
The MLflow store, experiment and parent run, and the Optuna study, are then created here, in the
main process, before any worker starts (concurrent creation of a fresh SQLite store races).
"""

from __future__ import annotations

import json
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
from typing import Any

from rich.console import Console

from rtlab.sweep import queue as run_queue
from rtlab.sweep.progress import SweepDisplay
from rtlab.sweep.worker import (
    WorkerConfig,
    reset_run_dir,
    run_worker,
    worker_process_main,
)

# ---------------------------------------------------------------------------------------------
# Preparing: everything that may reject the input, with no store touched.


@dataclass
class PreparedExperiment:
    spec: Any  # rtlab.spec.ExperimentSpec
    plans: list[Any]  # rtlab.plan.RunPlan, in plan order
    datasets: dict[str, Any] = field(default_factory=dict)  # data section JSON -> Dataset


def data_key(data_section: dict[str, Any]) -> str:
    return json.dumps(data_section, sort_keys=True, default=str)


def prepare_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                       ) -> PreparedExperiment:
    """Load and check the spec, prepare its datasets, plan its runs.

    Raises SpecError (the spec) or DataError (a dataset): both are bad input.
    """
    from rtlab.data import load_data_section
    from rtlab.plan import plan_runs
    from rtlab.spec import load_spec

    spec = load_spec(path, list(overrides))
    datasets: dict[str, Any] = {}

    def fingerprint(data_section: dict[str, Any]) -> str:
        key = data_key(data_section)
        if key not in datasets:
            datasets[key] = load_data_section(data_section)
        return datasets[key].fingerprint

    plans = plan_runs(spec, fingerprint)
    # The model config each run will train (a head that does not fit its dataset is bad input).
    from rtlab.execute import model_config
    from rtlab.spec import Problem, SpecError

    problems = []
    for plan in plans:
        try:
            model_config(plan.config["model"], datasets[data_key(plan.config["data"])])
        except ValueError as error:
            problems.append(Problem(str(path), f"variants.{plan.arm}", str(error)))
    if problems:
        raise SpecError(problems)
    return PreparedExperiment(spec, plans, datasets)


def arm_label(plan: Any) -> str:
    point = "".join(f"-{k}={v}" for k, v in (plan.grid_point or {}).items())
    return f"{plan.arm}{point}"


@dataclass
class ArmAudit:
    label: str  # arm and grid point
    results: list[Any]  # rtlab.model.audit.AuditResult

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


def model_config_for(config: dict[str, Any], dataset: Any) -> Any:
    """The run's GPTConfig, built as the trainer builds it (rtlab.execute.model_config)."""
    from rtlab.execute import model_config

    return model_config(config["model"], dataset)


def audit_experiment(prepared: PreparedExperiment) -> list[ArmAudit]:
    """METHODS §4 on each distinct model config of the experiment (seeds share one)."""
    from rtlab.model.audit import audit_config

    audits: dict[str, ArmAudit] = {}
    for plan in prepared.plans:
        dataset = prepared.datasets[data_key(plan.config["data"])]
        config = model_config_for(plan.config, dataset)
        key = json.dumps(config.to_dict(), sort_keys=True, default=str)
        if key not in audits:
            audits[key] = ArmAudit(arm_label(plan), audit_config(config))
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


@dataclass
class SweepSummary:
    experiment: str
    tracking_uri: str
    storage_url: str
    planned: int
    already_finished: int
    queued: int
    outcomes: list[dict[str, Any]]  # "end"/"skip" events of this sweep
    stopped: bool
    workers: int
    wall_seconds: float
    step_seconds: float  # summed over workers
    eval_seconds: float
    tracking_seconds: float = 0.0  # per-run MLflow work outside train(), summed over workers
    train_other_seconds: float = 0.0  # inside train() but outside steps and eval (setup, ckpt)
    phases: dict[str, float] = field(default_factory=dict)  # main-process phases, seconds

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if o.get("status") == "FAILED"]

    def shares(self) -> dict[str, float]:
        """Shares of the sweep's worker capacity (workers x wall time)."""
        capacity = max(self.workers, 1) * self.wall_seconds
        if capacity <= 0:
            return {"steps": 0.0, "eval": 0.0, "orchestration": 1.0}
        steps = self.step_seconds / capacity
        evaluation = self.eval_seconds / capacity
        return {"steps": steps, "eval": evaluation, "orchestration": 1.0 - steps - evaluation}


def estimated_cost(plan: Any) -> float:
    """Relative compute of a run, for scheduling only: tokens trained x (1 + reasoning tokens)
    positions x layer width^2 x depth, doubled for myopic training (it runs a second pass)."""
    train, model = plan.config["train"], plan.config["model"]
    tokens = train["max_iters"] * train["batch_size"] * train.get("grad_accum", 1)
    positions = model.get("block_size", 1) * (1 + (model.get("reasoning") or {}).get("n_tokens", 0))
    width = model.get("n_layer", 1) * model.get("n_embd", 1) ** 2
    myopic = 2.0 if model.get("myopic", "off") != "off" else 1.0
    return float(tokens * positions * width * myopic)


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


def run_sweep(
    prepared: PreparedExperiment,
    options: SweepOptions,
    console: Console | None = None,
    started_at: float | None = None,
    phases: dict[str, float] | None = None,
) -> SweepSummary:
    """Create/open the stores, queue unfinished runs, run workers until the queue is empty."""
    import torch
    from mlflow import MlflowClient

    from rtlab.track import (
        child_runs,
        finish_parent,
        mark_parent_running,
        resolve_tracking_uri,
        runs_by_hash,
        setup_experiment,
    )

    started_at = time.perf_counter() if started_at is None else started_at
    phases = dict(phases or {})
    stores_start = time.perf_counter()
    spec, plans = prepared.spec, prepared.plans
    console = console or Console()

    # ---- stores, created once here
    tracking_uri = resolve_tracking_uri(options.tracking_uri)
    handle = setup_experiment(spec.name, tracking_uri, spec.description or "")
    client = MlflowClient(tracking_uri)
    mark_parent_running(handle)
    if spec.path is not None:
        client.set_tag(handle.parent_run_id, "rtlab.spec_path", str(spec.path))
    if spec.text:
        client.log_text(handle.parent_run_id, spec.text, "spec.yaml")
    state_dir = run_queue.experiment_state_dir(spec.name, options.state_root)
    storage_url = options.storage_url or run_queue.default_storage_url(state_dir)
    study = run_queue.create_study(storage_url, spec.name, {
        "tracking_uri": handle.tracking_uri,
        "experiment_id": handle.experiment_id,
        "experiment_name": handle.experiment_name,
        "parent_run_id": handle.parent_run_id,
    })

    # ---- queue: stale trials of a killed sweep first, then every run not FINISHED
    _recover_stale(study, client, handle.experiment_id)
    finished = {h for h, r in runs_by_hash(client, handle.experiment_id).items()
                if r.info.status == "FINISHED"}
    plan_hashes = [p.config_hash for p in plans]
    if options.force:
        for run in child_runs(client, handle.experiment_id):
            if run.data.tags.get("rtlab.config_hash") in plan_hashes:
                client.delete_run(run.info.run_id)  # soft delete: one live run per hash
        for config_hash in plan_hashes:
            reset_run_dir(state_dir, config_hash)
        finished = set()
    run_queue.drop_waiting_except(study, set(plan_hashes))
    pending = run_queue.pending_hashes(study)
    already_finished = sum(1 for h in plan_hashes if h in finished)
    # Longest runs first: workers then finish close together instead of one idling at the end.
    for plan in sorted(plans, key=estimated_cost, reverse=True):
        if plan.config_hash in finished or plan.config_hash in pending:
            continue
        run_queue.enqueue(study, run_queue.QueuedRun(
            config_hash=plan.config_hash, run_name=plan.run_name, arm=plan.arm,
            seed=int(plan.seed), grid_point=dict(plan.grid_point or {}), config=plan.config,
        ))
        pending.add(plan.config_hash)
    queued = sum(1 for h in plan_hashes if h in pending)
    phases["stores"] = time.perf_counter() - stores_start

    # ---- workers
    # workers=0: only set up the stores and the queue; `rtlab worker` processes do the runs.
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = default_workers(gpus) if options.workers is None else options.workers
    n_workers = max(1, min(wanted, queued)) if queued and wanted else 0
    threads = max(1, cpu_count() // max(n_workers, 1))
    configs = [
        WorkerConfig(
            storage_url=storage_url, study_name=spec.name, state_dir=str(state_dir),
            tracking_uri=handle.tracking_uri, worker_index=i,
            threads=None if gpus else threads, gpu=(i % gpus) if gpus else None,
        )
        for i in range(n_workers)
    ]
    display = SweepDisplay(total_runs=queued, quiet=options.quiet, console=console)
    ctx = multiprocessing.get_context("spawn")
    process_stop = ctx.Event()

    def request_stop() -> None:
        process_stop.set()
        display.note("stopping: each run ends after its current step (Ctrl-C again to abort)")

    workers_start = time.perf_counter()
    with display, _stop_on_signals(request_stop) as stop:
        if already_finished:
            display.note(f"{already_finished} of {len(plans)} runs already finished (skipped)")
        if queued and not n_workers:
            display.note(
                f"{queued} run(s) queued; work them off with: rtlab worker --study {spec.name} "
                f"--storage {storage_url} --tracking-uri {handle.tracking_uri}"
            )
        try:
            if n_workers == 1:
                run_worker(configs[0], display.handle, stop.is_set)
            elif n_workers > 1:
                _run_worker_processes(ctx, configs, display, process_stop, stop)
        finally:
            phases["workers"] = time.perf_counter() - workers_start
            finish_start = time.perf_counter()
            _recover_stale(study, client, handle.experiment_id)  # crashed workers' trials
            stopped = stop.is_set()
            runs = runs_by_hash(client, handle.experiment_id)
            if all(h in runs and runs[h].info.status == "FINISHED" for h in plan_hashes):
                finish_parent(handle, "FINISHED")
            elif stopped:
                finish_parent(handle, "KILLED")
            elif not run_queue.pending_hashes(study) & set(plan_hashes):
                finish_parent(handle, "FAILED")
            # else: workers elsewhere (`rtlab worker`) still hold runs; the parent stays RUNNING
            phases["finish"] = time.perf_counter() - finish_start

    outcomes = display.ended
    return SweepSummary(
        experiment=spec.name,
        tracking_uri=handle.tracking_uri,
        storage_url=storage_url,
        planned=len(plans),
        already_finished=already_finished,
        queued=queued,
        outcomes=outcomes,
        stopped=stopped,
        workers=n_workers,
        wall_seconds=time.perf_counter() - started_at,
        step_seconds=sum(o.get("step_seconds", 0.0) for o in outcomes),
        eval_seconds=sum(o.get("eval_seconds", 0.0) for o in outcomes),
        tracking_seconds=sum(o.get("tracking_seconds", 0.0) for o in outcomes),
        train_other_seconds=sum(
            o.get("train_wall_seconds", 0.0) - o.get("step_seconds", 0.0)
            - o.get("eval_seconds", 0.0) for o in outcomes
        ),
        phases=phases,
    )


def _recover_stale(study: Any, client: Any, experiment_id: str) -> None:
    """Trials whose worker died (killed sweep, crash): FAIL them, mark their MLflow runs KILLED.

    Their runs are not FINISHED in MLflow, so this or the next `rtlab run` queues them again and
    they resume from their checkpoints.
    """
    from rtlab.track import find_run_by_hash

    for config_hash in run_queue.fail_stale_trials(study):
        run = find_run_by_hash(client, experiment_id, config_hash) if config_hash else None
        if run is not None and run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def _run_worker_processes(
    ctx: Any,
    configs: list[WorkerConfig],
    display: SweepDisplay,
    process_stop: Any,
    stop: threading.Event,
) -> None:
    events = ctx.Queue()
    processes = [
        ctx.Process(
            target=worker_process_main,
            args=(config, events, process_stop, os.getpid()),
            name=f"rtlab-worker-{config.worker_index}",
        )
        for config in configs
    ]
    for process in processes:
        process.start()
    try:
        while True:
            try:
                display.handle(events.get(timeout=0.2))
                continue
            except queue_module.Empty:
                pass
            if stop.is_set():
                process_stop.set()
            if not any(p.is_alive() for p in processes):
                break
        while True:  # events sent just before exit
            try:
                display.handle(events.get_nowait())
            except queue_module.Empty:
                break
    except KeyboardInterrupt:
        for process in processes:  # second Ctrl-C: no more waiting
            process.terminate()
        raise
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
