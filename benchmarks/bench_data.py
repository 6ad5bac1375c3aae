"""Batch building vs one CPU training step, for the shakespeare_char baseline shape.

The issue's bar: building one shakespeare_char batch (64 x 256 tokens) must take under 2% of one
CPU training step of the baseline model (nanoGPT's shakespeare_char shape: 6 layers, width 384,
6 heads, block 256, batch 64, dropout 0.2; about 10.7M parameters). Both are measured in the same
run, interleaved round by round so that noise from other processes hits both alike; the ratio is
the median over rounds of (median batch time in the round) / (step time in the round).

    python benchmarks/bench_data.py             # ~2 minutes on 2 busy cores (a step: ~25 s)
    python benchmarks/bench_data.py --rounds 1  # quicker, noisier

The model is `rtlab.model.GPT` when it imports, else a minimal nanoGPT-style GPT defined below
(same shape and FLOPs). Exit status 1 if the ratio is not under 2%.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rtlab.data import default_data_dir, load_dataset
from rtlab.model import GPT, GPTConfig

BATCH, BLOCK, N_LAYER, N_HEAD, N_EMBD, DROPOUT = 64, 256, 6, 6, 384, 0.2


def build_model(vocab_size: int) -> tuple[GPT, torch.optim.Optimizer]:
    """nanoGPT's shakespeare_char shape: the step the batch time is compared with."""
    config = GPTConfig(
        vocab_size=vocab_size,
        block_size=BLOCK,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_embd=N_EMBD,
        dropout=DROPOUT,
        bias=False,
    )
    model = GPT(config)
    return model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (1 step each)")
    parser.add_argument("--batches", type=int, default=50, help="batches built per round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data directory [default: $RTLAB_DATA_DIR or a fresh temp dir]",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or (
            default_data_dir() if "RTLAB_DATA_DIR" in os.environ else Path(tmp)
        )
        start = time.perf_counter()
        dataset = load_dataset("shakespeare_char", {"size": "tiny"}, data_dir)
        print(
            f"shakespeare_char tiny ready in {time.perf_counter() - start:.2f} s "
            f"(preparation {dataset.meta['prepare_seconds']} s), vocab {dataset.vocab_size}, "
            f"{dataset.meta['sizes']['train_tokens']:,} train tokens"
        )
        model, optimizer = build_model(dataset.vocab_size or 0)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model: rtlab.model.GPT, {n_params / 1e6:.2f}M parameters, batch {BATCH} x {BLOCK}, "
            f"{torch.get_num_threads()} torch threads"
        )
        model.train()

        def train_step(step: int) -> float:
            x, y = dataset.batch("train", step, BATCH, BLOCK, seed=1337)
            t0 = time.perf_counter()
            _, loss = model(x, targets=y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        train_step(0)  # warm-up: allocator, kernels
        ratios, batch_times, step_times = [], [], []
        index = 0
        for round_ in range(args.rounds):
            times = []
            for _ in range(args.batches):
                t0 = time.perf_counter()
                dataset.batch("train", index, BATCH, BLOCK, seed=1337)
                times.append(time.perf_counter() - t0)
                index += 1
            batch_time = statistics.median(times)
            step_time = train_step(round_ + 1)
            batch_times.append(batch_time)
            step_times.append(step_time)
            ratios.append(batch_time / step_time)
            print(
                f"round {round_}: batch {batch_time * 1e3:.3f} ms, step {step_time * 1e3:.0f} ms, "
                f"ratio {100 * batch_time / step_time:.4f}%"
            )
        ratio = statistics.median(ratios)
        batch_ms, step_ms = (
            statistics.median(batch_times) * 1e3,
            statistics.median(step_times) * 1e3,
        )
        verdict = "PASS" if ratio < 0.02 else "FAIL"
        print(f"batch building (64 x 256, shakespeare_char): median {batch_ms:.3f} ms")
        print(f"CPU training step (rtlab.model.GPT): median {step_ms:.0f} ms")
        print(f"ratio: {100 * ratio:.4f}% of a step (bar: < 2%) -> {verdict}")
        for name in ("precache_synthetic", "precache_discrete"):
            synthetic = load_dataset(name, {})
            times = []
            for k in range(args.batches):
                t0 = time.perf_counter()
                synthetic.batch("train", k, BATCH, 64 if name == "precache_synthetic" else BLOCK, 0)
                times.append(time.perf_counter() - t0)
            print(f"(info) {name} batch: median {statistics.median(times) * 1e3:.3f} ms")
        assert math.isfinite(ratio)
        return 0 if ratio < 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
