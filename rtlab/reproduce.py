"""`rtlab reproduce reports/<experiment>`: rerun a reported study and check its numbers.

The report's manifest.json records the spec text, the versions, and each run's config hash and
final metrics. This command reruns the study with `rtlab run` in a subprocess, into a fresh
MLflow store and rtlab state in a temporary (or given) working directory, reads the reproduced
final metrics back from that store, and prints recorded vs reproduced side by side, run by run
(matched by config hash), with a verdict:

- identical: every compared number is bit for bit the same (what CPU runs give);
- within tolerance: every loss differs by at most --tolerance (absolute), counts are equal;
- differs: something is further apart, a run is missing, or a status changed (exit code 1).

Registered by rtlab/cli.py as `app.command("reproduce")(reproduce_command)`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

# Losses may move by float noise on other hardware: compared against --tolerance.
LOSS_METRICS = ("final_train_loss", "final_val_loss", "best_val_loss")
# Counts follow from the config alone: any difference means a different study.
COUNT_METRICS = ("tokens_seen", "flops_seen")
COMPARED_METRICS = LOSS_METRICS + COUNT_METRICS

IDENTICAL = "identical"
WITHIN = "within tolerance"
DIFFERS = "differs"
MISSING = "missing"
# Worst first: the overall verdict is the worst of the runs'.
VERDICT_ORDER = (MISSING, DIFFERS, WITHIN, IDENTICAL)
# Files in a working directory that mean it already holds a store: not fresh.
STATE_ENTRIES = ("mlflow.db", "mlruns", "mlartifacts", ".rtlab")


class ReproduceError(ValueError):
    """Bad input (manifest, spec, working directory): exit code 2 with this message."""


@dataclass(frozen=True)
class RunRecord:
    """One run's identity and final numbers, from a manifest or from a store."""

    config_hash: str
    run_name: str
    arm: str
    seed: int | None
    status: str
    metrics: dict[str, float | None]


@dataclass(frozen=True)
class Manifest:
    experiment: str
    spec_path: str | None
    spec_text: str | None
    versions: dict[str, str | None]
    runs: list[RunRecord]


@dataclass
class MetricComparison:
    metric: str
    recorded: float | None
    reproduced: float | None
    difference: float | None
    verdict: str


@dataclass
class RunComparison:
    config_hash: str
    run_name: str
    arm: str
    seed: int | None
    recorded_status: str | None
    reproduced_status: str | None
    verdict: str
    metrics: list[MetricComparison] = field(default_factory=list)
    note: str = ""


@dataclass
class Comparison:
    experiment: str
    tolerance: float
    verdict: str
    runs: list[RunComparison]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- reading ---------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A metric as a float, None for absent or non-finite (JSON has no NaN)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def load_manifest(report_dir: Path) -> Manifest:
    """Read reports/<experiment>/manifest.json; ReproduceError names the file and key."""
    path = report_dir if report_dir.suffix == ".json" else report_dir / "manifest.json"
    if not path.exists():
        raise ReproduceError(f"{path}: not found (give a report folder written by rtlab report)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReproduceError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ReproduceError(f"{path}: cannot read: {error}") from None
    if not isinstance(data, dict):
        raise ReproduceError(f"{path}: expected a JSON object at the top level")
    experiment = data.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        raise ReproduceError(f"{path}: key 'experiment': missing or not a string")
    raw_runs = data.get("runs")
    if not isinstance(raw_runs, list):
        raise ReproduceError(f"{path}: key 'runs': missing or not a list")
    runs = []
    for index, raw in enumerate(raw_runs):
        where = f"{path}: key 'runs[{index}]"
        if not isinstance(raw, dict):
            raise ReproduceError(f"{where}': expected an object")
        config_hash = raw.get("config_hash")
        if not isinstance(config_hash, str) or not config_hash:
            raise ReproduceError(f"{where}.config_hash': missing or not a string")
        seed = raw.get("seed")
        runs.append(
            RunRecord(
                config_hash=config_hash,
                run_name=str(raw.get("run_name") or config_hash),
                arm=str(raw.get("arm") or "?"),
                seed=seed if isinstance(seed, int) else None,
                status=str(raw.get("status") or "FINISHED"),
                metrics={key: _number(raw.get(key)) for key in COMPARED_METRICS},
            )
        )
    hashes = [run.config_hash for run in runs]
    duplicates = sorted({h for h in hashes if hashes.count(h) > 1})
    if duplicates:
        raise ReproduceError(f"{path}: key 'runs': config hash repeated: {', '.join(duplicates)}")
    spec_text = data.get("spec_text")
    spec_path = data.get("spec_path")
    return Manifest(
        experiment=experiment,
        spec_path=spec_path if isinstance(spec_path, str) else None,
        spec_text=spec_text if isinstance(spec_text, str) and spec_text.strip() else None,
        versions={
            key: (str(data[key]) if data.get(key) is not None else None)
            for key in ("rtlab_version", "python", "torch", "git_commit", "git_dirty")
        },
        runs=runs,
    )


def read_store_runs(tracking_uri: str, experiment: str) -> dict[str, RunRecord]:
    """Child runs of `experiment` in the store, by config hash, picked as the report picks them
    (rtlab.track: a FINISHED run wins; among several, the latest)."""
    from rtlab.track import read_experiment_runs  # late: MLflow is heavy for `rtlab --help`

    by_hash: dict[str, RunRecord] = {}
    for config_hash, run in read_experiment_runs(experiment, tracking_uri).items():
        tags = run.data.tags
        seed = tags.get("rtlab.seed")
        by_hash[config_hash] = RunRecord(
            config_hash=config_hash,
            run_name=run.info.run_name or config_hash,
            arm=tags.get("rtlab.arm", "?"),
            seed=int(seed) if seed and seed.lstrip("-").isdigit() else None,
            status=run.info.status,
            metrics={key: _number(run.data.metrics.get(key)) for key in COMPARED_METRICS},
        )
    return by_hash


# ---- comparing -------------------------------------------------------------------------------


def compare_metric(
    metric: str, recorded: float | None, reproduced: float | None, tolerance: float
) -> MetricComparison:
    if recorded is None and reproduced is None:
        return MetricComparison(metric, None, None, None, IDENTICAL)
    if recorded is None or reproduced is None:
        return MetricComparison(metric, recorded, reproduced, None, MISSING)
    difference = reproduced - recorded
    if reproduced == recorded:
        verdict = IDENTICAL
    elif metric in LOSS_METRICS and abs(difference) <= tolerance:
        verdict = WITHIN
    else:
        verdict = DIFFERS
    return MetricComparison(metric, recorded, reproduced, difference, verdict)


def worst(verdicts: list[str]) -> str:
    return min(verdicts, key=VERDICT_ORDER.index) if verdicts else IDENTICAL


def compare_runs(
    experiment: str,
    recorded: list[RunRecord],
    reproduced: dict[str, RunRecord],
    tolerance: float,
) -> Comparison:
    """Match runs by config hash and grade each compared metric."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ReproduceError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    rows = []
    for record in sorted(recorded, key=lambda run: (run.run_name, run.config_hash)):
        again = reproduced.get(record.config_hash)
        row = RunComparison(
            config_hash=record.config_hash,
            run_name=record.run_name,
            arm=record.arm,
            seed=record.seed,
            recorded_status=record.status,
            reproduced_status=again.status if again else None,
            verdict=MISSING,
        )
        if again is None:
            row.note = "no reproduced run with this config hash"
        else:
            row.metrics = [
                compare_metric(
                    metric, record.metrics.get(metric), again.metrics.get(metric), tolerance
                )
                for metric in COMPARED_METRICS
            ]
            verdicts = [m.verdict for m in row.metrics]
            if record.status != again.status:
                verdicts.append(DIFFERS)
                row.note = f"status {record.status} -> {again.status}"
            row.verdict = worst(verdicts)
        rows.append(row)
    recorded_hashes = {record.config_hash for record in recorded}
    for config_hash, again in sorted(reproduced.items()):
        if config_hash not in recorded_hashes:
            # A run the report does not have: the spec expands differently now.
            rows.append(
                RunComparison(
                    config_hash=config_hash,
                    run_name=again.run_name,
                    arm=again.arm,
                    seed=again.seed,
                    recorded_status=None,
                    reproduced_status=again.status,
                    verdict=DIFFERS,
                    note="not in the report",
                )
            )
    overall = worst([row.verdict for row in rows]) if rows else MISSING
    return Comparison(experiment, tolerance, overall, rows)


# ---- showing ---------------------------------------------------------------------------------


def _format(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric in COUNT_METRICS and value.is_integer():
        return f"{value:.0f}"  # every digit: a count off by one must show
    return repr(value)  # the shortest text that round-trips: shows bit-level differences


def render(comparison: Comparison, versions: list[tuple[str, str | None, str | None]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, shutil.get_terminal_size((120, 24)).columns))
    header = Table(title="versions", show_edge=False)
    for column in ("", "recorded", "reproduced"):
        header.add_column(column)
    for name, recorded, current in versions:
        style = "" if recorded == current else "yellow"
        header.add_row(name, str(recorded), str(current), style=style)
    console.print(header)

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
            table.add_row(
                label if index == 0 else "",
                row.config_hash if index == 0 else "",
                metric.metric,
                _format(metric.recorded, metric.metric),
                _format(metric.reproduced, metric.metric),
                diff,
                f"[{colours[metric.verdict]}]{metric.verdict}[/]",
            )
        if row.note:
            table.add_row("", "", row.note, "", "", "", f"[red]{DIFFERS}[/]")
        table.add_section()
    console.print(table)
    counts = {v: sum(row.verdict == v for row in comparison.runs) for v in VERDICT_ORDER}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    tolerance = f" (tolerance {comparison.tolerance:g})" if comparison.tolerance else ""
    console.print(f"runs: {summary or 'none'}")
    # One plain line for scripts: `grep '^verdict: identical'`.
    print(f"verdict: {comparison.verdict}{tolerance}", flush=True)


def current_versions() -> dict[str, str | None]:
    import rtlab
    from rtlab.track.provenance import git_state

    try:
        from importlib.metadata import version

        torch_version: str | None = version("torch")
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        torch_version = None
    commit, dirty = git_state()
    return {
        "rtlab_version": rtlab.__version__,
        "python": platform.python_version(),
        "torch": torch_version,
        "git_commit": commit,
        "git_dirty": None if dirty is None else str(dirty),
    }


# ---- rerunning -------------------------------------------------------------------------------


def prepare_workdir(workdir: Path | None) -> tuple[Path, bool]:
    """The fresh working directory and whether it is a temporary one of ours."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="rtlab-reproduce-")), True
    if workdir.exists() and not workdir.is_dir():
        raise ReproduceError(f"--workdir {workdir}: exists and is not a directory")
    stale = [name for name in STATE_ENTRIES if (workdir / name).exists()]
    if stale:
        raise ReproduceError(
            f"--workdir {workdir}: not fresh (holds {', '.join(stale)}); "
            "reproduce needs an empty store: give a new folder"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir.resolve(), False


def write_spec(manifest: Manifest, spec: Path | None, workdir: Path) -> Path:
    """The spec file to rerun: --spec, else the recorded text written into the workdir."""
    if spec is not None:
        if not spec.is_file():
            raise ReproduceError(f"--spec {spec}: not found")
        return spec.resolve()
    if manifest.spec_text is None:
        raise ReproduceError(
            f"manifest of {manifest.experiment!r} records no spec_text: pass --spec FILE"
        )
    name = Path(manifest.spec_path).name if manifest.spec_path else f"{manifest.experiment}.yaml"
    path = workdir / name
    path.write_text(manifest.spec_text)
    return path


def rerun_study(spec_file: Path, workdir: Path, tracking_uri: str, workers: int | None) -> int:
    """`rtlab run SPEC` in a subprocess (its own process, like a user's), in `workdir`."""
    command = [sys.executable, "-c", "from rtlab.cli import app; app(prog_name='rtlab')"]
    command += ["run", str(spec_file)]
    if workers is not None:
        command += ["--workers", str(workers)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.run(command, cwd=workdir, env=env, check=False).returncode


# ---- the command -----------------------------------------------------------------------------


def reproduce_command(
    report_dir: Annotated[
        Path, typer.Argument(help="Report folder (reports/<experiment>) holding manifest.json.")
    ],
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            help="Largest absolute loss difference still counted as reproduced (default 0: "
            "bit for bit, as CPU runs are). Token and FLOP counts must always be equal.",
        ),
    ] = 0.0,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            help="Fresh folder for the rerun's store and state (kept); default: a temporary "
            "folder, removed afterwards unless --keep.",
        ),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", help="Rerun this YAML instead of the spec text the report recorded."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Passed to `rtlab run --workers`.")
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary working folder.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the comparison as JSON here.")
    ] = None,
) -> None:
    """Rerun a reported study into a fresh store and compare its final metrics with the report."""
    try:
        manifest = load_manifest(report_dir)
        if tolerance < 0 or not math.isfinite(tolerance):
            raise ReproduceError(f"--tolerance must be a finite number >= 0, got {tolerance}")
        if workers is not None and workers < 1:
            raise ReproduceError(f"--workers must be >= 1, got {workers}")
        work, temporary = prepare_workdir(workdir)
    except ReproduceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        try:
            spec_file = write_spec(manifest, spec, work)
        except ReproduceError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        typer.echo(f"reproducing {manifest.experiment!r} from {spec_file} in {work}", err=True)
        returncode = rerun_study(spec_file, work, tracking_uri, workers)
        if returncode == 2:
            typer.echo("error: `rtlab run` rejected the spec (see above)", err=True)
            raise typer.Exit(2)
        if returncode != 0:
            typer.echo(f"note: `rtlab run` exited with {returncode}; comparing what ran", err=True)
        comparison = compare_runs(
            manifest.experiment,
            manifest.runs,
            read_store_runs(tracking_uri, manifest.experiment),
            tolerance,
        )
        now = current_versions()
        render(
            comparison,
            [(key, manifest.versions.get(key), now.get(key)) for key in now],
        )
        if json_out is not None:
            json_out.write_text(json.dumps(comparison.to_json(), indent=2) + "\n")
    finally:
        if temporary and not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            typer.echo(f"kept {work}", err=True)
    if comparison.verdict in (DIFFERS, MISSING):
        raise typer.Exit(1)
