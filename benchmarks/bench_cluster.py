"""What many machines cost on this one: the same sweep on the embedded stores and on PostgreSQL +
an MLflow server (orchestration share of wall time), checkpoint upload time as a share of a run,
and the DDP step time on 2 processes vs 1 at equal global batch.

1. Sweep: mini_sweep shortened to `--max-iters` steps (checkpoint every 25), 2 workers, once with
   SQLite + the embedded MLflow store, once with a fresh PostgreSQL cluster and a real
   `mlflow server` on 127.0.0.1 (which also makes every checkpoint travel to its artifact store).
   Shares are of the workers' capacity (workers x wall): training steps, evaluation, and the rest
   (orchestration: process start, queue, MLflow, checkpoints, data loading).
2. Checkpoint upload: a mini_sweep baseline checkpoint uploaded `--uploads` times through
   rtlab.track.checkpoints to that server (median seconds), over the median run's wall.
3. DDP: the mini_sweep baseline with a global batch of 2 x 16 sequences per step, trained for
   `--ddp-steps` steps on 1 process and on 2 (torchrun, gloo, one thread each); median step time.

    python benchmarks/bench_cluster.py --json benchmarks/results/bench_cluster.json

CPU heavy: about 8 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "experiments" / "mini_sweep.yaml"


def sweep(workdir: Path, max_iters: int, storage: str | None, tracking: str) -> dict[str, Any]:
    from rtlab.sweep import SweepOptions, prepare_experiment, run_sweep

    os.chdir(workdir)
    sets = [f"base.train.max_iters={max_iters}", "base.train.checkpoint_interval=25",
            "base.train.eval_interval=50"]
    prepared = prepare_experiment(SPEC, sets)
    started = time.perf_counter()
    summary = run_sweep(prepared, SweepOptions(workers=2, tracking_uri=tracking,
                                               storage_url=storage, quiet=True))
    walls = [o.timings.train_wall for o in summary.outcomes if o.status == "FINISHED"]
    return {"wall_s": time.perf_counter() - started, "runs": len(walls),
            "median_run_wall_s": statistics.median(walls), **summary.shares()}


def upload_seconds(tracking: str, uploads: int) -> float:
    """Median seconds to upload one mini_sweep baseline checkpoint (slot, then pointer)."""
    import torch
    from mlflow import MlflowClient

    from rtlab.data import load_data_section
    from rtlab.execute.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from rtlab.execute.trainer import build_model
    from rtlab.plan import plan_runs
    from rtlab.spec import load_spec
    from rtlab.track.checkpoints import CheckpointUploader

    run = plan_runs(load_spec(SPEC))[0]
    model = build_model(run.model, load_data_section(run.data))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    optimizer.step()  # optimizer moments exist, as in a real checkpoint
    client = MlflowClient(tracking)
    experiment = client.create_experiment(f"upload-{time.time()}")
    run_id = client.create_run(experiment).info.run_id
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "ckpt.pt"
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict()})
        upload = CheckpointUploader(tracking, run_id)
        seconds = []
        for step in range(uploads):
            began = time.perf_counter()
            upload(step, path)
            seconds.append(time.perf_counter() - began)
        print(f"checkpoint file: {path.stat().st_size / 1e6:.1f} MB")
    return statistics.median(seconds)


def ddp_step_seconds(processes: int, steps: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out.json"
        child = [str(Path(__file__).resolve()), "--ddp-child", str(out), "--ddp-steps", str(steps)]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                     str(processes), "--master-addr", "127.0.0.1", "--master-port", "29533"]
                    if processes > 1 else [sys.executable])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*launcher, *child], env=env, capture_output=True, text=True,
                              cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(f"DDP child failed: {done.stderr[-2000:]}")
        return json.loads(out.read_text())["median_step_s"]


def ddp_child(out: Path, steps: int) -> None:
    """Under torchrun (or alone): the mini_sweep baseline, global batch 2 x 16, timed per step."""
    import torch

    from rtlab.data import load_data_section
    from rtlab.execute.distributed import current_ranks
    from rtlab.execute.trainer import TrainingLoop
    from rtlab.plan import plan_runs
    from rtlab.spec import load_spec

    torch.set_num_threads(1)
    run = plan_runs(load_spec(SPEC))[0]
    train = run.train.model_copy(update={"batch_size": 16, "grad_accum": 2, "max_iters": steps})
    run = run.model_copy(update={"train": train})
    with tempfile.TemporaryDirectory() as scratch:
        loop = TrainingLoop(run, Path(scratch), load_data_section(run.data), None, None)
        seconds = []
        for _ in range(steps):
            began = time.perf_counter()
            loop.optimizer_step()
            seconds.append(time.perf_counter() - began)
    if current_ranks().is_main:
        out.write_text(json.dumps({"median_step_s": statistics.median(seconds[2:])}))


def cluster_stores(root: Path) -> tuple[Any, Any]:
    from tests.helpers.mlflow_server import MlflowServer
    from tests.helpers.postgres import start_postgres

    os.chmod(root, 0o755)
    postgres = start_postgres(root / "pg")
    postgres.create_database("mlflow")
    server = MlflowServer(postgres.url(database="mlflow"), root / "artifacts", root / "mlflow.log")
    server.start()
    return postgres, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iters", type=int, default=100)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--ddp-steps", type=int, default=30)
    parser.add_argument("--ddp-child", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.ddp_child:
        return ddp_child(args.ddp_child, args.ddp_steps)
    results: dict[str, Any] = {}
    one, two = ddp_step_seconds(1, args.ddp_steps), ddp_step_seconds(2, args.ddp_steps)
    results["ddp"] = {"step_s_1_process": one, "step_s_2_processes": two,
                      "ratio_2_over_1": two / one}
    print(json.dumps(results["ddp"]))
    with tempfile.TemporaryDirectory(prefix="rtlab-bench-cluster-") as scratch:
        root = Path(scratch)
        (root / "embedded").mkdir()
        results["embedded"] = sweep(root / "embedded", args.max_iters, None,
                                    f"sqlite:///{root / 'embedded' / 'mlflow.db'}")
        postgres, server = cluster_stores(root)
        try:
            (root / "cluster").mkdir()
            results["cluster"] = sweep(root / "cluster", args.max_iters, postgres.url(),
                                       server.url)
            upload = upload_seconds(server.url, args.uploads)
        finally:
            server.stop()
            postgres.stop()
            os.chdir(ROOT)  # the sweeps ran in folders that are about to go
    per_run = args.max_iters // 25
    results["checkpoint_upload"] = {
        "median_upload_s": upload, "uploads_per_run": per_run,
        "share_of_run": upload * per_run / results["cluster"]["median_run_wall_s"]}
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
