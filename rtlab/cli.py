"""The `rtlab` command line: wiring only. Each command parses its arguments, calls one function of
a lower layer (spec, plan, sweep, report, reproduce, data) and renders what it returns.

Heavy libraries (torch, MLflow, Optuna, pandas) are imported inside the commands that need them,
so `rtlab --help` and `rtlab validate` answer at once. Bad input ends in one readable line per
problem on stderr and exit code 2, before any store is touched.
"""

from __future__ import annotations

import time

STARTED_AT = time.perf_counter()  # `rtlab run` measures its wall time from here

import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, NoReturn  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from rtlab.urls import redact_url  # noqa: E402


class LazyTyper(TyperGroup):
    """A Typer sub-app imported when it runs, not when `rtlab --help` lists it.

    `rtlab data` is `rtlab.data.commands.data_app`, whose import pulls in torch; `app.add_typer`
    would import it with the CLI. Its own commands, help and exit codes are used as they are.
    """

    def __init__(self, name: str, target: str, help_text: str) -> None:
        super().__init__(name=name, help=help_text, no_args_is_help=True)
        self.target = target  # "module:attribute"

    def _group(self) -> TyperGroup:
        module, attribute = self.target.split(":")
        return typer.main.get_group(getattr(importlib.import_module(module), attribute))

    def list_commands(self, ctx: Any) -> list[str]:
        return self._group().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return self._group().get_command(ctx, cmd_name)


class Commands(TyperGroup):
    """rtlab's commands: the `@app.command()`s below, and `data`."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_command(LazyTyper("data", "rtlab.data.commands:data_app",
                                   "Prepare and inspect datasets."))


app = typer.Typer(
    cls=Commands,
    name="rtlab",
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
    if storage is not None:
        check_storage_or_exit(storage)  # a bad shared database fails in seconds, not after setup
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
    from rtlab.sweep import StorageError, SweepOptions, run_sweep
    from rtlab.sweep.search import SearchChanged

    options = SweepOptions(workers=workers, force=force, tracking_uri=tracking_uri,
                           storage_url=storage, quiet=quiet)
    try:
        summary = run_sweep(prepared, options, console=console, started_at=STARTED_AT,
                            phases=phases)
    except SearchChanged as error:
        fail(f"{file}: {error}")
    except StorageError as error:
        fail(str(error))
    except KeyboardInterrupt:  # a second Ctrl-C: runs are already marked KILLED
        fail("interrupted", code=EXIT_INTERRUPTED)
    show_summary(summary, prepared)
    if summary.stopped:
        raise typer.Exit(EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(1)


def check_storage_or_exit(url: str, create: bool = True) -> None:
    """Exit 2 with one line (password redacted) when the storage cannot be opened; `create=False`
    leaves a SQLite file that does not exist alone (a reader creates nothing)."""
    from rtlab.sweep import StorageError, open_storage
    from rtlab.sweep.optuna_adapter import sqlite_path

    database = sqlite_path(url)
    if not create and database is not None and not database.exists():
        return
    try:
        open_storage(url, create).remove_session()
    except StorageError as error:
        fail(str(error))


def show_plan(prepared: Any, tracking_uri: str | None) -> None:
    from rtlab.plan import plan_table

    if prepared.studies:
        show_studies_plan(prepared)
        return
    from rtlab.report.status import stored_states
    from rtlab.track import resolve_tracking_uri

    states = stored_states(prepared.spec.name, resolve_tracking_uri(tracking_uri))
    table = Table(title=f"{prepared.spec.name}: {len(prepared.runs)} runs (dry run)")
    rows = plan_table(prepared.runs, states)
    for column in ("run", "arm", "grid_point", "seed", "config_hash", "status"):
        table.add_column(column)
    for row in rows:
        done = row["status"] == "FINISHED"
        table.add_row(*(str(row[c]) for c in ("run", "arm", "grid_point", "seed", "config_hash")),
                      f"[green]{row['status']}[/]" if done else row["status"])
    console.print(table)
    todo = sum(1 for r in rows if r["status"] != "FINISHED")
    console.print(f"{todo} to run, {len(rows) - todo} already finished")


def show_studies_plan(prepared: Any) -> None:
    """A searched experiment's plan: a study per arm and grid point; its trials' configs (and
    so their hashes) exist once sampled."""
    first = prepared.studies[0]
    search = first.search
    table = Table(title=f"{prepared.spec.name}: {len(prepared.studies)} studies (dry run)")
    for column in ("study", "arm", "grid point", "trials", "tuning seeds", "confirm seeds"):
        table.add_column(column)
    for plan in prepared.studies:
        point = ", ".join(f"{k}={v}" for k, v in plan.grid_point.items())
        table.add_row(plan.study_name, plan.arm, point, str(search.budget),
                      ", ".join(map(str, plan.tune_seeds)), ", ".join(map(str, plan.confirm_seeds)))
    console.print(table)
    console.print(f"searched: {', '.join(search.params)} · sampler {search.sampler.type} (seed "
                  f"{search.sampler.seed}) · pruner {search.pruner.type} · objective "
                  f"{search.objective}; each arm's best config is then confirmed")


def show_search(summary: Any) -> None:
    """Each study of a searched experiment: budget, states, best configuration."""
    table = Table(title=f"{summary.experiment}: search (each arm tuned on the same budget)")
    for column in ("arm", "done / budget", "complete", "pruned", "failed", "best", "best config"):
        table.add_column(column)
    for study in summary.search["studies"]:
        counts, best = study["counts"], study["best"]
        done = counts["complete"] + counts["pruned"] + counts["failed"]
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (best or {}).get("params", {}).items())
        table.add_row(study["label"], f"{done} / {study['budget']}", str(counts["complete"]),
                      str(counts["pruned"]), str(counts["failed"]),
                      f"{best['value']:.4f}" if best else "—", params or "—")
    console.print(table)
    for note in summary.notes:
        console.print(f"note: {note}")


def show_summary(summary: Any, prepared: Any) -> None:
    """What this sweep did (rtlab.sweep.SweepSummary), then every finished seed by config."""
    from rtlab.report.status import final_val_loss_by_config

    if summary.search is not None:
        show_search(summary)

    if summary.ran:
        table = Table(title=f"{summary.experiment}: this sweep")
        for column in ("run", "status", "final val loss", "note"):
            table.add_column(column)
        for outcome in summary.ran:
            value = outcome.final_val_loss
            table.add_row(outcome.run_name, outcome.status,
                          f"{value:.4f}" if value is not None else "",
                          outcome.failure_reason or "")
        console.print(table)
    runs = summary.confirm_runs if summary.search is not None else prepared.runs
    results = final_val_loss_by_config(runs, summary.experiment, summary.tracking_uri)
    if results:
        table = Table(title="final val loss by arm (all finished seeds)")
        for column in ("arm", "grid point", "seeds", "mean", "sd"):
            table.add_column(column)
        for result in results:
            sd = f"{result.sd:.4f}" if result.sd is not None else "—"
            table.add_row(result.arm, result.grid_point, str(len(result.values)),
                          f"{result.mean:.4f}", sd)
        console.print(table)
    show_timing(summary)


def show_timing(summary: Any) -> None:
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
    console.print(f"tracking: {redact_url(summary.tracking_uri)}  (rtlab ui, or mlflow ui here)")


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
    if spec.search is not None:
        studies = len(spec.arms) * len(spec.grid_points())
        console.print(
            f"{file}: valid · experiment '{spec.name}' · {len(spec.arms)} arms x "
            f"{len(spec.grid_points())} grid points = {studies} studies of "
            f"{spec.search.budget} trials on seed(s) {spec.tune_seeds}, then each arm's best on "
            f"seed(s) {spec.confirm_seeds}"
        )
        return
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
def status(
    file: SpecFile,
    set_: SetOption = None,
    tracking_uri: TrackingOption = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL of the queue and studies (default "
             ".rtlab/<experiment>/optuna.db).")] = None,
) -> None:
    """Table of the experiment's runs: state, arm, seed, step, losses. A searched experiment's
    studies first (trials by state, best so far), then its confirm runs once tuning is done."""
    from rtlab.report.status import run_states
    from rtlab.sweep import StorageError
    from rtlab.track import resolve_tracking_uri

    if storage is not None:
        check_storage_or_exit(storage, create=False)  # a bad URL fails in seconds
    prepared = prepare_or_exit(file, set_)
    try:
        runs = search_status(prepared, storage) if prepared.studies else prepared.runs
        if not runs:
            return
        states = run_states(runs, prepared.spec.name, resolve_tracking_uri(tracking_uri),
                            storage)
    except StorageError as error:
        fail(str(error))
    table = Table(title=f"{prepared.spec.name}: {len(runs)} runs")
    for column in ("state", "run", "arm", "seed", "step", "train loss", "val loss", "best val",
                   "config hash"):
        table.add_column(column)
    for state in states:
        run = state.run
        table.add_row(
            state.state, run.run_name, run.arm, str(run.seed),
            f"{state.step}/{run.train.max_iters}",
            fmt(state.train_loss), fmt(state.val_loss), fmt(state.best_val_loss), run.config_hash,
        )
    console.print(table)


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def search_status(prepared: Any, storage: str | None) -> list[Any]:
    """Print each study's trials by state and its best trial; return the confirm runs once every
    study has spent its budget, else [] (they depend on the best trials)."""
    from rtlab.sweep.search import SearchChanged
    from rtlab.sweep.search_summary import STATE_NAMES, confirm_runs, search_summary, stored_studies

    try:
        studies = stored_studies(prepared.spec.name, prepared.studies, storage)
    except SearchChanged as error:
        console.print(f"{prepared.spec.name}: {error}")
        return []
    if studies is None:
        where = redact_url(storage) if storage else "the local study store"
        console.print(f"{prepared.spec.name}: {len(prepared.studies)} studies, not started "
                      f"(none in {where}: `rtlab run` creates them)")
        return []
    table = Table(title=f"{prepared.spec.name}: tuning, {len(prepared.studies)} studies")
    for column in ("study", "budget", *STATE_NAMES.values(), "best", "best params"):
        table.add_column(column)
    for study in search_summary(studies)["studies"]:
        best = study["best"] or {}
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in best.get("params", {}).items())
        table.add_row(study["study"], str(study["budget"]),
                      *(str(study["counts"][label]) for label in STATE_NAMES.values()),
                      fmt(best.get("value")), params)
    console.print(table)
    if not studies.complete():
        console.print("confirm runs: each study's best configuration, once every budget is spent")
        return []
    runs, notes = confirm_runs(studies)
    for note in notes:
        console.print(note)
    return runs


@app.command()
def ui(
    spec: Annotated[Path | None, typer.Argument(
        help="Experiment YAML; its name selects the experiment whose runs page is printed.",
        show_default=False)] = None,
    experiment: Annotated[str | None, typer.Option(
        "--experiment", "-e", help="Experiment name (instead of a YAML).")] = None,
    tracking_uri: TrackingOption = None,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 exposes it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    open_browser: Annotated[bool, typer.Option(
        "--open", help="Open the runs page in the default browser once the server is up.")
                            ] = False,
) -> None:
    """Serve the MLflow UI on the store (`mlflow ui` with rtlab's tracking URI) and print the URL
    of the experiment's runs page: runs grouped by arm, loss charts first."""
    from rtlab.track import experiment_id, resolve_tracking_uri, runs_page_url, store_exists

    uri = resolve_tracking_uri(tracking_uri)
    if not store_exists(uri):
        fail(f"no MLflow store at {uri} (run `rtlab run FILE` here first, or pass --tracking-uri)")
    server = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    url = server
    name = experiment or (spec_name(spec) if spec is not None else None)
    if name is not None:
        found = experiment_id(uri, name)
        if found is None:
            fail(f"no experiment {name!r} in {uri} (run `rtlab run FILE` first)")
        url = runs_page_url(server, found)
    typer.echo(f"MLflow UI on {server} for {redact_url(uri)} (Ctrl-C to stop)")
    typer.echo(f"runs: {url}")
    sys.stdout.flush()
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port)]
    if open_browser:
        # A helper waits for the server, then opens the page: this process becomes the server.
        subprocess.Popen([sys.executable, "-c", "import sys; from rtlab.cli import "
                          "open_when_serving; open_when_serving(*sys.argv[1:])", url, server],
                         start_new_session=True)
    # Become the server (no wrapper process): signals to `rtlab ui` reach MLflow itself.
    os.execv(sys.executable, command)


def spec_name(path: Path) -> str:
    from rtlab.spec import SpecError, load_spec

    try:
        return load_spec(path).name
    except SpecError as error:
        fail(str(error))


def open_when_serving(url: str, server: str, timeout: float = 120.0) -> None:
    """Open `url` in the default browser as soon as `server` answers (`rtlab ui --open`)."""
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(server, timeout=2).close()
        except OSError:
            time.sleep(0.5)
            continue
        webbrowser.open(url)
        return


@app.command()
def dashboard(
    file: SpecFile,
    set_: SetOption = None,
    storage: Annotated[str | None, typer.Option(
        help="Optuna storage URL (default .rtlab/<experiment>/optuna.db).")] = None,
    port: Annotated[int, typer.Option(help="Port (the server binds to 127.0.0.1 only).")] = 8080,
) -> None:
    """Open optuna-dashboard on the experiment's studies (optional extra: rtlab[dashboard])."""
    from rtlab.spec import SpecError
    from rtlab.sweep.dashboard import DashboardError, dashboard_launch

    try:
        launch = dashboard_launch(file, set_ or (), storage, port)
    except (SpecError, DashboardError) as error:
        fail(str(error))
    console.print(f"optuna-dashboard on {launch.url} for {redact_url(launch.storage)} "
                  "(Ctrl-C to stop)")
    sys.stdout.flush()
    os.execv(launch.argv[0], launch.argv)  # become the server: signals reach it directly


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
    heartbeat: Annotated[float, typer.Option(
        min=0.5, help="Seconds between heartbeats; after 2 missed ones, live workers take this "
                      "worker's run for dead and run it again.")] = 30.0,
) -> None:
    """Join a running sweep from this machine: pull queued runs until none remain (and, while
    other workers run the last ones, take over any whose worker dies).

    Start the sweep with `rtlab run FILE --storage URL --tracking-uri URI` where both URLs reach
    a shared database / MLflow server; then `rtlab worker --study NAME --storage URL
    --tracking-uri URI` on each extra machine.
    """
    import signal
    import threading

    from rtlab.sweep import (
        RunFailedUnderTorchrun,
        StorageError,
        StorageLost,
        WorkerConfig,
        experiment_state_dir,
        run_worker,
    )
    from rtlab.sweep.progress import SweepDisplay

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    config = WorkerConfig(
        storage_url=storage, study_name=study,
        state_dir=str(state_dir or experiment_state_dir(study)),
        tracking_uri=tracking_uri, threads=threads, heartbeat_seconds=heartbeat,
    )
    display = SweepDisplay(total_runs=0, quiet=True)
    try:
        outcomes = run_worker(config, display.handle, stop.is_set)
    except KeyError:
        fail(f"no study '{study}' in {redact_url(storage)}")
    except (StorageLost, RunFailedUnderTorchrun) as error:  # the rest stay queued
        fail(str(error), code=1)
    except StorageError as error:
        fail(str(error))
    except Exception as error:
        from rtlab.track import lost_server_reason

        reason = lost_server_reason(error)  # finished runs are FINISHED on the server already
        if reason is None:
            raise
        fail(reason, code=1)
    console.print(f"worker done: {len(outcomes)} run(s)")
    if stop.is_set():
        raise typer.Exit(EXIT_INTERRUPTED)


# ---------------------------------------------------------------------------------------------
# report, reproduce


@app.command()
def report(
    spec: Annotated[Path | None, typer.Argument(
        help="Experiment YAML; its name selects the MLflow experiment.")] = None,
    experiment: Annotated[str | None, typer.Option(
        "--experiment", "-e", help="Experiment name (instead of a YAML).")] = None,
    tracking_uri: TrackingOption = None,
    out: Annotated[Path, typer.Option("--out", help="Reports folder.")] = Path("reports"),
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Arm to compare against (default: inferred).")] = None,
    log_artifacts: Annotated[bool, typer.Option(
        "--log-artifacts/--no-log-artifacts",
        help="Also log the report as artifacts of the experiment's parent run.")] = True,
) -> None:
    """Write reports/<experiment>/: figures, tables, claims check, report.md and report.html."""
    if spec is None and experiment is None:
        fail("error: give EXPERIMENT.yaml or --experiment NAME")
    from rtlab.report import ReportError, build_report

    try:
        result = build_report(experiment, tracking_uri, out, spec_path=spec,
                              log_to_mlflow=log_artifacts, baseline_arm=baseline)
    except ReportError as error:
        fail(f"error: {error}")
    for message in result.messages:
        typer.echo(f"note: {message}", err=True)
    for verdict in result.claims:
        typer.echo(f"claim {verdict.claim.get('arm')} vs {verdict.claim.get('baseline_arm')}: "
                   f"{verdict.verdict}")
    logged = f"; logged to run {result.logged_to_run}" if result.logged_to_run else ""
    typer.echo(
        f"report: {result.report_html} ({result.n_included}/{result.n_runs} runs in aggregates, "
        f"baseline {result.baseline_arm}, {result.seconds['total']:.1f} s{logged})"
    )


@app.command()
def reproduce(
    report_dir: Annotated[Path, typer.Argument(
        help="Report folder (reports/<experiment>) holding manifest.json.")],
    tolerance: Annotated[float, typer.Option(
        "--tolerance",
        help="Largest absolute loss difference still counted as reproduced (default 0: "
        "bit for bit, as CPU runs are). Token and FLOP counts must always be equal.")] = 0.0,
    workdir: Annotated[Path | None, typer.Option(
        "--workdir",
        help="Fresh folder for the rerun's store and state (kept); default: a temporary "
        "folder, removed afterwards unless --keep.")] = None,
    spec: Annotated[Path | None, typer.Option(
        "--spec", help="Rerun this YAML instead of the spec text the report recorded (with "
        "the --set overrides it recorded).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Passed to `rtlab run --workers`.")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary working folder.")
                    ] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the comparison as JSON here.")] = None,
) -> None:
    """Rerun a reported study into a fresh store and compare its final metrics with the report."""
    from rtlab.reproduce import DIFFERS, MISSING, ReproduceError, reproduce_study

    try:
        result = reproduce_study(report_dir, tolerance=tolerance, workdir=workdir, spec=spec,
                                 workers=workers, keep=keep,
                                 say=lambda line: typer.echo(line, err=True))
    except ReproduceError as error:
        fail(f"error: {error}")
    show_comparison(result.comparison, result.versions)
    if json_out is not None:
        json_out.write_text(json.dumps(result.comparison.to_json(), indent=2) + "\n")
    if result.comparison.verdict in (DIFFERS, MISSING):
        raise typer.Exit(1)


def show_comparison(comparison: Any, versions: list[tuple[str, str | None, str | None]]) -> None:
    """Versions recorded vs now, then recorded vs reproduced, metric by metric, run by run."""
    from rtlab.reproduce import DIFFERS, IDENTICAL, MISSING, VERDICT_ORDER, WITHIN

    wide = Console(width=max(120, shutil.get_terminal_size((120, 24)).columns))
    header = Table(title="versions", show_edge=False)
    for column in ("", "recorded", "reproduced"):
        header.add_column(column)
    for name, recorded, current in versions:
        header.add_row(name, str(recorded), str(current),
                       style="" if recorded == current else "yellow")
    wide.print(header)
    table = Table(title=f"rtlab reproduce: {comparison.experiment}")
    for column in ("run", "config hash", "metric", "recorded", "reproduced", "diff", "verdict"):
        table.add_column(column, no_wrap=column != "run")
    colours = {IDENTICAL: "green", WITHIN: "cyan", DIFFERS: "red", MISSING: "red"}
    for row in comparison.runs:
        label = f"{row.run_name} ({row.arm}, seed {row.seed})"
        if not row.metrics:
            table.add_row(label, row.config_hash, "-", "-", "-", "-", row.verdict, style="red")
            if row.note:
                table.add_row("", "", row.note, "", "", "", "")
            continue
        for index, metric in enumerate(row.metrics):
            diff = "" if metric.difference in (None, 0.0) else f"{metric.difference:+.3g}"
            table.add_row(label if index == 0 else "", row.config_hash if index == 0 else "",
                          metric.metric, _number_text(metric.recorded, metric.metric),
                          _number_text(metric.reproduced, metric.metric), diff,
                          f"[{colours[metric.verdict]}]{metric.verdict}[/]")
        if row.note:
            table.add_row("", "", row.note, "", "", "", f"[red]{DIFFERS}[/]")
        table.add_section()
    wide.print(table)
    counts = {v: sum(row.verdict == v for row in comparison.runs) for v in VERDICT_ORDER}
    wide.print(f"runs: {', '.join(f'{n} {v}' for v, n in counts.items() if n) or 'none'}")
    tolerance = f" (tolerance {comparison.tolerance:g})" if comparison.tolerance else ""
    # One plain line for scripts: `grep '^verdict: identical'`.
    print(f"verdict: {comparison.verdict}{tolerance}", flush=True)


def _number_text(value: float | None, metric: str) -> str:
    from rtlab.reproduce import COUNT_METRICS

    if value is None:
        return "-"
    if metric in COUNT_METRICS and value.is_integer():
        return f"{value:.0f}"  # every digit: a count off by one must show
    return repr(value)  # the shortest text that round-trips: shows bit-level differences


def main() -> None:  # `python -m rtlab.cli`
    app()


if __name__ == "__main__":
    main()
