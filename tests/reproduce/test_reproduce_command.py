"""rtlab reproduce: reading a real MLflow store, and the command's bad-input exits."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from rtlab.cli import app
from rtlab.reproduce import IDENTICAL, compare_runs, load_manifest, read_store_runs
from tests.helpers.reproduce import manifest_dict, write_report


def log_child(client: MlflowClient, experiment_id: str, parent_id: str, run: dict) -> str:
    """A child run shaped as track/ writes it (ARCHITECTURE.md, MLflow schema)."""
    child = client.create_run(
        experiment_id,
        run_name=run["run_name"],
        tags={
            "mlflow.parentRunId": parent_id,
            "rtlab.role": "child",
            "rtlab.arm": run["arm"],
            "rtlab.seed": str(run["seed"]),
            "rtlab.config_hash": run["config_hash"],
        },
    )
    run_id = child.info.run_id
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "tokens_seen", "flops_seen"):
        if run[key] is not None:
            client.log_metric(run_id, key, run[key], step=10)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_store_runs_read_back_identical_to_the_manifest(tmp_path: Path) -> None:
    data = manifest_dict()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("tiny", artifact_location=str(tmp_path / "mlruns"))
    parent = client.create_run(experiment_id, run_name="tiny", tags={"rtlab.role": "parent"})
    # An older, interrupted attempt at the first config: the latest run per hash must win.
    stale = dict(data["runs"][0], final_val_loss=9.0)
    stale_id = log_child(client, experiment_id, parent.info.run_id, stale)
    client.set_terminated(stale_id, "KILLED")
    for run in data["runs"]:
        log_child(client, experiment_id, parent.info.run_id, run)

    reproduced = read_store_runs(uri, "tiny")
    assert sorted(reproduced) == ["0123456789ab", "ba9876543210"]
    assert reproduced["0123456789ab"].metrics["final_val_loss"] == 3.141592653589793
    assert reproduced["0123456789ab"].status == "FINISHED"
    assert reproduced["0123456789ab"].seed == 1
    manifest = load_manifest(write_report(tmp_path, data))
    assert compare_runs("tiny", manifest.runs, reproduced, 0.0).verdict == IDENTICAL
    assert read_store_runs(uri, "no-such-experiment") == {}


def test_missing_manifest_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["reproduce", str(tmp_path / "reports" / "none")])
    assert result.exit_code == 2
    assert "manifest.json: not found" in result.output


def test_non_fresh_workdir_exits_2_and_is_left_alone(tmp_path: Path) -> None:
    report_dir = write_report(tmp_path, manifest_dict())
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "mlflow.db").write_text("not empty")
    result = CliRunner().invoke(app, ["reproduce", str(report_dir), "--workdir", str(workdir)])
    assert result.exit_code == 2
    assert "not fresh (holds mlflow.db)" in result.output
    assert (workdir / "mlflow.db").read_text() == "not empty"


def test_manifest_without_spec_text_exits_2(tmp_path: Path) -> None:
    report_dir = write_report(tmp_path, manifest_dict(spec_text=None))
    workdir = tmp_path / "work"
    result = CliRunner().invoke(app, ["reproduce", str(report_dir), "--workdir", str(workdir)])
    assert result.exit_code == 2
    assert "records no spec_text: pass --spec FILE" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_bad_tolerance_exits_2(tmp_path: Path) -> None:
    report_dir = write_report(tmp_path, manifest_dict())
    result = CliRunner().invoke(app, ["reproduce", str(report_dir), "--tolerance", "-0.1"])
    assert result.exit_code == 2
    assert "--tolerance must be a finite number >= 0" in result.output


def test_json_manifest_written_by_hand_is_valid(tmp_path: Path) -> None:
    # Guards the test helper itself: the manifest it writes parses as plain JSON.
    report_dir = write_report(tmp_path, manifest_dict())
    assert json.loads((report_dir / "manifest.json").read_text())["experiment"] == "tiny"
