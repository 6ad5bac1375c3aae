"""build_report: MLflow experiment -> reports/<experiment>/ (md, html, figures, tables, manifest).

The report is assembled in a sibling temporary folder and moved into place at the end, so a
failure never leaves a half-written report behind.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import yaml

import rtlab
from rtlab.report import document as doc
from rtlab.report.claims import ClaimVerdict, check_claims
from rtlab.report.classes import class_frame, class_markdown_rows
from rtlab.report.errors import ReportError
from rtlab.report.figures import FigureMaker
from rtlab.report.load import ExperimentData, load_experiment
from rtlab.report.search import SearchSection, search_section
from rtlab.report.tables import (
    deltas_markdown_rows,
    fmt_p,
    fmt_seeds,
    matched_compute_frame,
    matched_markdown_rows,
    runs_markdown_rows,
    summary_frame,
    summary_markdown_rows,
)
from rtlab.track.names import (
    BEST_VAL_LOSS,
    FINAL_TRAIN_LOSS,
    FINAL_VAL_LOSS,
    FLOPS_SEEN,
    REPORT_DIR,
    SPEC_ARTIFACT,
    TOKENS_SEEN,
    TRAIN_LOSS,
    VAL_LOSS,
)
from rtlab.track.provenance import git_state
from rtlab.track.records import artifact_files, log_directory, read_text_artifact, run_config
from rtlab.urls import public_store_uri


@dataclass
class SpecInfo:
    """What the report uses from a spec, whether it came via rtlab.spec or plain YAML."""

    name: str
    path: str | None
    text: str
    description: str = ""
    arms: list[str] = field(default_factory=list)
    claims: list[object] = field(default_factory=list)
    origin: str = ""  # where the text came from, in words, when not a file given by the user


@dataclass
class ReportResult:
    experiment: str
    out_dir: Path
    report_md: Path
    report_html: Path
    manifest: Path
    figures: list[Path]
    tables: list[Path]
    claims: list[ClaimVerdict]
    messages: list[str]
    baseline_arm: str | None
    n_runs: int
    n_included: int
    logged_to_run: str | None
    seconds: dict[str, float]


# ---- spec -------------------------------------------------------------------------------------

def _spec_info_from(spec: object, path: str | None, text: str) -> SpecInfo:
    get = spec.get if isinstance(spec, dict) else (lambda key, default=None: getattr(
        spec, key, default))
    variants = get("variants", None) or {}
    return SpecInfo(
        name=str(get("name", "") or ""),
        path=path,
        text=text,
        description=str(get("description", "") or ""),
        arms=[str(arm) for arm in variants],
        claims=list(get("claims", None) or []),
    )


def load_spec_info(spec_path: Path) -> SpecInfo:
    """Validate with rtlab.spec; its errors become ReportError."""
    from rtlab.spec import SpecError, load_spec

    if not spec_path.is_file():
        raise ReportError(f"{spec_path}: no such spec file")
    text = spec_path.read_text()
    try:
        spec = load_spec(spec_path)
    except SpecError as error:  # one line per problem, already names file/line
        raise ReportError(str(error)) from error
    return _spec_info_from(spec, str(spec_path), text)


def _spec_from_parent(data: ExperimentData) -> SpecInfo | None:
    """The spec YAML `rtlab run` logged on the parent run (spec.yaml), read as plain YAML."""
    parent = data.parent_run
    if parent is None:
        return None
    try:
        names = [name for name in artifact_files(data.tracking_uri, parent.run_id)
                 if name.endswith((".yaml", ".yml"))]
        if not names:
            return None
        chosen = SPEC_ARTIFACT if SPEC_ARTIFACT in names else sorted(names)[0]
        text = read_text_artifact(data.tracking_uri, parent.run_id, chosen)
        raw = yaml.safe_load(text) if text is not None else None
    except Exception:  # noqa: BLE001 - the spec text is a nicety here, never a reason to fail
        return None
    if not isinstance(raw, dict):
        return None
    label = parent.spec_path  # the file `rtlab run` read
    info = _spec_info_from(raw, label, text)
    info.origin = f"the parent run's artifact {chosen}" + (f" (logged from {label})" if label
                                                             else "")
    info.claims = [_claim_with_defaults(claim) for claim in info.claims]
    return info


def _claim_with_defaults(claim: object) -> object:
    """A raw YAML claim through rtlab.spec's Claim model, for its defaults (expect, baseline_arm).

    Only the claim, not the whole spec: validating the spec imports torch (seconds), and this
    text was validated when `rtlab run` read it."""
    try:
        from rtlab.spec import Claim

        return Claim.model_validate(claim)
    except Exception:  # noqa: BLE001 - an unreadable claim is still shown, judged as far as it can be
        return claim


# ---- arms -------------------------------------------------------------------------------------

def choose_baseline(
    runs: pd.DataFrame, arms: list[str], spec: SpecInfo | None, explicit: str | None
) -> str | None:
    """Explicit > an arm called 'baseline' > the claims' baseline arm > the one arm without
    reasoning tokens or myopic training > the first arm."""
    if explicit is not None:
        if explicit not in arms:
            raise ReportError(f"baseline arm {explicit!r} is not an arm here ({', '.join(arms)})")
        return explicit
    if "baseline" in arms:
        return "baseline"
    if spec is not None:
        named = [
            (c.get("baseline_arm") if isinstance(c, dict) else getattr(c, "baseline_arm", None))
            for c in spec.claims
        ]
        named = [name for name in named if name in arms]
        if named:
            return Counter(named).most_common(1)[0][0]
    plain = []
    for arm in arms:
        params = runs.loc[runs["arm"] == arm, "params"]
        if len(params) and all(
            p.get("model.reasoning.n_tokens", "0") == "0" and p.get("model.myopic", "off") == "off"
            for p in params
        ):
            plain.append(arm)
    if len(plain) == 1:
        return plain[0]
    return arms[0] if arms else None


def order_arms(runs: pd.DataFrame, spec: SpecInfo | None, messages: list[str]) -> list[str]:
    in_store = list(dict.fromkeys(runs["arm"]))
    spec_arms = spec.arms if spec is not None else []
    for arm in spec_arms:
        if arm not in in_store:
            messages.append(f"arm {arm!r} is in the spec but has no runs in the store.")
    for arm in in_store:
        if spec_arms and arm not in spec_arms:
            messages.append(f"arm {arm!r} has runs but is not in the spec.")
    for arm in in_store:
        finished = runs[(runs["arm"] == arm) & runs["included"]]
        if finished.empty:
            messages.append(f"arm {arm!r} has no finished runs: nothing to aggregate.")
    return spec_arms + sorted(a for a in in_store if a not in spec_arms)


# ---- environment ------------------------------------------------------------------------------

def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _most_common(values: pd.Series) -> str | None:
    present = [v for v in values if isinstance(v, str) and v]
    return Counter(present).most_common(1)[0][0] if present else None


def _json_number(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- the report -------------------------------------------------------------------------------

def _findings(summary: pd.DataFrame, matched: pd.DataFrame, baseline: str | None) -> list[str]:
    """One plain sentence per non-baseline arm, generated from the table numbers."""
    if baseline is None:
        return []
    lines = []
    for _, row in summary[~summary["is_baseline"]].iterrows():
        where = f" at {row['grid_point']}" if row["grid_point"] else ""
        name = f"**{row['arm']}**{where}"
        if row["n"] == 0:
            lines.append(f"{name}: no finished runs.")
            continue
        delta = row.get("final_val_loss_delta_pct", math.nan)
        if not math.isfinite(delta):
            lines.append(f"{name}: no baseline runs to compare with{where}.")
            continue
        low, high = row["final_val_loss_delta_pct_ci_low"], row["final_val_loss_delta_pct_ci_high"]
        base_n = summary.loc[
            summary["is_baseline"] & (summary["grid_point"] == row["grid_point"]),
            "final_val_loss_n",
        ]
        counts = f"n={row['final_val_loss_n']} vs {int(base_n.iloc[0]) if len(base_n) else 0}"
        if not math.isfinite(low):
            text = (f"{name}: final val loss {delta:+.2f}% vs {baseline} ({counts}; one seed on a "
                    "side, so no interval: not evidence either way).")
        elif low <= 0 <= high:
            text = (f"{name}: final val loss {delta:+.2f}% [{low:+.2f}, {high:+.2f}] vs {baseline}"
                    f" ({counts}): no difference detectable with these seeds "
                    f"({_power_text(row, FINAL_VAL_LOSS)}).")
        else:
            direction = "lower (better)" if delta < 0 else "higher (worse)"
            text = (f"{name}: final val loss {delta:+.2f}% [{low:+.2f}, {high:+.2f}] vs {baseline}"
                    f", {direction}, p {_p_text(row['final_val_loss_p_value'])} ({counts}).")
        at_flops = matched[
            (matched["matched"] == "flops") & (matched["arm"] == row["arm"])
            & (matched["grid_point"] == row["grid_point"])
        ] if not matched.empty else matched
        if not at_flops.empty and math.isfinite(
            at_flops.iloc[0].get("val_loss_delta_pct", math.nan)
        ):
            m = at_flops.iloc[0]
            interval = (f" [{m['val_loss_delta_pct_ci_low']:+.2f}, "
                        f"{m['val_loss_delta_pct_ci_high']:+.2f}]"
                        if math.isfinite(m["val_loss_delta_pct_ci_low"]) else "")
            text += f" At equal training FLOPs: {m['val_loss_delta_pct']:+.2f}%{interval}."
        lines.append(text)
    return lines


def _power_text(row: pd.Series, prefix: str) -> str:
    """'they detect 1.23% at 80% power; 17 seeds per arm would detect 1%'."""
    seeds = fmt_seeds(row, prefix)
    return (f"they detect {row[f'{prefix}_detectable_pct']:.2f}% at 80% power; {seeds} seeds "
            "per arm would detect 1%")


@dataclass
class Analysis:
    """The numbers a report shows, computed from the loaded runs."""

    runs: pd.DataFrame
    history: pd.DataFrame
    arms: list[str]
    baseline: str | None
    has_grid: bool
    summary: pd.DataFrame
    matched: pd.DataFrame
    verdicts: list[ClaimVerdict]
    classes: pd.DataFrame  # validation loss by position class; empty when none was logged


def build_report(
    experiment: str | None,
    tracking_uri: str | None,
    out_dir: Path,
    spec_path: Path | None = None,
    log_to_mlflow: bool = True,
    baseline_arm: str | None = None,
) -> ReportResult:
    """Write reports/<experiment>/ from the tracking store; see docs/ARCHITECTURE.md.

    `experiment` may be None when `spec_path` is given (the spec's name is the experiment).
    Raises ReportError for a missing store/experiment/spec (the CLI turns it into exit code 2).
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    spec = load_spec_info(Path(spec_path)) if spec_path is not None else None
    if experiment is None:
        if spec is None:
            raise ReportError("give a spec file or --experiment NAME")
        experiment = spec.name
    data = load_experiment(experiment, tracking_uri)
    seconds["load"] = time.perf_counter() - started
    if spec is None:
        spec = _spec_from_parent(data)
    messages = list(data.messages)
    if spec is not None and spec.name and spec.name != experiment:
        messages.append(f"the spec is named {spec.name!r} but the report is of {experiment!r}.")
    mark = time.perf_counter()
    analysis = analyse(data, spec, baseline_arm, messages)
    seconds["stats"] = time.perf_counter() - mark

    final_dir, figures, tables = _write_report(
        Path(out_dir), data, spec, analysis, messages, seconds, started
    )
    logged_to = _log_to_parent(data, final_dir, messages, seconds) if log_to_mlflow else None
    seconds["total"] = time.perf_counter() - started
    return ReportResult(
        experiment=experiment,
        out_dir=final_dir,
        report_md=final_dir / "report.md",
        report_html=final_dir / "report.html",
        manifest=final_dir / "manifest.json",
        figures=[final_dir / "figures" / p.name for f in figures for p in (f.png, f.svg)],
        tables=[final_dir / "tables" / p.name for p in tables],
        claims=analysis.verdicts,
        messages=messages,
        baseline_arm=analysis.baseline,
        n_runs=len(analysis.runs),
        n_included=int(analysis.runs["included"].sum()),
        logged_to_run=logged_to,
        seconds=seconds,
    )


def analyse(
    data: ExperimentData, spec: SpecInfo | None, baseline_arm: str | None, messages: list[str]
) -> Analysis:
    """Arms, baseline, summary and matched-compute tables, claim verdicts; notes to `messages`."""
    runs, history = data.runs, data.history
    arms = order_arms(runs, spec, messages)
    baseline = choose_baseline(runs, arms, spec, baseline_arm)
    if history.empty:
        messages.append("no metric history was logged by any run: curves are empty.")
    else:
        for metric in (TRAIN_LOSS, VAL_LOSS):
            if metric not in set(history["metric"]):
                messages.append(f"no run logged {metric}: its curves and gap are empty.")
    return Analysis(
        runs=runs,
        history=history,
        arms=arms,
        baseline=baseline,
        has_grid=bool((runs["grid_label"] != "").any()),
        summary=summary_frame(runs, arms, baseline),
        matched=matched_compute_frame(runs, history, arms, baseline),
        verdicts=check_claims(spec.claims if spec else [], runs, baseline),
        classes=class_frame(runs, history, arms, baseline),
    )


def _write_report(
    out_dir: Path, data: ExperimentData, spec: SpecInfo | None, analysis: Analysis,
    messages: list[str], seconds: dict[str, float], started: float,
) -> tuple[Path, list, list[Path]]:
    """Figures, tables, report.md/.html and manifest.json, assembled in a temporary sibling
    folder and swapped into place; returns (the report folder, figures, tables)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_name = data.experiment_name.replace(os.sep, "_").replace("/", "_")
    final_dir = out_dir / safe_name
    work_dir = Path(tempfile.mkdtemp(prefix=f".{safe_name}.partial-", dir=out_dir))
    work_dir.chmod(0o755)  # mkdtemp's 0700 would make the published folder private
    try:
        (work_dir / "tables").mkdir()
        mark = time.perf_counter()
        figures = FigureMaker(analysis.runs, analysis.history, analysis.arms, analysis.baseline,
                              work_dir).all()
        search = (search_section(data.search, analysis.arms, analysis.baseline, work_dir)
                  if data.search else SearchSection())
        seconds["figures"] = time.perf_counter() - mark

        mark = time.perf_counter()
        tables = _write_tables(work_dir, analysis) + search.tables
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = _manifest(data, spec, created, seconds)
        blocks = _document(data, spec, analysis, figures, messages, manifest, search.blocks)
        figures = figures + search.figures
        (work_dir / "report.md").write_text(doc.to_markdown(blocks))
        (work_dir / "report.html").write_text(
            doc.to_html(blocks, f"rtlab report: {data.experiment_name}")
        )
        seconds["render"] = time.perf_counter() - mark
        seconds["total_before_logging"] = time.perf_counter() - started
        manifest["generation_seconds"] = round(seconds["total_before_logging"], 3)
        (work_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(work_dir, final_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return final_dir, figures, tables


def _log_to_parent(
    data: ExperimentData, final_dir: Path, messages: list[str], seconds: dict[str, float]
) -> str | None:
    """Log the report folder as artifacts of the parent run; its id, None when not logged."""
    if data.parent_run is None:
        return None
    mark = time.perf_counter()
    logged_to = None
    try:
        log_directory(data.tracking_uri, data.parent_run.run_id, final_dir, REPORT_DIR)
        logged_to = data.parent_run.run_id
    except Exception as error:  # noqa: BLE001 - the report on disk is complete regardless
        messages.append(f"could not log the report to the parent run: {error}")
    seconds["log_artifacts"] = time.perf_counter() - mark
    return logged_to


def _replace_dir(work_dir: Path, final_dir: Path) -> None:
    """Swap the finished folder into place; the old report is removed only after the swap."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        final_dir.rename(old)
    work_dir.rename(final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_tables(work_dir: Path, analysis: Analysis) -> list[Path]:
    tables_dir = work_dir / "tables"
    paths = [tables_dir / name for name in
             ("summary.csv", "matched_compute.csv", "runs.csv", "claims.csv")]
    analysis.summary.to_csv(paths[0], index=False)
    analysis.matched.to_csv(paths[1], index=False)
    analysis.runs.drop(columns=["params", "grid"]).to_csv(paths[2], index=False)
    verdicts = analysis.verdicts
    claim_columns = ["verdict", "why", "compared", "claimed_change_pct", "measured_change_pct"]
    pd.DataFrame([
        {**{f"claim_{k}": v for k, v in verdict.claim.items()}, "verdict": verdict.verdict,
         "why": verdict.why, "compared": verdict.compared,
         "claimed_change_pct": verdict.claimed_change_pct,
         "measured_change_pct": verdict.measured_change_pct}
        for verdict in verdicts
    ] or None, columns=None if verdicts else claim_columns).to_csv(paths[3], index=False)
    if not analysis.classes.empty:
        paths.append(tables_dir / CLASS_TABLE)
        analysis.classes.to_csv(paths[-1], index=False)
    return paths


def _manifest(
    data: ExperimentData, spec: SpecInfo | None, created: str, seconds: dict[str, float]
) -> dict:
    """What the report was made from. `rtlab reproduce` reruns `spec_text` with `overrides` (the
    `--set` of `rtlab run`, from the parent run) and compares each run's numbers by config hash;
    `config` is the run's resolved RunConfig (its data fingerprint is not logged: "")."""
    runs = data.runs
    dirty_tags = {str(v).lower() for v in runs["git_dirty"] if v} & {"true", "false"}
    parent = data.parent_run
    return {
        "experiment": data.experiment_name,
        "spec_path": spec.path if spec else None,
        "spec_text": spec.text if spec else None,
        "overrides": list(parent.overrides) if parent and parent.overrides is not None else None,
        # Versions and commit of the code that produced the runs (from their tags); the
        # report generator's own are under "report".
        # None where the runs carry no tag: the generator's environment is not theirs.
        "rtlab_version": _most_common(runs["rtlab_version"]),
        "python": _most_common(runs["python"]),
        "torch": _most_common(runs["torch"]),
        "git_commit": _most_common(runs["git_commit"]),
        "git_dirty": ("true" in dirty_tags) if dirty_tags else None,
        "created": created,
        "tracking_uri": public_store_uri(data.tracking_uri),
        "parent_run_id": parent.run_id if parent else None,
        "runs": _manifest_runs(data),
        "report": _generator(),
    }


def _manifest_runs(data: ExperimentData) -> list[dict]:
    records = {run.run_id: run for run in data.experiment.children}
    entries = []
    for _, row in data.runs.iterrows():
        config = run_config(records[row["run_id"]], data.experiment_name)
        entries.append({
            "run_id": row["run_id"],
            "run_name": row["run_name"],
            "arm": row["arm"],
            "seed": None if pd.isna(row["seed"]) else int(row["seed"]),
            "grid_point": row["grid"],
            "config_hash": row["config_hash"],
            "status": row["status"],
            "included": bool(row["included"]),
            **{key: _json_number(float(row[key])) for key in (
                FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, BEST_VAL_LOSS, TOKENS_SEEN, FLOPS_SEEN)},
            "config": json.loads(config.to_json()) if config is not None else None,
        })
    return entries


def _generator() -> dict:
    """The report generator's own versions and commit."""
    commit, dirty = git_state()
    return {
        "rtlab_version": rtlab.__version__,
        "python": platform.python_version(),
        "torch": _package_version("torch"),
        "git_commit": commit,
        "git_dirty": dirty,
        "mlflow": _package_version("mlflow"),
    }


# ---- the document -----------------------------------------------------------------------------


def _document(
    data: ExperimentData, spec: SpecInfo | None, analysis: Analysis, figures: list,
    messages: list[str], manifest: dict, search: list[doc.Block] | None = None,
) -> list[doc.Block]:
    blocks: list[doc.Block] = [doc.Heading(1, f"rtlab report: {data.experiment_name}")]
    if spec and spec.description:
        blocks.append(doc.Paragraph(spec.description.strip()))
    blocks.append(_provenance(data, analysis, manifest))
    if messages:
        blocks += [doc.Heading(2, "Data notes"), doc.Bullets(messages)]
    blocks += _summary_section(analysis)
    blocks += search or []
    blocks += _claims_section(analysis.verdicts)
    blocks.append(doc.Heading(2, "Figures"))
    for number, figure in enumerate(figures, start=1):
        blocks.append(doc.Figure(figure.png, f"figures/{figure.png.name}",
                                 f"Figure {number}: {figure.title}",
                                 f"Figure {number}. {figure.caption} (SVG: figures/"
                                 f"{figure.svg.name})"))
    blocks += _comparison_sections(analysis)
    blocks += _class_section(analysis, figures)
    blocks.append(doc.Heading(2, "Runs"))
    header, rows = runs_markdown_rows(analysis.runs, analysis.has_grid)
    blocks.append(doc.Table(header, rows, csv_name="tables/runs.csv"))
    blocks += [doc.Heading(2, "How the numbers are computed"), doc.Bullets(METHOD_NOTES)]
    if spec is not None:
        blocks.append(doc.Heading(2, "Spec"))
        blocks.append(doc.Paragraph(f"From {spec.origin}." if spec.origin else
                                    f"From `{spec.path}`."))
        blocks.append(doc.Code(spec.text, "yaml"))
    return blocks


def _provenance(data: ExperimentData, analysis: Analysis, manifest: dict) -> doc.Bullets:
    runs, arms, baseline = analysis.runs, analysis.arms, analysis.baseline
    n_included = int(runs["included"].sum())
    dirty = " (uncommitted changes)" if manifest["git_dirty"] else ""
    generator = manifest["report"]
    devices = ", ".join(sorted({d for d in runs["device"] if d})) or "unknown"
    return doc.Bullets([
        f"{len(runs)} runs, {n_included} finished and in the aggregates; arms: "
        + ", ".join(f"**{a}** (baseline)" if a == baseline else a for a in arms),
        f"runs from commit `{manifest['git_commit'] or 'unknown'}`{dirty}, rtlab "
        f"{manifest['rtlab_version'] or 'unknown'}, Python {manifest['python'] or 'unknown'}, "
        f"torch {manifest['torch'] or 'unknown'}, device {devices}",
        f"report made by rtlab {generator['rtlab_version']} at commit "
        f"`{generator['git_commit'] or 'unknown'}`"
        f"{' (uncommitted changes)' if generator['git_dirty'] else ''}, "
        f"MLflow {generator['mlflow']}",
        f"tracking store `{manifest['tracking_uri']}`, experiment id {data.experiment_id}, "
        f"parent run "
        f"`{manifest['parent_run_id'] or 'none'}`; generated {manifest['created']}",
    ])


def _summary_section(analysis: Analysis) -> list[doc.Block]:
    header, rows = summary_markdown_rows(analysis.summary, analysis.has_grid)
    blocks: list[doc.Block] = [doc.Heading(2, "Summary"), doc.Table(
        header, rows,
        "Mean ± half-width of the 95% t-interval over finished seeds (n; \"n of m\" when some "
        "runs did not finish). Δ = arm − baseline at the same grid point, Welch 95% interval; "
        "lower loss is better.",
        "tables/summary.csv",
    )]
    findings = _findings(analysis.summary, analysis.matched, analysis.baseline)
    if findings:
        blocks.append(doc.Bullets(findings))
    return blocks


def _claims_section(verdicts: list[ClaimVerdict]) -> list[doc.Block]:
    if not verdicts:
        return []
    return [doc.Heading(2, "Claims check"), doc.Table(
        ["claim", "source", "verdict", "why", "what was compared"],
        [[_claim_text(v.claim), v.claim.get("source") or "—", f"**{v.verdict}**", v.why,
          v.compared] for v in verdicts],
        csv_name="tables/claims.csv",
    )]


def _comparison_sections(analysis: Analysis) -> list[doc.Block]:
    """Differences from the baseline, and the comparison at equal tokens and FLOPs."""
    blocks: list[doc.Block] = []
    if analysis.baseline is not None and len(analysis.arms) > 1:
        header, rows = deltas_markdown_rows(analysis.summary, analysis.has_grid)
        blocks += [doc.Heading(2, "Differences from the baseline"),
                   doc.Table(header, rows, "Welch 95% intervals and two-sided p-values.",
                             "tables/summary.csv")]
    if not analysis.matched.empty:
        header, rows = matched_markdown_rows(analysis.matched, analysis.has_grid)
        blocks += [doc.Heading(2, "At equal tokens and at equal training FLOPs"), doc.Table(
            header, rows,
            "Validation loss interpolated at the largest budget every finished run reached: "
            "the fair comparison when arms differ in FLOPs per token.",
            "tables/matched_compute.csv",
        )]
    return blocks


CLASS_TABLE = "val_loss_by_class.csv"


def _class_section(analysis: Analysis, figures: list) -> list[doc.Block]:
    """Validation loss by position class (only when the runs logged it)."""
    if analysis.classes.empty:
        return []
    numbers = [number for number, figure in enumerate(figures, start=1)
               if figure.stem == "7_val_loss_by_class"]
    see = f" Curves: Figure {numbers[0]}." if numbers else ""
    header, rows = class_markdown_rows(analysis.classes, analysis.has_grid)
    return [doc.Heading(2, "Validation loss by position class"), doc.Table(
        header, rows,
        "The dataset labels each position with a class (e.g. copy vs needs_past: whether the "
        "target needs earlier inputs); each run's final validation loss over one class's "
        "positions, on the same batches as the overall loss. Mean ± 95% t-interval over seeds; "
        "Δ = arm − baseline at the same grid point, Welch 95% interval; detectable Δ and seeds "
        f"as in the notes below.{see}",
        f"tables/{CLASS_TABLE}",
    )]


METHOD_NOTES = [
    "Only runs with MLflow status FINISHED enter averages; failed, killed and running runs "
    "are listed above and drawn dotted in Figure 1 (a run whose process died without "
    "ending it stays RUNNING in MLflow). A config hash that finished twice counts once "
    "(the later run).",
    "Per-run values are the logged final_train_loss, final_val_loss and best_val_loss "
    "(else the last / lowest logged value, noted under Data notes).",
    "Interval: mean ± t(0.975, n−1)·s/√n over seeds; with n = 1 there is no interval.",
    "Δ vs baseline: difference of means, Welch–Satterthwaite degrees of freedom, "
    "two-sided Welch t-test p-value (scipy). Δ % divides by the baseline mean and ignores "
    "that mean's own uncertainty.",
    "Detectable Δ: the smallest true difference a two-sample t-test on these seeds finds with "
    "80% probability at two-sided 5% (pooled sd of both arms, noncentral t); seeds/arm for 1%: "
    "how many seeds per arm would detect 1% of the baseline mean at that spread. Shown for "
    "\"no difference\" results: a null result is only as strong as its power.",
    "Throughput: median of each run's logged tokens/s after its first log point; it "
    "depends on the machine and its load, compare arms within one report only.",
]


def _p_text(p: float) -> str:
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def _claim_text(claim: dict) -> str:
    metric = claim.get("metric")
    if metric in (None, "", "loss"):
        metric = "loss (train or val not stated)"
    numbers, expect = "", claim.get("expect")
    value, base = claim.get("value"), claim.get("baseline_value")
    if value is not None and base is not None:
        numbers = f" ({base:g} → {value:g})"
        expect = expect or ("lower" if value < base else "higher" if value > base else None)
    expect = expect or "different"
    return f"{claim.get('arm')}: {metric} {expect} than {claim.get('baseline_arm')}{numbers}"
