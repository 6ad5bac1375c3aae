"""The runs in the report tests' MLflow store, with known final values so tests can recompute every
table number, and the `Store` handle the `store` fixture returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.helpers.fake_store import FakeRun

# final (train, val, best val) per seed, chosen with unequal spreads so Welch matters
KNOWN = {
    "baseline": [(3.00, 3.10, 3.08), (3.03, 3.14, 3.12), (2.97, 3.05, 3.04)],
    "reason1": [(2.80, 2.95, 2.94), (2.86, 3.01, 3.00), (2.83, 2.99, 2.97)],
    "same": [(2.90, 3.09, 3.07), (2.92, 3.12, 3.10), (2.91, 3.07, 3.06)],
    "myopic": [(3.20, 3.30, 3.29), (3.25, 3.36, 3.33)],
    "single": [(3.05, 3.20, 3.18)],
}
FLOPS_PER_TOKEN = {"reason1": 2.0e6}
THROUGHPUT = {"baseline": 1000.0, "reason1": 600.0}

RELOGGED_VAL = 7.777  # messy: reason1-s0's val_loss at step 20, logged again after a resume
GRID = {  # (arm, lr) -> final val per seed; train = val - 0.1
    ("baseline", 0.001): [3.2, 3.3],
    ("baseline", 0.003): [3.0, 3.05],
    ("reason1", 0.001): [3.1, 3.25],
    ("reason1", 0.003): [2.9, 2.92],
}


GRID_SPEC = """\
name: grid
seeds: [0, 1]
base:
  data: {name: shakespeare_char}
  model: {block_size: 64, n_layer: 1, n_head: 1, n_embd: 16}
  train: {max_iters: 100, batch_size: 4, eval_interval: 20, log_interval: 10}
variants:
  baseline: {}
  reason1:
    model: {reasoning: {n_tokens: 1}}
grid:
  train.learning_rate: [0.001, 0.003]
claims:
  - metric: val_loss
    arm: reason1
    expect: lower
    source: the default baseline_arm is baseline
"""


@dataclass
class Store:
    uri: str
    root: Path
    ids: dict[str, dict[str, str]]  # experiment -> run name -> run id


def known_runs() -> list[FakeRun]:
    runs = [
        FakeRun(arm, seed, train, val, best, flops_per_token=FLOPS_PER_TOKEN.get(arm, 1.0e6),
                tokens_per_sec=THROUGHPUT.get(arm, 800.0) + seed)
        for arm, values in KNOWN.items()
        for seed, (train, val, best) in enumerate(values)
    ]
    # Unfinished runs with losses far from everything: any leak into an aggregate shows.
    runs += [
        FakeRun("reason1", 3, 9.0, 9.0, status="FAILED"),
        FakeRun("reason1", 4, 9.0, 9.0, status="KILLED"),
        FakeRun("baseline", 3, 9.0, 9.0, status="RUNNING"),
    ]
    return runs


def grid_runs() -> list[FakeRun]:
    return [
        FakeRun(arm, seed, val - 0.1, val, grid_point={"train.learning_rate": lr})
        for (arm, lr), values in GRID.items()
        for seed, val in enumerate(values)
    ]


def messy_runs() -> list[FakeRun]:
    return [
        FakeRun("baseline", 0, 3.0, 3.1, config_hash="aaaaaaaaaaaa"),
        # the same config finished twice (e.g. rerun by hand): only the later one counts
        FakeRun("baseline", 0, 3.5, 3.6, config_hash="aaaaaaaaaaaa"),
        FakeRun("baseline", 1, 3.0, 3.2),
        FakeRun("reason1", 0, 2.9, 3.0),
        FakeRun("reason1", 1, 2.9, 3.05, log_final_metrics=False),
        FakeRun("ghost", 0, 9.0, 9.0, status="FAILED"),
    ]
