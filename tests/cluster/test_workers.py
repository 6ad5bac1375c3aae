"""Workers on "separate machines" (separate working directories, data caches and HOMEs) share
only the PostgreSQL study and the MLflow store: each run is done exactly once, and a worker
killed mid-run (SIGKILL) has its run taken over by a live worker, with no human action."""

from __future__ import annotations

import os
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

from tests.helpers.tiny_spec import subprocess_env, write_spec

pytestmark = pytest.mark.slow
HEARTBEAT = 1.0


def host_env(host: Path) -> dict[str, str]:
    env = subprocess_env(host)
    env["HOME"] = str(host)
    env["RTLAB_HOST"] = host.name  # another machine: its death shows only as a silent heartbeat
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_worker(host: Path, storage: str, tracking: str) -> subprocess.Popen[str]:
    host.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "rtlab.cli", "worker", "--study", "tiny", "--storage",
               storage, "--tracking-uri", tracking, "--heartbeat", str(HEARTBEAT)]
    return subprocess.Popen(command, cwd=host, env=host_env(host), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_until_running(storage: str, pid: int, timeout: float = 120) -> None:
    """Until the worker `pid` has held a RUNNING trial for a moment (it is mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
        if any(t.state == TrialState.RUNNING and t.system_attrs.get("rtlab.pid") == pid
               for t in trials):
            time.sleep(1.0)
            return
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} never started a run")


def test_three_hosts_finish_a_sweep_after_one_is_killed_mid_run(
    postgres_url: str, tmp_path: Path, migrated_mlflow_db: Path
) -> None:
    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(migrated_mlflow_db, server / "mlflow.db")
    tracking = f"sqlite:///{server / 'mlflow.db'}"
    spec = write_spec(server, seeds="[0, 1, 2]", max_iters=200, checkpoint_interval=50)
    queued = subprocess.run(
        [sys.executable, "-m", "rtlab.cli", "run", str(spec), "--workers", "0", "--quiet",
         "--storage", postgres_url, "--tracking-uri", tracking],
        cwd=server, env=host_env(server), capture_output=True, text=True, timeout=120)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    assert "6 run(s) queued" in queued.stdout
    assert "s3cret-pw" not in queued.stdout + queued.stderr

    workers = [start_worker(tmp_path / f"host{i}", postgres_url, tracking) for i in range(3)]
    try:
        wait_until_running(postgres_url, workers[0].pid)
        os.kill(workers[0].pid, signal.SIGKILL)
        for worker in workers[1:]:
            output, _ = worker.communicate(timeout=300)
            assert worker.returncode == 0, output
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

    trials = optuna.load_study(study_name="tiny", storage=postgres_url).get_trials()
    killed = [t for t in trials if t.system_attrs.get("rtlab.pid") == workers[0].pid
              and t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].system_attrs["rtlab.stale"] is True
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(completed) == 6
    assert len({t.user_attrs["config_hash"] for t in completed}) == 6
    assert killed[0].user_attrs["config_hash"] in {t.user_attrs["config_hash"] for t in completed}

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    kids = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")
    assert len(kids) == 6 and {r.info.status for r in kids} == {"FINISHED"}
    for kid in kids:  # the taken-over run too: every step logged once
        history = client.get_metric_history(kid.info.run_id, "train_loss")
        steps = [m.step for m in history]
        assert len(steps) == len(set(steps)) and max(steps) == 200
