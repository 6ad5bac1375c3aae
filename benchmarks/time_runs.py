"""Wall time of whole training runs, one per arm of an experiment, each in a fresh process.

What `rtlab run` spends per run, less the sweep's bookkeeping (queue, MLflow): `rtlab.execute.train`
on the run's own RunConfig, from process start (imports, data, model) to return, with the
trainer's own split of that time (optimizer steps, evaluation, checkpoints, sample, setup).

    python benchmarks/time_runs.py                               # mini_sweep, seed 0, 1 thread
    python benchmarks/time_runs.py --threads 2 --arms baseline,myopic
    python benchmarks/time_runs.py --repo /tmp/old-checkout      # time another checkout's code
    python benchmarks/time_runs.py --repo /tmp/old-checkout --repo .   # before/after, paired

With several --repo, each arm runs once per checkout, all of them at the same time (one process
each), so both sides of a comparison share whatever load the machine has; with two checkouts on
two cores that is also how the sweep runs mini_sweep (2 workers x 1 thread). `--threads 2` with
one checkout is one run alone. On a machine others are using, compare the process CPU seconds of
training (one thread: other processes' load does not count in them) rather than the wall.

`--speedups both` runs each arm twice side by side: as is, and with issue 15's two model speedups
switched off (linears on MKL's F.linear, delay-1 reasoning slots through the dense mask), i.e.
the model paths before them, for experiments older checkouts cannot read:

    python benchmarks/time_runs.py --experiment experiments/precache_discrete.yaml \
        --arms baseline,reasoning_1,reasoning_2,myopic --max-iters 200 --speedups both
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def switch_off_speedups() -> None:
    """The model paths before issue 15: F.linear (MKL) for every CPU linear, and the dense slot
    mask instead of plain causal SDPA for delay-1 reasoning (the 'auto' backend's shortcut)."""
    import rtlab.model.gpt as gpt
    from rtlab.model.linear import set_cpu_matmul

    set_cpu_matmul("mkl")
    make_attention = gpt.make_attention

    def without_causal_shortcut(config, backend="auto", dense_cache=None):
        return make_attention(config, "dense" if backend == "auto" else backend, dense_cache)

    gpt.make_attention = without_causal_shortcut


def time_one(repo: Path, experiment: Path, arm: str, seed: int, threads: int,
             max_iters: int | None, compile_model: bool = False, speedups: bool = True) -> dict:
    """Train one run in this process (called in a child process) and return its timings."""
    started = time.perf_counter()
    sys.path.insert(0, str(repo))
    import torch

    torch.set_num_threads(threads)
    if not speedups:
        switch_off_speedups()
    from rtlab.data import load_data_section
    from rtlab.execute import train
    from rtlab.plan import plan_runs
    from rtlab.spec import load_spec

    spec = load_spec(experiment)
    runs = plan_runs(spec, lambda d: load_data_section(d).fingerprint)
    run = next(r for r in runs if r.arm == arm and r.seed == seed)
    changes = {"max_iters": max_iters} if max_iters is not None else {}
    if compile_model:
        changes["compile"] = True
    if changes:
        run = run.model_copy(update={"train": run.train.model_copy(update=changes)})
    dataset = load_data_section(run.data)
    imports = time.perf_counter() - started
    cpu_start = time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(run, Path(run_dir), dataset)
    train_cpu = time.process_time() - cpu_start
    return {
        "arm": arm, "threads": threads, "compile": compile_model, "speedups": speedups,
        "steps": result.steps,
        "process_wall_s": time.perf_counter() - started, "imports_data_s": imports,
        "train_wall_s": result.wall_seconds, "train_cpu_s": train_cpu,
        "step_s": result.step_seconds,
        "final_val_loss": result.final_metrics["final_val_loss"],
        **{f"{k}_s": v for k, v in result.overhead_seconds.items()},
    }


def child_command(args: argparse.Namespace, arm: str, repo: Path, speedups: str) -> list[str]:
    command = [sys.executable, __file__, "--child", arm, "--seed", str(args.seed),
               "--threads", str(args.threads), "--repo", str(repo),
               "--experiment", str(args.experiment), "--speedups", speedups]
    if args.max_iters is not None:
        command += ["--max-iters", str(args.max_iters)]
    if args.compile:
        command.append("--compile")
    return command


def run_arm(args: argparse.Namespace, arm: str) -> list[dict]:
    """The arm once per checkout (and speedups setting), side by side; one row each."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    settings = ["off", "on"] if args.speedups == "both" else [args.speedups]
    sides = [(repo, speedups) for repo in args.repo for speedups in settings]
    children = [subprocess.Popen(child_command(args, arm, repo, speedups),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env)
                for repo, speedups in sides]
    rows = []
    for (repo, _), child in zip(sides, children, strict=True):
        out, err = child.communicate()
        if child.returncode != 0:
            raise SystemExit(f"{arm} with {repo} failed:\n{err}")
        rows.append({"repo": str(repo), **json.loads(out.strip().splitlines()[-1])})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", type=Path, default=ROOT / "experiments/mini_sweep.yaml")
    parser.add_argument("--arms", default="baseline,reasoning_1,reasoning_2,myopic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-iters", type=int, default=None, help="shorten every run")
    parser.add_argument("--compile", action="store_true", help="train with train.compile: true")
    parser.add_argument("--speedups", choices=["on", "off", "both"], default="on",
                        help="issue 15's model speedups (both: each arm with and without)")
    parser.add_argument("--repo", type=Path, action="append", default=None,
                        help="a checkout whose rtlab runs (repeat: run them side by side)")
    parser.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repo = [r.resolve() for r in (args.repo or [ROOT])]
    if args.child is not None:  # one run, in this (fresh) process
        row = time_one(args.repo[0], args.experiment.resolve(), args.child, args.seed,
                       args.threads, args.max_iters, args.compile, args.speedups != "off")
        print(json.dumps(row))
        return [row]
    rows = []
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        for row in run_arm(args, arm):
            rows.append(row)
            label = row["repo"] + ("" if row["speedups"] else " (speedups off)")
            print(f"{arm:12s} {label}: threads {args.threads}: process "
                  f"{row['process_wall_s']:6.1f} s, train {row['train_wall_s']:6.1f} s wall, "
                  f"{row['train_cpu_s']:6.1f} s CPU (steps "
                  f"{row['step_s']:6.1f}, eval {row.get('eval_s', 0):5.1f}, checkpoint "
                  f"{row.get('checkpoint_s', 0):4.1f}, sample {row.get('sample_s', 0):4.1f}, "
                  f"setup {row.get('setup_s', 0):4.1f}), final val {row['final_val_loss']:.4f}",
                  flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
