"""The per-class section end to end: a tiny study on a synthetic dataset, trained, tracked and
reported by the real parts; a dataset without classes gets no such section."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from rtlab.report import build_report
from rtlab.report.load import load_experiment
from rtlab.report.stats import power_of, welch
from rtlab.sweep import SweepOptions, prepare_experiment, run_sweep
from rtlab.track.names import CLASS_VAL_LOSS_PREFIX
from tests.helpers.tiny_spec import write_spec

CLASSES = ("answer", "other")  # precache_discrete, the tiny spec's dataset


@pytest.fixture
def swept(workdir: Path, migrated_mlflow_db: Path):
    """The tiny two-arm spec (precache_discrete, two seeds) run in-process into a fresh store."""
    shutil.copy(migrated_mlflow_db, workdir / "mlflow.db")
    threads = torch.get_num_threads()
    spec_path = write_spec(workdir, name="classes")
    summary = run_sweep(prepare_experiment(spec_path), SweepOptions(workers=1, quiet=True))
    torch.set_num_threads(threads)  # a worker sets the process's thread count
    assert {o.status for o in summary.outcomes} == {"FINISHED"}
    return workdir, spec_path


@pytest.mark.slow  # trains four tiny runs
def test_a_synthetic_study_reports_loss_by_position_class(swept) -> None:
    workdir, spec_path = swept
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    data = load_experiment("classes", uri)
    # Logged through the worker's on_metrics -> MLflow, read back at every evaluation step.
    for name in CLASSES:
        steps = data.history.loc[data.history["metric"] == CLASS_VAL_LOSS_PREFIX + name, "step"]
        assert sorted(set(steps)) == [0, 10, 20]
    result = build_report(None, uri, workdir / "reports", spec_path=spec_path,
                          log_to_mlflow=False)
    text = result.report_md.read_text()
    assert "## Validation loss by position class" in text
    assert (result.out_dir / "figures" / "7_val_loss_by_class.png").exists()
    table = pd.read_csv(result.out_dir / "tables" / "val_loss_by_class.csv")
    assert sorted(set(table["class"])) == list(CLASSES)
    # Each number equals an independent computation from the runs' last logged class values.
    client = MlflowClient(uri)
    finals = {}
    for _, run in data.runs.iterrows():
        for name in CLASSES:
            history = client.get_metric_history(run["run_id"], CLASS_VAL_LOSS_PREFIX + name)
            finals[run["arm"], name, run["seed"]] = max(history, key=lambda m: m.step).value
    for name in CLASSES:
        arm = np.array([finals["reasoning_1", name, s] for s in (0, 1)])
        base = np.array([finals["baseline", name, s] for s in (0, 1)])
        row = table[(table["class"] == name) & (table["arm"] == "reasoning_1")].iloc[0]
        assert row["val_loss_mean"] == pytest.approx(arm.mean())
        assert row["val_loss_delta"] == pytest.approx(welch(arm, base).delta)
        assert row["val_loss_delta_ci_low"] == pytest.approx(welch(arm, base).low)
        assert row["val_loss_detectable"] == pytest.approx(power_of(arm, base).detectable)
    assert "detectable Δ (80% power)" in text


def test_the_section_is_skipped_without_class_metrics(store, tmp_path: Path) -> None:
    result = build_report("known", store.uri, tmp_path, log_to_mlflow=False)
    assert "position class" not in result.report_md.read_text()
    assert not (result.out_dir / "tables" / "val_loss_by_class.csv").exists()
    assert not list((result.out_dir / "figures").glob("7_*"))
