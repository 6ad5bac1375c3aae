"""Pruning on mini_tune: training FLOPs spent with the median pruner vs without, at the best value
each search finds, and the sampler's per-trial overhead as a share of a trial.

Runs the tuning phase of experiments/mini_tune.yaml (no confirm runs) twice in temporary folders:
as written (median pruner) and with `--set search.pruner=none`, same sampler and seed. With
`--pruned-storage URL` the pruned search is read from an existing study storage instead (e.g.
the `.rtlab/mini_tune/optuna.db` that `rtlab run experiments/mini_tune.yaml` left), so only the
unpruned search runs.

Per arm and in total: trials completed / pruned, optimizer steps and training FLOPs spent, the
best objective found, and the FLOPs spent until the trial that found it (trials in the order they
ran). Sampler overhead: per trial, the time from its claim to its sampled values (loading the
study, TPE's proposal), over the trial's wall time.

    python benchmarks/bench_search.py --pruned-storage sqlite:///$PWD/.rtlab/mini_tune/optuna.db
    python benchmarks/bench_search.py --json benchmarks/results/bench_search.json

CPU heavy: about the tuning phase of mini_tune once or twice (5-10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "experiments" / "mini_tune.yaml"


def run_tuning(spec: Path, sets: list[str], workdir: Path, workers: int | None) -> dict[str, Any]:
    """The tuning phase in `workdir` (fresh stores); its search summary."""
    from rtlab.sweep import SweepOptions, prepare_experiment, run_sweep

    prepared = prepare_experiment(spec, sets)
    options = SweepOptions(workers=workers, quiet=True, confirm=False,
                           tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                           state_root=workdir / ".rtlab")
    start = time.perf_counter()
    summary = run_sweep(prepared, options)
    print(f"  tuning with {sets or 'the spec as written'}: {time.perf_counter() - start:.0f} s "
          "wall", file=sys.stderr)
    return summary.search


def read_tuning(spec: Path, url: str) -> dict[str, Any]:
    """The search summary of an existing storage (the studies of `spec`)."""
    from rtlab.sweep import prepare_experiment
    from rtlab.sweep.search import SearchStudies
    from rtlab.sweep.search_summary import search_summary

    names = [plan.study_name for plan in prepare_experiment(spec).studies]
    return search_summary(SearchStudies.open(url, names))


def measure(summary: dict[str, Any]) -> dict[str, Any]:
    """Per arm and in total: what the search spent and found."""
    arms = {}
    for study in summary["studies"]:
        trials = sorted((t for t in study["trials"] if t["counted"]), key=lambda t: t["number"])
        best = study["best"]
        upto = [t for t in trials if t["number"] <= best["number"]] if best else trials
        arms[study["label"]] = {
            "complete": sum(t["state"] == "complete" for t in trials),
            "pruned": sum(t["state"] == "pruned" for t in trials),
            "failed": sum(t["state"] == "failed" for t in trials),
            "steps": sum(t["steps"] for t in trials),
            "flops": sum(t["flops"] for t in trials),
            "best_value": best["value"] if best else None,
            "best_params": best["params"] if best else None,
            "flops_to_best": sum(t["flops"] for t in upto),
            "sample_seconds": [t["sample_seconds"] for t in trials if t["sample_seconds"]],
            "trial_seconds": [t["seconds"] for t in trials if t["seconds"]],
        }
    samples = [s for arm in arms.values() for s in arm.pop("sample_seconds")]
    walls = [s for arm in arms.values() for s in arm.pop("trial_seconds")]
    return {
        "arms": arms,
        "flops": sum(arm["flops"] for arm in arms.values()),
        "steps": sum(arm["steps"] for arm in arms.values()),
        "flops_to_best": sum(arm["flops_to_best"] for arm in arms.values()),
        "sampler_seconds_per_trial": statistics.median(samples) if samples else None,
        "trial_seconds_median": statistics.median(walls) if walls else None,
        "sampler_share": sum(samples) / sum(walls) if walls else None,
    }


def show(pruned: dict[str, Any], unpruned: dict[str, Any]) -> None:
    print(f"{'arm':<12} {'variant':<9} {'done c/p':>8} {'steps':>7} {'GFLOPs':>8} "
          f"{'to best':>8} {'best':>7}")
    for arm in pruned["arms"]:
        for label, result in (("pruned", pruned), ("unpruned", unpruned)):
            a = result["arms"][arm]
            print(f"{arm:<12} {label:<9} {a['complete']:>4}/{a['pruned']:<3} {a['steps']:>7} "
                  f"{a['flops'] / 1e9:>8.1f} {a['flops_to_best'] / 1e9:>8.1f} "
                  f"{a['best_value']:>7.4f}")
    print(f"total FLOPs: pruned {pruned['flops'] / 1e9:.1f} G vs unpruned "
          f"{unpruned['flops'] / 1e9:.1f} G ({pruned['flops'] / unpruned['flops']:.0%}); "
          f"to each arm's best: {pruned['flops_to_best'] / 1e9:.1f} G vs "
          f"{unpruned['flops_to_best'] / 1e9:.1f} G")
    for label, result in (("pruned", pruned), ("unpruned", unpruned)):
        print(f"sampler overhead ({label}): median {result['sampler_seconds_per_trial']:.3f} s "
              f"per trial, {result['sampler_share']:.2%} of trial wall time (median trial "
              f"{result['trial_seconds_median']:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--pruned-storage", help="read the pruned search from this storage")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtlab-bench-search-") as tmp:
        os.chdir(tmp)  # MLflow artifacts and run directories stay in the temporary folder
        if args.pruned_storage:
            pruned = read_tuning(args.spec, args.pruned_storage)
        else:
            (Path(tmp) / "pruned").mkdir()
            pruned = run_tuning(args.spec, [], Path(tmp) / "pruned", args.workers)
        (Path(tmp) / "unpruned").mkdir()
        unpruned = run_tuning(args.spec, ["search.pruner=none"], Path(tmp) / "unpruned",
                              args.workers)
        os.chdir(ROOT)
    results = {"pruned": measure(pruned), "unpruned": measure(unpruned),
               "pruned_from": args.pruned_storage or "this run"}
    show(results["pruned"], results["unpruned"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
