"""The track -> report contract: runs written by rtlab.track itself (not by the fake store)
are read back by build_report with the right arms, seeds, statuses and numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rtlab.config import RunConfig
from rtlab.report import build_report
from rtlab.track import ChildRun, finish_parent, setup_experiment
from tests.helpers.report_store import Store

FINAL_VAL = {("baseline", 0): 2.50, ("baseline", 1): 2.54, ("reasoning_1", 0): 2.40,
             ("reasoning_1", 1): 2.46}


def tiny_run(arm: str, seed: int) -> RunConfig:
    n_tokens = 1 if arm == "reasoning_1" else 0
    return RunConfig.model_validate({
        "experiment": "tracked", "arm": arm, "seed": seed,
        "data": {"name": "fake"},
        "model": {"block_size": 8, "n_layer": 1, "n_head": 1, "n_embd": 8,
                  "reasoning": {"n_tokens": n_tokens}},
        "train": {"max_iters": 20, "learning_rate": 1e-3},
    })


def test_report_reads_what_the_tracker_writes(store: Store, tmp_path: Path) -> None:
    handle = setup_experiment("tracked", store.uri, artifact_root=store.root)
    runs = {}
    for (arm, seed), final_val in FINAL_VAL.items():
        n_tokens = 1 if arm == "reasoning_1" else 0
        runs[arm, seed] = run = tiny_run(arm, seed)
        child = ChildRun.open(handle, run, device="cpu")
        # what the worker logs: flops_per_token, counters at log steps, losses at eval steps
        child.log_param("flops_per_token", 1.0e5 * (1 + n_tokens))
        for step in (0, 10, 20):
            if step:
                child.log_metrics(step, {"tokens_seen": 80.0 * step,
                                         "flops_seen": 8.0e6 * step * (1 + n_tokens),
                                         "tokens_per_sec": 500.0, "batch_loss": 3.0})
            loss = final_val + (20 - step) * 0.05
            child.log_metrics(step, {"train_loss": loss - 0.1, "val_loss": loss})
        child.log_metrics(20, {"final_train_loss": final_val - 0.1, "final_val_loss": final_val,
                               "best_val_loss": final_val})
        child.finish("FINISHED")
    failed = ChildRun.open(handle, tiny_run("reasoning_1", 2), device="cpu")
    failed.log_metrics(0, {"val_loss": 9.0})
    failed.finish("FAILED", failure_reason="TrainingDiverged: loss is nan")
    finish_parent(handle, "FINISHED")

    result = build_report("tracked", store.uri, tmp_path)
    summary = pd.read_csv(result.out_dir / "tables" / "summary.csv").set_index("arm")
    for arm in ("baseline", "reasoning_1"):
        expected = np.mean([v for (a, _), v in FINAL_VAL.items() if a == arm])
        assert summary.loc[arm, "final_val_loss_mean"] == pytest.approx(expected)
        assert summary.loc[arm, "final_val_loss_n"] == 2
    assert summary.loc["reasoning_1", "flops_per_token_mean"] == 2.0e5
    assert result.logged_to_run == handle.parent_run_id
    manifest = json.loads(result.manifest.read_text())
    statuses = {run["run_name"]: run["status"] for run in manifest["runs"]}
    assert statuses["reasoning_1-s2"] == "FAILED" and statuses["baseline-s0"] == "FINISHED"
    assert manifest["torch"] and manifest["python"]  # provenance tags written by the tracker
    assert "TrainingDiverged: loss is nan" in result.report_md.read_text()
    # Each run's resolved config, read back from its params, is the config it was opened with.
    configs = {run["run_name"]: run["config"] for run in manifest["runs"]}
    for run in runs.values():
        assert RunConfig.model_validate(configs[run.run_name]) == run
