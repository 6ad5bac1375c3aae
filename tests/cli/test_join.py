"""Workers join a sweep through the shared queue: `rtlab run --workers 0` only queues the runs,
`rtlab worker` processes (here two, at once, as on two machines) do them."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from rtlab.cli import app
from tests.helpers.tiny_spec import subprocess_env, write_spec

pytestmark = pytest.mark.slow  # `rtlab worker` processes doing a real sweep


def test_rtlab_worker_processes_do_a_queued_sweep_each_run_exactly_once(store_workdir):
    workdir = store_workdir
    spec = write_spec(workdir, log_interval=10)
    queued = CliRunner().invoke(app, ["run", str(spec), "--workers", "0", "--quiet"])
    assert queued.exit_code == 0, queued.output
    assert "4 run(s) queued; work them off with: rtlab worker --study tiny" in queued.output
    storage = f"sqlite:///{workdir / '.rtlab' / 'tiny' / 'optuna.db'}"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    assert client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'") == []

    command = [sys.executable, "-m", "rtlab.cli", "worker", "--study", "tiny", "--storage",
               storage]  # the tracking URI comes from the study
    workers = [subprocess.Popen(command, cwd=workdir, env=subprocess_env(workdir),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert len(trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.system_attrs["rtlab.pid"] for t in trials} <= {w.pid for w in workers}
    kids = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")
    hashes = [r.data.tags["rtlab.config_hash"] for r in kids]
    assert len(hashes) == 4 and len(set(hashes)) == 4
    assert {r.info.status for r in kids} == {"FINISHED"}

    # The next `rtlab run` finds everything done and closes the parent run.
    again = CliRunner().invoke(app, ["run", str(spec), "--quiet", "--workers", "1"])
    assert again.exit_code == 0 and "0 run(s) queued, 4 already finished" in again.output
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'parent'")
    assert parent.info.status == "FINISHED"
