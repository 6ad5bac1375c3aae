"""`rtlab report`: a thin Typer command over build_report (registered by rtlab/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rtlab.report.errors import ReportError


def report_command(
    spec: Annotated[
        Path | None,
        typer.Argument(help="Experiment YAML; its name selects the MLflow experiment."),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Experiment name (instead of a YAML).")
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow store; default: $MLFLOW_TRACKING_URI or "
                     "sqlite:///mlflow.db."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Reports folder.")] = Path("reports"),
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Arm to compare against (default: inferred).")
    ] = None,
    log_artifacts: Annotated[
        bool,
        typer.Option("--log-artifacts/--no-log-artifacts",
                     help="Also log the report as artifacts of the experiment's parent run."),
    ] = True,
) -> None:
    """Write reports/<experiment>/: figures, tables, claims check, report.md and report.html."""
    if spec is None and experiment is None:
        typer.echo("error: give EXPERIMENT.yaml or --experiment NAME", err=True)
        raise typer.Exit(2)
    from rtlab.report.build import build_report  # heavy imports only when the command runs

    try:
        result = build_report(experiment, tracking_uri, out, spec_path=spec,
                              log_to_mlflow=log_artifacts, baseline_arm=baseline)
    except ReportError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
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
