"""A tiny searched experiment for the search tests (real studies, real MLflow, a tiny model)."""

from __future__ import annotations

from pathlib import Path

SEARCH_SPEC = """\
name: {name}
description: a tiny searched test experiment
seeds: [1]
base:
  data: {{name: precache_discrete, n_digits: 3, modulus: 5}}
  model: {{block_size: 16, n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}}
  train:
    max_iters: {max_iters}
    batch_size: 4
    learning_rate: 1.0e-3
    eval_interval: 5
    eval_iters: 2
    checkpoint_interval: {checkpoint_interval}
    log_interval: 5
    device: cpu
    sample_tokens: 0
    threads: 1
variants:
{variants}
search:
  params:
    train.learning_rate: {{type: float, low: 1.0e-4, high: 3.0e-1, log: true}}
  trials: {trials}
  pruner: {{type: median, n_startup_trials: 2, n_warmup_steps: 5}}
confirm:
  seeds: [1]
"""

ONE_ARM = "  baseline: {}\n"
TWO_ARMS = "  baseline: {}\n  reasoning_1: {model: {reasoning: {n_tokens: 1}}}\n"


def write_search_spec(directory: Path, name: str = "tiny_search", trials: int = 5,
                      max_iters: int = 20, checkpoint_interval: int = 5,
                      variants: str = ONE_ARM) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(SEARCH_SPEC.format(name=name, trials=trials, max_iters=max_iters,
                                       checkpoint_interval=checkpoint_interval,
                                       variants=variants))
    return path
