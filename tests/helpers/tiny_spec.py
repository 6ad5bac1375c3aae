"""Tiny experiment specs for the CLI end-to-end tests, and the environment of rtlab subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

TINY_SPEC = """\
name: {name}
description: a tiny end-to-end test experiment
seeds: {seeds}
base:
  data:
    name: precache_discrete
    n_digits: 3
    modulus: 5
  model:
    block_size: 16
    n_layer: 1
    n_head: 2
    n_embd: 16
    dropout: 0.0
  train:
    max_iters: {max_iters}
    batch_size: 4
    learning_rate: 1.0e-3
    warmup_iters: 0
    eval_interval: 10
    eval_iters: 2
    checkpoint_interval: {checkpoint_interval}
    log_interval: {log_interval}
    device: cpu
    sample_tokens: 12
    threads: 1
variants:
{variants}
"""

TWO_ARMS = """\
  baseline: {}
  reasoning_1:
    model:
      reasoning: {n_tokens: 1}
"""


def write_spec(
    directory: Path,
    name: str = "tiny",
    seeds: str = "[0, 1]",
    max_iters: int = 20,
    checkpoint_interval: int = 10,
    log_interval: int = 5,
    variants: str = TWO_ARMS,
) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(TINY_SPEC.format(
        name=name, seeds=seeds, max_iters=max_iters, checkpoint_interval=checkpoint_interval,
        log_interval=log_interval, variants=variants,
    ))
    return path


def subprocess_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["RTLAB_DATA_DIR"] = str(workdir / "data")
    env["PYTHONUNBUFFERED"] = "1"
    return env
