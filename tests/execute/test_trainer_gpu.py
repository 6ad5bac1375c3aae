"""The trainer on CUDA: bfloat16 autocast, MFU reported, stop and resume (needs a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtlab.data import Dataset
from rtlab.execute import CHECKPOINT_NAME, load_checkpoint, train
from rtlab.model.device import peak_flops
from tests.helpers.train_config import make_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_cuda_bfloat16_run_learns_reports_mfu_and_resumes(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    config = make_config({"dropout": 0.1}, device="cuda", dtype="bfloat16", max_iters=40,
                         eval_interval=20, checkpoint_interval=10)
    whole = train(config, run_dir=tmp_path / "whole", dataset=text_dataset)
    assert whole.device.startswith("cuda")
    assert whole.final_metrics["final_val_loss"] < whole.history[0]["val_loss"] - 0.5
    if peak_flops(torch.device("cuda")) is not None:
        assert all(0 < h["mfu"] < 1 for h in whole.history if "tokens_per_sec" in h)

    polls = 0

    def stop_after_15_steps() -> bool:
        nonlocal polls
        polls += 1
        return polls > 15

    stopped = train(config, run_dir=tmp_path / "split", dataset=text_dataset,
                    should_stop=stop_after_15_steps)
    assert stopped.status == "stopped" and stopped.steps == 15
    resumed = train(config, run_dir=tmp_path / "split", dataset=text_dataset)
    assert resumed.resumed_from_step == 15 and resumed.steps == 40
    # CUDA kernels (atomics in embedding backward) need not be bit-reproducible: compare closely.
    assert resumed.final_metrics["final_val_loss"] == pytest.approx(
        whole.final_metrics["final_val_loss"], abs=0.05)
    ckpt = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)
    assert ckpt["step"] == 40 and len(ckpt["rng"]["torch_cuda"]) == torch.cuda.device_count()
