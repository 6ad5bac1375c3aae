"""rtlab reproduce end to end: real `rtlab run` and `rtlab report` processes, then reproduce."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TINY_STUDY = Path(__file__).with_name("tiny_study.yaml")
CLI = [sys.executable, "-c", "from rtlab.cli import app; app(prog_name='rtlab')"]


def rtlab(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each command uses the store in its own cwd
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def count_child_runs(store: Path) -> int:
    with sqlite3.connect(store) as connection:
        (count,) = connection.execute(
            "select count(*) from tags where key = 'rtlab.role' and value = 'child'"
        ).fetchone()
    return count


@pytest.mark.slow
def test_run_report_reproduce_is_identical_and_a_nudge_is_caught(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    # One seed of the CI study: two runs (baseline, reasoning_1) of a few seconds each.
    spec = lab / "tiny_study.yaml"
    spec.write_text(TINY_STUDY.read_text().replace("seeds: [0, 1]", "seeds: [0]"))
    for args in (["run", "--quiet", spec.name], ["report", spec.name]):
        done = rtlab(args, lab)
        assert done.returncode == 0, done.stdout + done.stderr
    report_dir = lab / "reports" / "tiny_repro"
    manifest = json.loads((report_dir / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2

    # A fresh rerun from the recorded spec text alone gives the same bits.
    (lab / spec.name).unlink()
    strict = rtlab(["reproduce", "reports/tiny_repro", "--json", "strict.json"], lab)
    assert strict.returncode == 0, strict.stdout + strict.stderr
    assert "verdict: identical" in strict.stdout
    result = json.loads((lab / "strict.json").read_text())
    assert [row["verdict"] for row in result["runs"]] == ["identical", "identical"]
    # The rerun went to a temporary store: the lab's own store gained no runs.
    assert count_child_runs(lab / "mlflow.db") == 2

    # Move one recorded loss by 1e-7: caught at tolerance 0 (exit 1), the other run unharmed.
    manifest["runs"][0]["final_val_loss"] += 1e-7
    (report_dir / "manifest.json").write_text(json.dumps(manifest))
    nudged = rtlab(
        ["reproduce", "reports/tiny_repro", "--workdir", "again", "--json", "nudged.json"], lab
    )
    assert nudged.returncode == 1, nudged.stdout + nudged.stderr
    assert "verdict: differs" in nudged.stdout
    nudged_rows = json.loads((lab / "nudged.json").read_text())["runs"]
    rows = {row["config_hash"]: row for row in nudged_rows}
    assert rows[manifest["runs"][0]["config_hash"]]["verdict"] == "differs"
    assert rows[manifest["runs"][1]["config_hash"]]["verdict"] == "identical"
    # --workdir keeps the rerun's store, where the same runs finished again.
    assert count_child_runs(lab / "again" / "mlflow.db") == 2


@pytest.mark.slow
def test_a_study_run_with_set_overrides_reproduces_identical(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    spec = lab / "tiny_study.yaml"
    spec.write_text(TINY_STUDY.read_text())  # two seeds as written; the overrides make it one
    sets = ["--set", "seeds=[0]", "--set", "base.train.max_iters=30"]
    for args in (["run", "--quiet", spec.name, *sets], ["report", spec.name]):
        done = rtlab(args, lab)
        assert done.returncode == 0, done.stdout + done.stderr
    report_dir = lab / "reports" / "tiny_repro"
    manifest = json.loads((report_dir / "manifest.json").read_text())
    assert manifest["overrides"] == ["seeds=[0]", "base.train.max_iters=30"]
    assert len(manifest["runs"]) == 2
    assert {run["config"]["train"]["max_iters"] for run in manifest["runs"]} == {30}

    # The recorded spec text with the recorded overrides: the same runs, the same bits.
    spec.unlink()
    again = rtlab(["reproduce", "reports/tiny_repro", "--json", "again.json"], lab)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "verdict: identical" in again.stdout
    rows = json.loads((lab / "again.json").read_text())["runs"]
    assert [row["verdict"] for row in rows] == ["identical", "identical"]

    # Without the max_iters override the rerun trains other configs: each recorded run is
    # missing, and the note says which setting differs.
    manifest["overrides"] = ["seeds=[0]"]
    (report_dir / "manifest.json").write_text(json.dumps(manifest))
    other = rtlab(["reproduce", "reports/tiny_repro", "--json", "other.json"], lab)
    assert other.returncode == 1, other.stdout + other.stderr
    notes = [row["note"] for row in json.loads((lab / "other.json").read_text())["runs"]
             if row["verdict"] == "missing"]
    assert len(notes) == 2
    assert all("train.max_iters 40 (recorded 30)" in note for note in notes)
