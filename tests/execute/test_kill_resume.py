"""A real process killed with SIGKILL mid-run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtlab.data import Dataset
from rtlab.execute import CHECKPOINT_NAME, load_checkpoint, train
from tests.helpers.train_config import make_config

pytestmark = pytest.mark.slow  # a training process SIGKILLed mid-run

# The child trains the same run and SIGKILLs itself at step 13: no exception, no cleanup, no
# finally blocks; what survives is what was on disk (the checkpoint of step 10).
CHILD = """
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from rtlab.data import load_dataset
from rtlab.config import RunConfig
from rtlab.execute import train

config, corpus, data_dir, run_dir = RunConfig.from_json(sys.argv[1]), *sys.argv[2:5]
dataset = load_dataset("text", {"path": corpus, "tokenizer": "char"}, data_dir=Path(data_dir))

def kill_at_step_13(step, metrics):
    if step == 13:
        os.kill(os.getpid(), signal.SIGKILL)

train(config, Path(run_dir), dataset, on_metrics=kill_at_step_13)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkilled_run_resumes_bit_identical(
    text_dataset: Dataset, text_corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    config = make_config({"dropout": 0.1}, seed=3, grad_accum=2, max_iters=20,
                         checkpoint_interval=5, log_interval=1)
    corpus, data_dir = text_corpus
    child = subprocess.run(
        [sys.executable, "-c", CHILD, config.to_json(), str(corpus), str(data_dir),
         str(tmp_path / "killed")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)["step"] == 10
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == [CHECKPOINT_NAME]

    torch.set_num_threads(1)
    resumed = train(config, tmp_path / "killed", text_dataset)
    uninterrupted = train(config, tmp_path / "whole", text_dataset)
    assert resumed.resumed_from_step == 10
    assert resumed.final_metrics == uninterrupted.final_metrics
    weights_resumed = load_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)["model"]
    weights_whole = load_checkpoint(tmp_path / "whole" / CHECKPOINT_NAME)["model"]
    for name, tensor in weights_whole.items():
        assert torch.equal(tensor, weights_resumed[name]), name
