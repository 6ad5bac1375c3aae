"""The run queue alone, at a scale this machine can only simulate: P processes claiming and
completing no-op runs from one study, on PostgreSQL and on SQLite.

Per storage: claims per second (all processes together), median and p99 claim latency (one
`RunQueue.pop`), and double claims (a trial claimed by two processes: must be 0), checked
against the study afterwards (every trial COMPLETE, each claimed once). PostgreSQL is a fresh
cluster on 127.0.0.1 (Debian's postgresql, as in tests/cluster).

    python benchmarks/bench_queue.py --processes 32 --runs 1000 \
        --json benchmarks/results/bench_queue.json

CPU heavy for a minute or two: P processes share this machine's cores, so claims/s here is a
floor set by CPU, not by the database.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def no_op_run(index: int) -> Any:
    from tests.helpers.train_config import make_config

    return make_config(seed=index)


def fill_queue(url: str, runs: int) -> None:
    from rtlab.sweep.queue import RunQueue

    queue = RunQueue.create(url, "bench", {})
    for index in range(runs):
        queue.enqueue(no_op_run(index))


def claimer(url: str, start: Any, results: Any) -> None:
    from rtlab.sweep.queue import RunQueue

    queue = RunQueue.open(url, "bench")
    claimed, latencies = [], []
    start.wait()
    while True:
        began = time.perf_counter()
        entry = queue.pop()
        latencies.append(time.perf_counter() - began)
        if entry is None:
            break
        claimed.append(entry.number)
        queue.finish(entry, 0.0)
    results.put((os.getpid(), claimed, latencies))


def measure(url: str, processes: int, runs: int) -> dict[str, Any]:
    import optuna

    fill_queue(url, runs)
    context = mp.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=claimer, args=(url, start, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(5.0)  # every process imported and connected
    began = time.perf_counter()
    start.set()
    outcomes = [results.get(timeout=1800) for _ in workers]
    wall = time.perf_counter() - began
    for worker in workers:
        worker.join()
    claims = [number for _, numbers, _ in outcomes for number in numbers]
    latencies = sorted(x for _, _, lat in outcomes for x in lat)
    trials = optuna.load_study(study_name="bench", storage=url).get_trials()
    return {
        "processes": processes, "runs": runs, "wall_s": wall,
        "claims_per_s": len(claims) / wall,
        "median_claim_ms": 1000 * statistics.median(latencies),
        "p99_claim_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "double_claims": len(claims) - len(set(claims)),
        "unclaimed": runs - len(set(claims)),
        "complete_trials": sum(t.state.name == "COMPLETE" for t in trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=32)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from tests.helpers.postgres import start_postgres

    rows = {}
    with tempfile.TemporaryDirectory(prefix="rtlab-bench-queue-") as scratch:
        os.chmod(scratch, 0o755)
        rows["sqlite"] = measure(f"sqlite:///{scratch}/queue.db", args.processes, args.runs)
        server = start_postgres(Path(scratch) / "pg")
        try:
            rows["postgresql"] = measure(server.url(), args.processes, args.runs)
        finally:
            server.stop()
    for name, row in rows.items():
        print(f"{name:10} {row['claims_per_s']:8.1f} claims/s  median {row['median_claim_ms']:7.1f}"
              f" ms  p99 {row['p99_claim_ms']:8.1f} ms  double {row['double_claims']}  "
              f"unclaimed {row['unclaimed']}  complete {row['complete_trials']}/{row['runs']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
