"""Report generation time for a mini_sweep-shaped experiment (issue: under 15 s).

Logs a synthetic store shaped like experiments/mini_sweep.yaml (4 arms x SEEDS seeds, 300 steps,
train metrics every 10 steps, val every 100, the tracker's metric names) into a temporary sqlite
MLflow store, then times:
- `cold`: `rtlab report experiments/mini_sweep.yaml` as a fresh process, as a user runs it
  (Python start, imports of mlflow/matplotlib/scipy and of torch via the spec loader, load,
  figures, tables, HTML, artifact logging);
- `warm`: build_report called again in one process (the work itself, imports paid).
Medians over --repeats. The real mini_sweep's numbers are the same shape, so this is its time.

    python benchmarks/bench_report.py              # ~1 minute on 2 busy cores
    python benchmarks/bench_report.py --seeds 2 --repeats 1

Exit status 1 if the median cold time is not under 15 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repo root: tests.helpers is a package

from rtlab.report import build_report  # noqa: E402
from tests.helpers.fake_store import FakeRun, log_experiment  # noqa: E402

ARMS = {"baseline": (0, "off", 2.10), "reasoning_1": (1, "off", 2.05),
        "reasoning_2": (2, "off", 2.07), "myopic": (0, "strict", 2.30)}
LIMIT_S = 15.0


def make_store(root: Path, seeds: int) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = [
        FakeRun(arm, seed, val - 0.05 + 0.01 * seed, val + 0.01 * seed, steps=300,
                log_interval=10, eval_interval=100, tokens_per_step=32 * 64,
                flops_per_token=4.0e6 * (1 + n_tokens), n_tokens=n_tokens, myopic=myopic)
        for arm, (n_tokens, myopic, val) in ARMS.items() for seed in range(seeds)
    ]
    log_experiment(uri, "mini_sweep", runs, artifact_location=str(root / "artifacts"))
    return uri


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = ROOT / "experiments" / "mini_sweep.yaml"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        uri = make_store(root, args.seeds)
        command = [sys.executable, "-m", "rtlab.cli", "report",  # what `rtlab report` runs
                   str(spec), "--tracking-uri", uri, "--out", str(root / "reports")]
        cold, warm, phases = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            cold.append(time.perf_counter() - start)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
            start = time.perf_counter()
            result = build_report(None, uri, root / "reports", spec_path=spec)
            warm.append(time.perf_counter() - start)
            phases.append(result.seconds)
    median_phases = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    print(f"mini_sweep-shaped report, 4 arms x {args.seeds} seeds, 300 steps, "
          f"{args.repeats} repeats")
    print(f"cold (fresh process, rtlab report): median {statistics.median(cold):.2f} s "
          f"(all: {', '.join(f'{t:.2f}' for t in cold)})")
    print(f"warm (build_report in process):     median {statistics.median(warm):.2f} s")
    print("warm phases (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in median_phases.items()))
    return 0 if statistics.median(cold) < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
