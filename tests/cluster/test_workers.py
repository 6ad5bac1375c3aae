"""Workers on "separate machines" (own working directories, data caches, HOMEs and host names)
share only two URLs: the PostgreSQL study and the MLflow tracking server (artifacts over HTTP).
Each run is done exactly once; a worker killed mid-run (SIGKILL) has its run taken over by a
live worker from the checkpoint it uploaded, with no human action; the results and the report
equal those of the same sweep on the embedded stores."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from rtlab.track.checkpoints import read_pointer
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.tiny_spec import subprocess_env, write_spec

pytestmark = pytest.mark.slow
HEARTBEAT = 6.0  # stale after 12 s: short, yet safe for a heavily loaded 2-core machine
RTLAB = [sys.executable, "-m", "rtlab.cli"]


def host_env(host: Path) -> dict[str, str]:
    env = subprocess_env(host)
    env["HOME"] = str(host)
    env["RTLAB_HOST"] = host.name  # another machine: its death shows only as a silent heartbeat
    env["OMP_NUM_THREADS"] = "1"
    return env


def rtlab(args: list[str], host: Path) -> str:
    host.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([*RTLAB, *args], cwd=host, env=host_env(host), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def start_worker(host: Path, storage: str, tracking: str,
                 env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    host.mkdir(parents=True, exist_ok=True)
    command = [*RTLAB, "worker", "--study", "tiny", "--storage", storage, "--tracking-uri",
               tracking, "--heartbeat", str(HEARTBEAT)]
    return subprocess.Popen(command, cwd=host, env={**host_env(host), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_uploaded_checkpoint(storage: str, tracking: str, pid: int) -> str:
    """Until worker `pid` runs a trial whose MLflow run has a whole uploaded checkpoint (its
    pointer, written after the file, is there); its name. Killed before the pointer, the run
    would rightly start again from step 0 elsewhere."""
    study = optuna.load_study(study_name="tiny", storage=storage)  # one engine, not one a poll
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for trial in study.get_trials():
            run_id = trial.user_attrs.get("mlflow_run_id")
            mine = trial.state == TrialState.RUNNING and trial.system_attrs.get("rtlab.pid") == pid
            if mine and run_id and read_pointer(tracking, run_id) is not None:
                return trial.user_attrs["run_name"]
        time.sleep(0.2)
    raise AssertionError(f"worker {pid} never uploaded a checkpoint")


def final_metrics(tracking: str) -> dict[str, dict[str, float]]:
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    kids = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")
    assert {r.info.status for r in kids} == {"FINISHED"}
    for kid in kids:  # every step logged once, up to the last
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "train_loss")]
        assert len(steps) == len(set(steps)) and max(steps) == 200
    return {r.data.tags["rtlab.config_hash"]: {k: v for k, v in r.data.metrics.items()
                                               if "loss" in k or k.endswith("_seen")}
            for r in kids}  # losses and counters; not the wall-clock ones (tokens_per_sec)


def summary_rows(report_dir: Path) -> list[dict[str, str]]:
    with open(report_dir / "tables" / "summary.csv") as f:  # all but the wall-clock columns
        return [{k: v for k, v in row.items() if not k.startswith("tokens_per_sec")}
                for row in csv.DictReader(f)]


def test_three_hosts_share_two_urls_and_survive_a_killed_worker(
    postgres_url: str, mlflow_server: MlflowServer, tmp_path: Path, migrated_mlflow_db: Path
) -> None:
    tracking = mlflow_server.url
    server_host = tmp_path / "submit"
    spec = write_spec(tmp_path, seeds="[0, 1, 2]", max_iters=200, checkpoint_interval=50)
    queued = rtlab(["run", str(spec), "--workers", "0", "--quiet", "--storage", postgres_url,
                    "--tracking-uri", tracking], server_host)
    assert "6 run(s) queued" in queued and "s3cret-pw" not in queued

    workers = [start_worker(tmp_path / f"host{i}", postgres_url, tracking) for i in range(3)]
    outputs = []
    try:
        killed_run = wait_for_uploaded_checkpoint(postgres_url, tracking, workers[0].pid)
        os.kill(workers[0].pid, signal.SIGKILL)
        for worker in workers[1:]:
            output, _ = worker.communicate(timeout=300)
            assert worker.returncode == 0, output
            outputs.append(output)
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

    trials = optuna.load_study(study_name="tiny", storage=postgres_url).get_trials()
    killed = [t for t in trials if t.system_attrs.get("rtlab.pid") == workers[0].pid
              and t.user_attrs["run_name"] == killed_run and t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].system_attrs["rtlab.stale"] is True
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["config_hash"] for t in completed) == sorted(
        {t.user_attrs["config_hash"] for t in trials})
    assert len(completed) == 6
    # The run was taken over from its uploaded checkpoint: resumed, with no step 0 again (a
    # worker that ran it before, its heartbeat wrongly judged stale under load, may have).
    name = re.escape(killed_run)
    after_takeover = [output[found.end():] for output in outputs
                      if (found := re.search(rf"start {name} \(resumed\)", output))]
    assert after_takeover, "".join(outputs)
    assert not any(re.search(rf"{name} step 0:", tail) for tail in after_takeover)

    # The same sweep on the embedded stores, uninterrupted, on one host: bit-equal results.
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(migrated_mlflow_db, local / "mlflow.db")
    rtlab(["run", str(spec), "--workers", "1", "--quiet"], local)
    embedded = f"sqlite:///{local / 'mlflow.db'}"
    assert final_metrics(tracking) == final_metrics(embedded)

    rtlab(["report", str(spec), "--tracking-uri", tracking, "--out", str(tmp_path / "r1")],
          server_host)
    rtlab(["report", str(spec), "--tracking-uri", embedded, "--out", str(tmp_path / "r2")], local)
    assert summary_rows(tmp_path / "r1" / "tiny") == summary_rows(tmp_path / "r2" / "tiny")
    manifest = (tmp_path / "r1" / "tiny" / "report.md").read_text()
    assert "s3cret-pw" not in manifest
