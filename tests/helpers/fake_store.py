"""Log runs with known values into a real MLflow store, in the schema of docs/ARCHITECTURE.md.

Used by the report tests and by bench_report.py. Curves decay exponentially and end exactly at the
requested final values, so every table number is known in advance.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag


@dataclass
class FakeRun:
    arm: str
    seed: int
    final_train: float
    final_val: float
    best_val: float | None = None  # default: final_val
    status: str = "FINISHED"  # FINISHED | FAILED | KILLED | RUNNING
    grid_point: dict = field(default_factory=dict)
    steps: int = 100
    log_interval: int = 10
    eval_interval: int = 20
    tokens_per_step: int = 4096
    flops_per_token: float = 1.0e6
    tokens_per_sec: float = 1000.0
    n_tokens: int = 0  # model.reasoning.n_tokens
    myopic: str = "off"
    log_final_metrics: bool = True
    config_hash: str | None = None

    @property
    def name(self) -> str:
        grid = "".join(f"-{k.split('.')[-1]}={v}" for k, v in self.grid_point.items())
        return f"{self.arm}{grid}-s{self.seed}"


def _curve(final: float, step: int, steps: int, start: float = 10.0) -> float:
    """Decays from `start` to exactly `final` at the last step."""
    weight = math.exp(-5.0 * step / steps) - math.exp(-5.0)
    return final + (start - final) * weight / (1.0 - math.exp(-5.0))


def log_experiment(
    tracking_uri: str,
    experiment: str,
    runs: list[FakeRun],
    artifact_location: str,
    with_parent: bool = True,
) -> dict[str, str]:
    """Create `experiment` with a parent and the given child runs; returns run name -> run id
    (and "parent" -> the parent's id). Artifacts go to `artifact_location` (never the CWD)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
    parent_id = None
    if with_parent:
        parent = client.create_run(experiment_id, run_name=experiment,
                                   tags={"rtlab.role": "parent"})
        parent_id = parent.info.run_id
    ids = {"parent": parent_id} if parent_id else {}
    for run in runs:
        name_bytes = run.name.encode()
        tags = {
            "rtlab.role": "child",
            "rtlab.arm": run.arm,
            "rtlab.seed": str(run.seed),
            "rtlab.grid_point": json.dumps(run.grid_point, sort_keys=True),
            "rtlab.config_hash": run.config_hash or hashlib.sha256(name_bytes).hexdigest()[:12],
            "rtlab.git_commit": "0123456789abcdef0123456789abcdef01234567",
            "rtlab.git_dirty": "false",
            "rtlab.version": "0.1.0",
            "rtlab.python": "3.11.0",
            "rtlab.torch": "2.13.0",
            "rtlab.device": "cpu",
        }
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if run.status == "FAILED":
            tags["rtlab.failure_reason"] = "TrainingDiverged: loss is nan at step 40"
        created = client.create_run(experiment_id, run_name=run.name, tags=tags)
        run_id = created.info.run_id
        ids[run.name] = run_id
        params = {
            "seed": run.seed, "flops_per_token": run.flops_per_token,
            "model.reasoning.n_tokens": run.n_tokens, "model.myopic": run.myopic,
            "model.block_size": 64, "train.batch_size": run.tokens_per_step // 64,
            "train.grad_accum": 1, "data.name": "fake",
        }
        params.update({key: value for key, value in run.grid_point.items()})
        now = int(time.time() * 1000)
        metrics = []
        last_step = run.steps if run.status == "FINISHED" else run.steps // 2
        # As the tracker logs them: counters and the minibatch loss from the first log step on
        # (nothing trained at step 0), train/val loss estimates at eval steps (step 0 included).
        for step in range(0, last_step + 1, run.log_interval):
            tokens = step * run.tokens_per_step
            if step > 0:
                metrics += [
                    Metric("batch_loss", _curve(run.final_train, step, run.steps) + 0.01, now,
                           step),
                    Metric("lr", 1e-3, now, step),
                    Metric("tokens_seen", float(tokens), now, step),
                    Metric("flops_seen", float(tokens) * run.flops_per_token, now, step),
                    Metric("tokens_per_sec", run.tokens_per_sec, now, step),
                ]
            if step % run.eval_interval == 0:
                metrics += [
                    Metric("train_loss", _curve(run.final_train, step, run.steps), now, step),
                    Metric("val_loss", _curve(run.final_val, step, run.steps), now, step),
                ]
        if run.status == "FINISHED" and run.log_final_metrics:
            best = run.final_val if run.best_val is None else run.best_val
            metrics += [
                Metric("final_train_loss", run.final_train, now, run.steps),
                Metric("final_val_loss", run.final_val, now, run.steps),
                Metric("best_val_loss", best, now, run.steps),
            ]
        for start in range(0, len(metrics), 1000):
            client.log_batch(
                run_id,
                metrics=metrics[start:start + 1000],
                params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [],
                tags=[RunTag("rtlab.stage", "done")] if start == 0 else [],
            )
        if run.status != "RUNNING":
            client.set_terminated(run_id, status=run.status)
        time.sleep(0.003)  # distinct start/end times: "the later run" must be well defined
    if parent_id:
        client.set_terminated(parent_id)
    return ids
