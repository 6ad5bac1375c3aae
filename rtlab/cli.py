"""The `rtlab` command line: thin Typer commands over spec, plan, sweep, track and report.

Heavy libraries (torch, MLflow, Optuna) are imported inside the commands that need them, so
`rtlab --help` and `rtlab validate` answer at once. Bad input ends in one readable line per
problem on stderr and exit code 2, before any store is touched.
"""

from __future__ import annotations

import time

STARTED_AT = time.perf_counter()  # `rtlab run` measures its wall time from here

import importlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, NoReturn  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(
    help="rtlab: a reproducible lab for reasoning tokens and myopic training in GPTs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Without a terminal (a pipe, a log, a test), rich would assume 80 columns and squeeze tables.
console = Console(width=None if sys.stdout.isatty() else 160)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

SpecFile = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec value: key.path=value (repeatable).",
                 show_default=False),
]
TrackingOption = Annotated[
    str | None,
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                 help="MLflow store or server (default: MLflow's own, sqlite:///mlflow.db here)."),
]


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def prepare_or_exit(file: Path, sets: list[str] | None) -> Any:
    """Spec + datasets + plan, or exit 2 with the problems (nothing else has happened yet)."""
    from rtlab.data import DataError
    from rtlab.spec import SpecError
    from rtlab.sweep.runner import prepare_experiment

    try:
        return prepare_experiment(file, list(sets or ()))
    except SpecError as error:
        fail(str(error))
    except DataError as error:
        fail(f"{file}: data: {error}")
    except OSError as error:
        fail(f"{file}: {error.strerror or error}")


def audit_table(audits: list[Any]) -> Table:
    table = Table(title="mechanism audit (METHODS §4, tiny float64 copy of each arm)")
    for column in ("arm", "property", "result", "detail"):
        table.add_column(column)
    for audit in audits:
        for index, result in enumerate(audit.results):
            table.add_row(
                audit.label if index == 0 else "",
                result.name,
                "[green]pass[/]" if result.passed else "[bold red]FAIL[/]",
                result.detail,
            )
    return table


# ---------------------------------------------------------------------------------------------
# run, validate, check


@app.command()
def run(
    file: SpecFile,
    set_: SetOption = None,
    workers: Annotated[int | None, typer.Option(
        min=0, show_default="one per GPU, else one per CPU core (at most one per run)",
        help="Worker processes on this machine (0: only queue the runs, for "
             "`rtlab worker` processes to pick up).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan, run nothing.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Redo runs that already finished.")] = False,
    tracking_uri: TrackingOption = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL of the run queue (default .rtlab/<experiment>/optuna.db); "
             "a shared database lets `rtlab worker` on other machines join.")] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Skip the mechanism audit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines, no bars.")] = False,
) -> None:
    """Run every unfinished run of an experiment, logged to MLflow; resume interrupted ones."""
    phases = {"startup": time.perf_counter() - STARTED_AT}
    prepare_start = time.perf_counter()
    prepared = prepare_or_exit(file, set_)
    phases["prepare"] = time.perf_counter() - prepare_start
    if dry_run:
        show_plan(prepared, tracking_uri)
        return
    audit_start = time.perf_counter()
    if not no_check:
        from rtlab.sweep import audit_experiment

        audits = audit_experiment(prepared)
        failing = [a.label for a in audits if not a.passed]
        if failing:
            console.print(audit_table(audits))
            fail(f"{file}: refusing to run: {', '.join(failing)} failed the mechanism audit "
                 "(rtlab check shows why; --no-check skips it)", code=1)
    phases["audit"] = time.perf_counter() - audit_start
    from rtlab.sweep import SweepOptions, run_sweep

    options = SweepOptions(workers=workers, force=force, tracking_uri=tracking_uri,
                           storage_url=storage, quiet=quiet)
    try:
        summary = run_sweep(prepared, options, console=console, started_at=STARTED_AT,
                            phases=phases)
    except KeyboardInterrupt:  # a second Ctrl-C: runs are already marked KILLED
        fail("interrupted", code=EXIT_INTERRUPTED)
    show_summary(summary, prepared)
    if summary.stopped:
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(1)


def show_plan(prepared: Any, tracking_uri: str | None) -> None:
    from rtlab.plan import plan_table
    from rtlab.track import read_experiment_runs, resolve_tracking_uri

    runs = read_experiment_runs(prepared.spec.name, resolve_tracking_uri(tracking_uri))
    status = {h: r.info.status for h, r in runs.items()}
    table = Table(title=f"{prepared.spec.name}: {len(prepared.plans)} runs (dry run)")
    rows = plan_table(prepared.plans, status)
    for column in ("run", "arm", "grid_point", "seed", "config_hash", "status"):
        table.add_column(column)
    for row in rows:
        done = row["status"] == "FINISHED"
        table.add_row(*(str(row[c]) for c in ("run", "arm", "grid_point", "seed", "config_hash")),
                      f"[green]{row['status']}[/]" if done else row["status"])
    console.print(table)
    todo = sum(1 for r in rows if r["status"] != "FINISHED")
    console.print(f"{todo} to run, {len(rows) - todo} already finished")


def show_summary(summary: Any, prepared: Any) -> None:
    import statistics

    ended = [o for o in summary.outcomes if o.get("type") == "end"]
    if ended:
        table = Table(title=f"{summary.experiment}: this sweep")
        for column in ("run", "status", "final val loss", "note"):
            table.add_column(column)
        for outcome in ended:
            value = outcome.get("final_val_loss")
            table.add_row(outcome["run_name"], outcome["status"],
                          f"{value:.4f}" if value is not None else "",
                          outcome.get("failure_reason") or "")
        console.print(table)
    from rtlab.plan.expand import grid_labels
    from rtlab.track import read_experiment_runs

    runs = read_experiment_runs(summary.experiment, summary.tracking_uri)
    # One row per (arm, grid point): the seeds of one configuration.
    by_config: dict[tuple[str, str], list[float]] = {}
    for plan in prepared.plans:
        run = runs.get(plan.config_hash)
        if run is not None and run.info.status == "FINISHED":
            value = run.data.metrics.get("final_val_loss")
            if value is not None:
                labels = grid_labels(plan.grid_point)
                point = ", ".join(f"{labels[key]}={val}" for key, val in plan.grid_point.items())
                by_config.setdefault((plan.arm, point), []).append(value)
    if by_config:
        table = Table(title="final val loss by arm (all finished seeds)")
        for column in ("arm", "grid point", "seeds", "mean", "sd"):
            table.add_column(column)
        for (arm, point), values in by_config.items():
            sd = f"{statistics.stdev(values):.4f}" if len(values) > 1 else "—"
            table.add_row(arm, point, str(len(values)), f"{statistics.fmean(values):.4f}", sd)
        console.print(table)
    shares = summary.shares()
    console.print(
        f"{summary.queued} run(s) queued, {summary.already_finished} already finished · "
        f"{summary.workers} worker(s) · wall {summary.wall_seconds:.1f} s"
    )
    if summary.workers:
        outside = 1.0 - shares["steps"]
        console.print(
            f"time: training steps {shares['steps']:.1%} · evaluation {shares['eval']:.1%} · "
            f"orchestration {shares['orchestration']:.1%} "
            f"(outside training steps: {outside:.1%})"
        )
        breakdown = {**summary.phases, "per-run tracking": summary.tracking_seconds,
                     "train setup/checkpoints/sample": summary.train_other_seconds}
        console.print("seconds: " + " · ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))
    console.print(f"tracking: {summary.tracking_uri}  (rtlab ui, or mlflow ui here)")


@app.command()
def validate(file: SpecFile, set_: SetOption = None) -> None:
    """Check an experiment file (schema, types, values, overrides) without running anything."""
    from rtlab.plan import plan_runs
    from rtlab.spec import SpecError, load_spec

    try:
        spec = load_spec(file, list(set_ or ()))
    except SpecError as error:
        fail(str(error))
    except OSError as error:
        fail(f"{file}: {error.strerror or error}")
    plans = plan_runs(spec)
    console.print(
        f"{file}: valid · experiment '{spec.name}' · {len(spec.arms)} arms x "
        f"{len(spec.grid_points())} grid points x {len(spec.seeds)} seeds = {len(plans)} runs"
    )


@app.command()
def check(file: SpecFile, set_: SetOption = None) -> None:
    """Audit each arm's model (gradient flow, leak, no own loss, myopic equality): pass/fail."""
    from rtlab.sweep import audit_experiment

    prepared = prepare_or_exit(file, set_)
    audits = audit_experiment(prepared)
    console.print(audit_table(audits))
    failing = [a.label for a in audits if not a.passed]
    if failing:
        fail(f"{file}: failed: {', '.join(failing)}", code=1)
    console.print(f"all {len(audits)} arm configs pass")


# ---------------------------------------------------------------------------------------------
# status, ui, sample, worker


@app.command()
def status(file: SpecFile, set_: SetOption = None, tracking_uri: TrackingOption = None) -> None:
    """Table of the experiment's runs: state, arm, seed, step, losses."""
    from mlflow import MlflowClient

    from rtlab.track import read_experiment_runs, resolve_tracking_uri

    prepared = prepare_or_exit(file, set_)
    uri = resolve_tracking_uri(tracking_uri)
    runs = read_experiment_runs(prepared.spec.name, uri)
    queued = queued_hashes(prepared.spec.name)
    client = MlflowClient(uri) if runs else None
    table = Table(title=f"{prepared.spec.name}: {len(prepared.plans)} runs")
    for column in ("state", "run", "arm", "seed", "step", "train loss", "val loss", "best val",
                   "config hash"):
        table.add_column(column)
    for plan in prepared.plans:
        run = runs.get(plan.config_hash)
        state, step, metrics = ("queued" if plan.config_hash in queued else "pending"), "", {}
        if run is not None and client is not None:
            state, metrics = run.info.status, run.data.metrics
            step = str(last_step(client, run.info.run_id, metrics))
        max_iters = plan.config["train"]["max_iters"]
        table.add_row(
            state, plan.run_name, plan.arm, str(plan.seed),
            f"{step}/{max_iters}" if step else f"0/{max_iters}",
            fmt(metrics.get("train_loss")), fmt(metrics.get("val_loss")),
            fmt(metrics.get("best_val_loss")), plan.config_hash,
        )
    console.print(table)


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def last_step(client: Any, run_id: str, metrics: dict[str, float]) -> int:
    for key in ("batch_loss", "train_loss", "tokens_seen"):
        if key in metrics:
            history = client.get_metric_history(run_id, key)
            if history:
                return max(m.step for m in history)
    return 0


def queued_hashes(experiment: str) -> set[str]:
    """Hashes WAITING in the experiment's local queue, if it exists (never creates it)."""
    from rtlab.sweep.queue import default_storage_url, experiment_state_dir

    state_dir = experiment_state_dir(experiment)
    if not (state_dir / "optuna.db").exists():
        return set()
    from optuna.trial import TrialState

    from rtlab.sweep.queue import load_study, queued_hash

    try:
        study = load_study(default_storage_url(state_dir), experiment)
    except KeyError:
        return set()
    return {h for t in study.get_trials(states=(TrialState.WAITING,)) if (h := queued_hash(t))}


@app.command()
def ui(
    tracking_uri: TrackingOption = None,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 exposes it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
) -> None:
    """Open the MLflow UI on the store (`mlflow ui` with rtlab's tracking URI)."""
    from rtlab.track import resolve_tracking_uri, store_exists

    uri = resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        fail(f"no MLflow store at {uri} (run `rtlab run FILE` here first, or pass --tracking-uri)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port)]
    console.print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C to stop)")
    sys.stdout.flush()
    # Become the server (no wrapper process): signals to `rtlab ui` reach MLflow itself.
    os.execv(sys.executable, command)


@app.command()
def sample(
    run_ref: Annotated[str, typer.Argument(
        metavar="RUN", help="MLflow run id, run name or config hash.", show_default=False)],
    tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 200,
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "\n",
    temperature: Annotated[float, typer.Option(min=1e-3)] = 1.0,
    top_k: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int, typer.Option()] = 0,
    tracking_uri: TrackingOption = None,
) -> None:
    """Generate text from a run's checkpoint (its logged artifact or its local run directory)."""
    from rtlab.sweep.sample import SampleError, sample_from_run

    try:
        text = sample_from_run(run_ref, tokens=tokens, prompt=prompt, temperature=temperature,
                               top_k=top_k, seed=seed, tracking_uri=tracking_uri)
    except SampleError as error:
        fail(str(error))
    typer.echo(text)


@app.command()
def worker(
    study: Annotated[str, typer.Option(help="Study name (= the experiment name).")],
    storage: Annotated[str, typer.Option(help="Optuna storage URL shared with the sweep.")],
    tracking_uri: TrackingOption = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="Run directories (checkpoints); default .rtlab/<experiment>.")] = None,
) -> None:
    """Join a running sweep from this machine: pull queued runs until none remain.

    Start the sweep with `rtlab run FILE --storage URL --tracking-uri URI` where both URLs reach
    a shared database / MLflow server; then `rtlab worker --study NAME --storage URL
    --tracking-uri URI` on each extra machine.
    """
    import signal
    import threading

    from rtlab.sweep import WorkerConfig, experiment_state_dir, run_worker
    from rtlab.sweep.progress import SweepDisplay

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    config = WorkerConfig(
        storage_url=storage, study_name=study,
        state_dir=str(state_dir or experiment_state_dir(study)),
        tracking_uri=tracking_uri, threads=threads,
    )
    display = SweepDisplay(total_runs=0, quiet=True)
    try:
        outcomes = run_worker(config, display.handle, stop.is_set)
    except KeyError:
        fail(f"no study '{study}' in {storage}")
    console.print(f"worker done: {len(outcomes)} run(s)")
    if stop.is_set():
        raise typer.Exit(EXIT_INTERRUPTED)


# ---------------------------------------------------------------------------------------------
# Commands of other parts. They are imported only when invoked: `rtlab report` pulls in pandas,
# scipy and matplotlib, which `rtlab run` does not need.


def _mount(name: str, module: str, attribute: str, help_text: str) -> None:
    """`rtlab NAME ...` imports `module.attribute` (a command function or a Typer app) and hands
    it the rest of the command line, --help included."""

    @app.command(
        name,
        help=help_text,
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def forward(ctx: typer.Context) -> None:
        try:
            target = getattr(importlib.import_module(module), attribute)
        except ImportError as error:  # a broken install: one line, not a traceback
            fail(f"rtlab {name}: cannot import {module}: {error}", 1)
        if not isinstance(target, typer.Typer):
            single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            single.command()(target)
            target = single
        command = typer.main.get_command(target)
        command.main(args=list(ctx.args), prog_name=f"rtlab {name}", standalone_mode=True)


_mount("data", "rtlab.data.commands", "data_app", "Prepare and inspect datasets.")
_mount("report", "rtlab.report.commands", "report_command",
       "Write reports/<experiment>/: figures, tables, claims check, report.md and report.html.")
_mount("reproduce", "rtlab.reproduce", "reproduce_command",
       "Rerun a reported study into a fresh store and compare its final metrics with the report.")


def main() -> None:  # `python -m rtlab.cli`
    app()


if __name__ == "__main__":
    main()
