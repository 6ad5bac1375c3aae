"""Faults of the shared stores mid-sweep: PostgreSQL and the MLflow server restarting (workers
retry and go on: nothing lost, nothing duplicated), and PostgreSQL gone for good (the worker
ends with one clear line, the password redacted, and every run it finished stays FINISHED)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.cluster.test_workers import rtlab, start_worker
from tests.helpers.mlflow_server import MlflowServer
from tests.helpers.postgres import PASSWORD, PostgresServer
from tests.helpers.tiny_spec import write_spec

pytestmark = pytest.mark.slow


def wait_for_trials(storage: str, state: TrialState, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
        if sum(t.state == state for t in trials) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"never {count} {state.name} trials")


def children(tracking: str) -> list:
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")


def lose_under_a_worker(worker: subprocess.Popen, storage: str, tracking: str,
                        stop: Callable[[], None], restart: Callable[[], None]
                        ) -> tuple[str, set[str]]:
    """Once the worker finished a run, stop a server for good; the worker's output, and the runs
    it had finished before. The server is restarted afterwards whatever happened."""
    try:
        wait_for_trials(storage, TrialState.COMPLETE, 1)
        finished_before = {k.info.run_id for k in children(tracking)
                           if k.info.status == "FINISHED"}
        stop()
        output, _ = worker.communicate(timeout=300)
    finally:
        worker.kill()
        worker.wait()
        restart()
    return output, finished_before


def test_postgres_and_the_mlflow_server_restarting_mid_sweep_lose_nothing(
    postgres: PostgresServer, postgres_url: str, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, seeds="[0, 1]", max_iters=300, checkpoint_interval=50)
    rtlab(["run", str(spec), "--workers", "0", "--quiet", "--storage", postgres_url,
           "--tracking-uri", mlflow_server.url], tmp_path / "submit")
    workers = [start_worker(tmp_path / f"host{i}", postgres_url, mlflow_server.url)
               for i in range(2)]
    try:
        wait_for_trials(postgres_url, TrialState.RUNNING, 2)
        time.sleep(2.0)
        postgres.stop()
        postgres.start()  # same port, same data
        mlflow_server.stop()
        mlflow_server.start()
        for worker in workers:
            output, _ = worker.communicate(timeout=400)
            assert worker.returncode == 0, output
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

    trials = optuna.load_study(study_name="tiny", storage=postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    kids = children(mlflow_server.url)
    assert len(kids) == 4 and {k.info.status for k in kids} == {"FINISHED"}
    assert len({k.data.tags["rtlab.config_hash"] for k in kids}) == 4
    client = MlflowClient(mlflow_server.url)
    for kid in kids:
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "train_loss")]
        assert len(steps) == len(set(steps)) and max(steps) == 300


def test_postgres_gone_for_good_ends_the_worker_clearly_and_keeps_finished_runs(
    postgres: PostgresServer, postgres_url: str, tmp_path: Path, migrated_mlflow_db: Path
) -> None:
    (tmp_path / "submit").mkdir()
    shutil.copy(migrated_mlflow_db, tmp_path / "submit" / "mlflow.db")
    tracking = f"sqlite:///{tmp_path / 'submit' / 'mlflow.db'}"
    spec = write_spec(tmp_path, seeds="[0, 1, 2]", max_iters=100, checkpoint_interval=50)
    rtlab(["run", str(spec), "--workers", "0", "--quiet", "--storage", postgres_url,
           "--tracking-uri", tracking], tmp_path / "submit")
    worker = start_worker(tmp_path / "host0", postgres_url, tracking)

    def restart() -> None:
        if not (postgres.data / "postmaster.pid").exists():
            postgres.start()  # the session's other tests need it back

    output, finished_before = lose_under_a_worker(worker, postgres_url, tracking, postgres.stop,
                                                  restart)
    assert worker.returncode == 1, output
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith("lost the Optuna storage postgresql+psycopg://rtlab:***@127.0.0.1")
    assert PASSWORD not in output
    still = {k.info.run_id: k.info.status for k in children(tracking)}
    assert finished_before and all(still[run_id] == "FINISHED" for run_id in finished_before)


def test_the_mlflow_server_gone_for_good_ends_the_worker_clearly_and_keeps_finished_runs(
    postgres_url: str, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, seeds="[0, 1, 2]", max_iters=100, checkpoint_interval=50)
    rtlab(["run", str(spec), "--workers", "0", "--quiet", "--storage", postgres_url,
           "--tracking-uri", mlflow_server.url], tmp_path / "submit")
    # MLflow's client retries a request for about 4 minutes by default; here for seconds.
    quick_retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    worker = start_worker(tmp_path / "host0", postgres_url, mlflow_server.url, quick_retries)
    output, finished_before = lose_under_a_worker(
        worker, postgres_url, mlflow_server.url, mlflow_server.stop,
        mlflow_server.start)  # (started again to read what it kept)
    assert worker.returncode == 1, output
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith(f"lost the MLflow tracking server {mlflow_server.url}"), output
    still = {k.info.run_id: k.info.status for k in children(mlflow_server.url)}
    assert finished_before and all(still[run_id] == "FINISHED" for run_id in finished_before)
    trials = optuna.load_study(study_name="tiny", storage=postgres_url).get_trials()
    assert not any(t.state == TrialState.RUNNING for t in trials)  # the rest: queued, or failed
