"""`rtlab reproduce reports/<experiment>`: rerun a reported study and check its numbers.

The report's manifest.json records the spec text, the `--set` overrides the study was run with,
the versions, and each run's config hash, resolved config and final metrics. `reproduce_study`
reruns the study with `rtlab run` (same spec text, same overrides) in a subprocess, into a fresh
MLflow store and rtlab state in a temporary (or given) working directory, reads the reproduced
final metrics back from that store, and compares recorded with reproduced run by run (matched by
config hash), with a verdict:

- identical: every compared number is bit for bit the same (what CPU runs give);
- within tolerance: every loss differs by at most --tolerance (absolute), counts are equal;
- differs: something is further apart, a run is missing, or a status changed (exit code 1).

`rtlab reproduce` (rtlab/cli.py) parses its options, calls `reproduce_study` and renders the
comparison.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtlab.config import RunConfig
from rtlab.plan import flatten_config
from rtlab.track.names import (
    BEST_VAL_LOSS,
    FINAL_TRAIN_LOSS,
    FINAL_VAL_LOSS,
    FLOPS_SEEN,
    TOKENS_SEEN,
)

# Losses may move by float noise on other hardware: compared against --tolerance.
LOSS_METRICS = (FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, BEST_VAL_LOSS)
# Counts follow from the config alone: any difference means a different study.
COUNT_METRICS = (TOKENS_SEEN, FLOPS_SEEN)
COMPARED_METRICS = LOSS_METRICS + COUNT_METRICS

IDENTICAL = "identical"
WITHIN = "within tolerance"
DIFFERS = "differs"
MISSING = "missing"
# Worst first: the overall verdict is the worst of the runs'.
VERDICT_ORDER = (MISSING, DIFFERS, WITHIN, IDENTICAL)
# Files in a working directory that mean it already holds a store: not fresh.
STATE_ENTRIES = ("mlflow.db", "mlruns", "mlartifacts", ".rtlab")
VERSION_KEYS = ("rtlab_version", "python", "torch", "git_commit", "git_dirty")


class ReproduceError(ValueError):
    """Bad input (manifest, spec, working directory): exit code 2 with this message."""


@dataclass(frozen=True)
class RunResult:
    """One run's identity and final numbers, from a manifest or from a store."""

    config_hash: str
    run_name: str
    arm: str
    seed: int | None
    status: str
    metrics: dict[str, float | None]
    config: RunConfig | None = None  # the resolved config; None where not recorded


@dataclass(frozen=True)
class Manifest:
    experiment: str
    spec_path: str | None
    spec_text: str | None
    versions: dict[str, str | None]
    runs: list[RunResult]
    overrides: tuple[str, ...] | None = None  # `rtlab run --set`; None: not recorded


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


@dataclass(frozen=True)
class Reproduction:
    comparison: Comparison
    versions: list[tuple[str, str | None, str | None]]  # (name, recorded, now)


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
    data = _read_json(path)
    experiment = data.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        raise ReproduceError(f"{path}: key 'experiment': missing or not a string")
    spec_text = data.get("spec_text")
    spec_path = data.get("spec_path")
    return Manifest(
        experiment=experiment,
        spec_path=spec_path if isinstance(spec_path, str) else None,
        spec_text=spec_text if isinstance(spec_text, str) and spec_text.strip() else None,
        versions={
            key: (str(data[key]) if data.get(key) is not None else None) for key in VERSION_KEYS
        },
        runs=_recorded_runs(path, data.get("runs")),
        overrides=_recorded_overrides(path, data.get("overrides")),
    )


def _read_json(path: Path) -> dict[str, Any]:
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
    return data


def _recorded_runs(path: Path, raw_runs: Any) -> list[RunResult]:
    if not isinstance(raw_runs, list):
        raise ReproduceError(f"{path}: key 'runs': missing or not a list")
    runs = [_recorded_run(f"{path}: key 'runs[{index}]", raw)
            for index, raw in enumerate(raw_runs)]
    hashes = [run.config_hash for run in runs]
    duplicates = sorted({h for h in hashes if hashes.count(h) > 1})
    if duplicates:
        raise ReproduceError(f"{path}: key 'runs': config hash repeated: {', '.join(duplicates)}")
    return runs


def _recorded_run(where: str, raw: Any) -> RunResult:
    if not isinstance(raw, dict):
        raise ReproduceError(f"{where}': expected an object")
    config_hash = raw.get("config_hash")
    if not isinstance(config_hash, str) or not config_hash:
        raise ReproduceError(f"{where}.config_hash': missing or not a string")
    seed = raw.get("seed")
    config = None
    if isinstance(raw.get("config"), dict):
        try:
            config = RunConfig.model_validate(raw["config"])
        except ValueError:  # written by an rtlab whose config differs: compared without it
            config = None
    return RunResult(
        config_hash=config_hash,
        run_name=str(raw.get("run_name") or config_hash),
        arm=str(raw.get("arm") or "?"),
        seed=seed if isinstance(seed, int) else None,
        status=str(raw.get("status") or "FINISHED"),
        metrics={key: _number(raw.get(key)) for key in COMPARED_METRICS},
        config=config,
    )


def _recorded_overrides(path: Path, raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ReproduceError(f"{path}: key 'overrides': expected a list of strings")
    return tuple(raw)


def read_store_runs(tracking_uri: str, experiment: str) -> dict[str, RunResult]:
    """Child runs of `experiment` in the store, by config hash, picked as the report picks them
    (rtlab.track: a FINISHED run wins; among several, the latest)."""
    from rtlab.track.records import read_runs_by_hash, run_config

    return {
        config_hash: RunResult(
            config_hash=config_hash,
            run_name=run.name,
            arm=run.arm or "?",
            seed=run.seed,
            status=run.status,
            metrics={key: _number(run.metrics.get(key)) for key in COMPARED_METRICS},
            config=run_config(run, experiment),
        )
        for config_hash, run in read_runs_by_hash(experiment, tracking_uri).items()
    }


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


def check_tolerance(tolerance: float) -> None:
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ReproduceError(f"--tolerance must be a finite number >= 0, got {tolerance}")


def compare_runs(
    experiment: str,
    recorded: list[RunResult],
    reproduced: dict[str, RunResult],
    tolerance: float,
) -> Comparison:
    """Match runs by config hash and grade each compared metric."""
    check_tolerance(tolerance)
    by_name = {run.run_name: run for run in reproduced.values()}
    rows = [
        _compare_run(record, reproduced.get(record.config_hash), by_name.get(record.run_name),
                     tolerance)
        for record in sorted(recorded, key=lambda run: (run.run_name, run.config_hash))
    ]
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


def _compare_run(
    record: RunResult, again: RunResult | None, namesake: RunResult | None, tolerance: float
) -> RunComparison:
    """One recorded run against its rerun (same config hash); `namesake` is the rerun's run of
    the same name, whose config says why the hashes differ when there is no rerun."""
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
        changed = config_changes(record.config, namesake.config if namesake else None)
        if changed:
            row.note += f"; the rerun's {record.run_name} has {changed}"
        return row
    row.metrics = [
        compare_metric(metric, record.metrics.get(metric), again.metrics.get(metric), tolerance)
        for metric in COMPARED_METRICS
    ]
    verdicts = [m.verdict for m in row.metrics]
    if record.status != again.status:
        verdicts.append(DIFFERS)
        row.note = f"status {record.status} -> {again.status}"
    row.verdict = worst(verdicts)
    return row


def config_changes(recorded: RunConfig | None, rerun: RunConfig | None, limit: int = 3) -> str:
    """'model.n_layer 2 (recorded 1), ...': where two resolved configs differ; '' when either is
    unknown or they agree."""
    if recorded is None or rerun is None:
        return ""
    before, after = flatten_config(recorded.sections()), flatten_config(rerun.sections())
    keys = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
    text = ", ".join(f"{k} {after.get(k)!r} (recorded {before.get(k)!r})" for k in keys[:limit])
    return text + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


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


def rerun_study(
    spec_file: Path, overrides: tuple[str, ...], workdir: Path, tracking_uri: str,
    workers: int | None,
) -> int:
    """`rtlab run SPEC --set ...` in a subprocess (its own process, like a user's), in
    `workdir`; returns its exit code."""
    command = [sys.executable, "-c", "from rtlab.cli import app; app(prog_name='rtlab')"]
    command += ["run", str(spec_file)]
    for override in overrides:
        command += ["--set", override]
    if workers is not None:
        command += ["--workers", str(workers)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.run(command, cwd=workdir, env=env, check=False).returncode


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reproduce_study(
    report_dir: Path,
    *,
    tolerance: float = 0.0,
    workdir: Path | None = None,
    spec: Path | None = None,
    workers: int | None = None,
    keep: bool = False,
    say: Callable[[str], None] = _stderr,
) -> Reproduction:
    """Rerun the reported study (its spec text, or `spec`, with its recorded overrides) into a
    fresh store in `workdir` (default: a temporary folder, removed unless `keep`) and compare
    its runs with the report's. `say` gets progress lines. Raises ReproduceError for bad input
    and when `rtlab run` rejects the spec."""
    manifest = load_manifest(report_dir)
    check_tolerance(tolerance)
    if workers is not None and workers < 1:
        raise ReproduceError(f"--workers must be >= 1, got {workers}")
    work, temporary = prepare_workdir(workdir)
    try:
        comparison = _rerun_and_compare(manifest, spec, work, workers, tolerance, say)
    finally:
        if temporary and not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif temporary:
            say(f"kept {work}")
    now = current_versions()
    return Reproduction(comparison, [(key, manifest.versions.get(key), now[key]) for key in now])


def _rerun_and_compare(
    manifest: Manifest, spec: Path | None, work: Path, workers: int | None, tolerance: float,
    say: Callable[[str], None],
) -> Comparison:
    spec_file = write_spec(manifest, spec, work)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = manifest.overrides or ()
    with_sets = "".join(f" --set {override}" for override in overrides)
    say(f"reproducing {manifest.experiment!r} from {spec_file}{with_sets} in {work}")
    if manifest.overrides is None:
        say("note: the report records no --set overrides (made by an older rtlab?): rerunning "
            "the spec as written")
    returncode = rerun_study(spec_file, overrides, work, tracking_uri, workers)
    if returncode == 2:
        raise ReproduceError("`rtlab run` rejected the spec (see above)")
    if returncode != 0:
        say(f"note: `rtlab run` exited with {returncode}; comparing what ran")
    return compare_runs(
        manifest.experiment, manifest.runs, read_store_runs(tracking_uri, manifest.experiment),
        tolerance,
    )
