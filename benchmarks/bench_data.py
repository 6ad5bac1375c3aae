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
import torch.nn as nn
from torch.nn import functional as F

from rtlab.data import default_data_dir, load_dataset

BATCH, BLOCK, N_LAYER, N_HEAD, N_EMBD, DROPOUT = 64, 256, 6, 6, 384, 0.2


class MinimalBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(N_EMBD), nn.LayerNorm(N_EMBD)
        self.qkv, self.proj = nn.Linear(N_EMBD, 3 * N_EMBD), nn.Linear(N_EMBD, N_EMBD)
        self.mlp = nn.Sequential(
            nn.Linear(N_EMBD, 4 * N_EMBD),
            nn.GELU(),
            nn.Linear(4 * N_EMBD, N_EMBD),
            nn.Dropout(DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=DROPOUT if self.training else 0.0
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class MinimalGPT(nn.Module):
    """Fallback when rtlab.model is not there: nanoGPT's shape, tied embeddings."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.blocks = nn.ModuleList(MinimalBlock() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.head.weight = self.wte.weight

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def build_model(vocab_size: int) -> tuple[nn.Module, torch.optim.Optimizer, str]:
    try:
        from rtlab.model import GPT, GPTConfig

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
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
        return model, optimizer, "rtlab.model.GPT"
    except ImportError:
        model = MinimalGPT(vocab_size)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3), "MinimalGPT (fallback)"


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
        model, optimizer, kind = build_model(dataset.vocab_size or 0)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"model: {kind}, {n_params / 1e6:.2f}M parameters, batch {BATCH} x {BLOCK}, "
            f"{torch.get_num_threads()} torch threads"
        )
        model.train()

        def train_step(step: int) -> float:
            x, y = dataset.batch("train", step, BATCH, BLOCK, seed=1337)
            t0 = time.perf_counter()
            _, loss = model(x, targets=y) if kind != "MinimalGPT (fallback)" else model(x, y)
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
        print(f"CPU training step ({kind}): median {step_ms:.0f} ms")
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
