"""One run across processes: DDP under torchrun (gloo on CPU) computes the one-process run with
the same global batch, to float32 rounding; killed, it resumes with any number of processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "ddp_train.py"
LOSSES = ("batch_loss", "train_loss", "val_loss")


def train_with(
    processes: int, run_dir: Path, out: Path, *extra: str
) -> subprocess.CompletedProcess:
    if processes == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                   str(processes), "--master-addr", "127.0.0.1", "--master-port",
                   str(free_port()), str(SCRIPT)]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(run_dir.parent)}
    return subprocess.run([*command, str(run_dir), str(out), *extra], capture_output=True,
                          text=True, timeout=300, env=env)


def losses(out: Path, world: int = 1) -> dict[int, dict[str, float]]:
    written = json.loads(out.read_text())
    assert written["world"] == world  # it really ran on that many processes
    history = written["history"]
    return {int(step): {k: v for k, v in metrics.items() if k in LOSSES}
            for step, metrics in history.items()}


def assert_close(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> None:
    assert a.keys() == b.keys()
    for step in a:
        assert a[step].keys() == b[step].keys(), step
        for key, value in a[step].items():
            assert b[step][key] == pytest.approx(value, rel=2e-5), (step, key)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, float]]:
    root = tmp_path_factory.mktemp("one")
    done = train_with(1, root / "run", root / "out.json")
    assert done.returncode == 0, done.stderr
    return losses(root / "out.json")


def test_two_processes_compute_the_one_process_run(one_process, tmp_path):
    done = train_with(2, tmp_path / "run", tmp_path / "out.json")
    assert done.returncode == 0, done.stderr
    two = losses(tmp_path / "out.json", world=2)
    assert max(two) == 20 and two[0]["val_loss"] > two[20]["val_loss"]
    assert_close(one_process, two)


@pytest.mark.parametrize("resume_with", [2, 1])
def test_killed_under_ddp_it_resumes_with_any_number_of_processes(one_process, tmp_path,
                                                                  resume_with):
    killed = train_with(2, tmp_path / "run", tmp_path / "killed.json", "--kill-at", "10")
    assert killed.returncode != 0 and not (tmp_path / "killed.json").exists()
    assert (tmp_path / "run" / "ckpt.pt").exists()
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    done = train_with(resume_with, tmp_path / "copy", tmp_path / "out.json")
    assert done.returncode == 0, done.stderr
    resumed = json.loads((tmp_path / "out.json").read_text())
    assert resumed["resumed_from_step"] == 10
    after = {step: value for step, value in one_process.items() if step > 10}
    assert_close(after, losses(tmp_path / "out.json", world=resume_with))


SPEC = """\
name: ddp
description: one run on one process or two (DDP under torchrun)
seeds: [0]
base:
  data: {name: precache_discrete, n_digits: 3, modulus: 5}
  model: {block_size: 16, n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}
  train: {max_iters: 20, batch_size: 4, grad_accum: 2, learning_rate: 1.0e-3, warmup_iters: 0,
          eval_interval: 10, eval_iters: 2, checkpoint_interval: 10, log_interval: 5,
          device: cpu, sample_tokens: 0, threads: 1}
variants:
  baseline: {}
  reasoning_1: {model: {reasoning: {n_tokens: 1}}}
"""


def final_val_losses(tracking: str) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("ddp")
    kids = client.search_runs([experiment.experiment_id], "tags.`rtlab.role` = 'child'")
    assert {k.info.status for k in kids} == {"FINISHED"}
    return {k.data.tags["rtlab.arm"]: k.data.metrics["final_val_loss"] for k in kids}


def test_rtlab_worker_under_torchrun_trains_each_queued_run_on_two_processes(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "RTLAB_DATA_DIR": str(tmp_path / "data")}
    finals = {}
    for name, processes in (("one", 1), ("two", 2)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "ddp.yaml").write_text(SPEC)
        queued = subprocess.run([sys.executable, "-m", "rtlab.cli", "run", "ddp.yaml",
                                 "--workers", "0", "--quiet"], cwd=folder, env=env,
                                capture_output=True, text=True, timeout=300)
        assert queued.returncode == 0, queued.stdout + queued.stderr
        worker = ["-m", "rtlab.cli", "worker", "--study", "ddp", "--storage",
                  f"sqlite:///{folder / '.rtlab' / 'ddp' / 'optuna.db'}"]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                     "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
                    if processes == 2 else [sys.executable])
        done = subprocess.run([*launcher, *worker], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        finals[name] = final_val_losses(f"sqlite:///{folder / 'mlflow.db'}")
    assert finals["one"].keys() == finals["two"].keys() == {"baseline", "reasoning_1"}
    for arm, value in finals["one"].items():
        assert finals["two"][arm] == pytest.approx(value, rel=2e-5)


def test_a_run_failing_on_rank_0_ends_the_torchrun_job_instead_of_hanging(tmp_path):
    """Rank 0 cannot read the checkpoint of an interrupted run while rank 1 waits for it inside a
    broadcast: the run is marked FAILED and the job ends (exit 1, one line naming the run)
    instead of rank 0 going on to the next run with rank 1 stuck in the failed one's collective."""
    from mlflow import MlflowClient

    from rtlab.sweep.queue import RunQueue, read_run
    from rtlab.sweep.worker import handle_from_attrs, run_dir_for
    from rtlab.track import ChildRun

    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "RTLAB_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "ddp.yaml").write_text(SPEC)
    queued = subprocess.run([sys.executable, "-m", "rtlab.cli", "run", "ddp.yaml", "--workers",
                             "0", "--quiet"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    storage = f"sqlite:///{tmp_path / '.rtlab' / 'ddp' / 'optuna.db'}"
    queue = RunQueue.open(storage, "ddp")
    handle = handle_from_attrs(queue.attrs, None)
    for trial in queue.study.get_trials():  # each run: begun before, its checkpoint now unreadable
        run = read_run(trial)
        ChildRun.open(handle, run, device="cpu").finish("KILLED")
        run_dir = run_dir_for(tmp_path / ".rtlab" / "ddp", run.config_hash)
        run_dir.mkdir(parents=True)
        (run_dir / "ckpt.pt").write_bytes(b"not a checkpoint")

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
         "127.0.0.1", "--master-port", str(free_port()), "-m", "rtlab.cli", "worker", "--study",
         "ddp", "--storage", storage], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "failed on rank 0" in output, output
    states = sorted(t.state.name for t in queue.study.get_trials())
    assert states == ["FAIL", "WAITING"]  # the failed run; the other is still queued
    client = MlflowClient(handle.tracking_uri)
    kids = client.search_runs([handle.experiment_id], "tags.`rtlab.role` = 'child'")
    assert sorted(k.info.status for k in kids) == ["FAILED", "KILLED"]
