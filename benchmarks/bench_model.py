"""Training throughput of rtlab's GPT per mode, against the matmul limit and a nanoGPT-style GPT.

Every mode (and the reference) trains the same shape on the same random batch. Modes are taken
one at a time, in the order given: each is built and warmed up, then timed in interleaved rounds
together with the anchors (the reference, the baseline and the matmul limit at the baseline's
shapes) and the matmul limit at its own shapes, so machine noise hits a mode and its yardsticks
alike; the table reports medians over rounds of per-round ratios. The table and JSON are
rewritten after each mode, so a run cut short (timeout, --deadline-s) still leaves the modes it
finished. On CPU with one thread the rates are per process-CPU-second, which other processes'
load on a shared machine cannot skew; wall-clock tokens/s is shown too.

    python benchmarks/bench_model.py              # CPU, mini_sweep shape, ~4 minutes
    python benchmarks/bench_model.py --quick      # CPU, ~1 minute
    python benchmarks/bench_model.py --repo /tmp/old-checkout   # another checkout's rtlab
    python benchmarks/bench_model.py --preset gpt2 --device cuda --dtype bfloat16 --compile
    python benchmarks/bench_model.py --preset tiny --device cpu --compile   # smoke-test that path

Columns:
- `limit fraction`: the mode's model FLOP/s (METHODS §6 FLOPs per token x tokens/s) over the
  matmul limit: the FLOP/s of plain `torch.matmul` doing exactly the matrix products of the mode's
  linear layers in one training step (forward x W^T, and the backward's dy W and dy^T x, at the
  mode's rows: batch x slots), with nothing else, timed in the same round. 1.0 would mean the
  whole step ran as fast as its linear layers' matmuls alone.
- `ratio vs ref`: (mode tokens/s) / (reference tokens/s), same round.
- `overhead / FLOP ratio` = (time per token relative to baseline) / (FLOPs per token relative to
  baseline): 1.0 means a mode costs exactly what its extra arithmetic predicts.

The rtlab rows use `GPT.configure_optimizers` (fused AdamW on CPU and CUDA), the reference uses
nanoGPT's optimizer choice (fused on CUDA only); the row `baseline (ref optimizer)` steps rtlab's
baseline with the reference's optimizer, and `baseline (MKL matmul)` runs rtlab's baseline with its
linear layers on plain F.linear (rtlab.model.linear), so each isolates one of the two. Opt-in rows
`reasoning n=2 (dense mask)` and `reasoning n=2 (MKL matmul)` take away one fast path each from
reasoning n=2 (the unmasked causal kernel delay 1 allows; the oneDNN linears).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# The reference: a minimal straightforward GPT (nanoGPT's model, trimmed to what training needs).


class RefBlock(nn.Module):
    def __init__(self, C: int, H: int, bias: bool):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C, bias=bias), nn.LayerNorm(C, bias=bias)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C, bias=bias), nn.Linear(4 * C, C, bias=bias)
        self.H = H

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, V: int, T: int, L: int, H: int, C: int, bias: bool = True):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList([RefBlock(C, H, bias) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C, bias=bias)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.wte.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# ----------------------------------------------------------------------------------------------

PRESETS = {
    # name: (vocab, block_size, n_layer, n_head, n_embd, batch_size, bias)
    "mini_sweep": (65, 64, 4, 4, 128, 32, False),  # experiments/mini_sweep.yaml's model and batch
    "cpu": (512, 64, 4, 4, 128, 8, True),
    "tiny": (128, 32, 2, 2, 32, 2, True),
    "gpt2": (50304, 1024, 12, 12, 768, 8, True),
}

MODES: dict[str, dict] = {
    "baseline": {},
    # the same model stepped with the reference's optimizer: isolates forward/backward speed
    "baseline (ref optimizer)": {"optimizer": "reference"},
    # the same model with every linear layer on plain F.linear (MKL on x86 CPUs)
    "baseline (MKL matmul)": {"cpu_matmul": "mkl"},
    "reasoning n=1": {"fields": {"reasoning": {"n_tokens": 1, "delay": 1}}},
    "reasoning n=2": {"fields": {"reasoning": {"n_tokens": 2, "delay": 1}}},
    "reasoning n=3": {"fields": {"reasoning": {"n_tokens": 3, "delay": 1}}},
    "myopic strict fused": {"fields": {"myopic": "strict", "myopic_impl": "fused"}},
    "myopic paper fused": {"fields": {"myopic": "paper", "myopic_impl": "fused"}},
    "myopic strict explicit": {"fields": {"myopic": "strict", "myopic_impl": "explicit"}},
    # opt-in rows (--modes) that take one fast path away from reasoning n=2
    "reasoning n=2 (dense mask)": {"fields": {"reasoning": {"n_tokens": 2, "delay": 1}},
                                   "backend": "dense"},
    "reasoning n=2 (MKL matmul)": {"fields": {"reasoning": {"n_tokens": 2, "delay": 1}},
                                   "cpu_matmul": "mkl"},
}
DEFAULT_MODES = ["reference", *(m for m in MODES if not m.startswith("reasoning n=2 ("))]
ANCHORS = ("reference", "baseline")

Step = Callable[[], None]


def import_rtlab(repo: Path) -> types.SimpleNamespace:
    """rtlab's model API from the checkout at `repo` (ahead of any installed copy)."""
    sys.path.insert(0, str(repo))
    from rtlab.model import GPT, GPTConfig
    from rtlab.model.device import autocast_context, peak_flops, resolve_device

    try:
        from rtlab.model.linear import cpu_matmul, set_cpu_matmul
    except ImportError:  # a checkout from before rtlab.model.linear
        cpu_matmul = set_cpu_matmul = None
    return types.SimpleNamespace(
        GPT=GPT, GPTConfig=GPTConfig, autocast_context=autocast_context, peak_flops=peak_flops,
        resolve_device=resolve_device, cpu_matmul=cpu_matmul, set_cpu_matmul=set_cpu_matmul,
    )


class Bench:
    """What every mode shares: the rtlab API, shape, device, batch and autocast."""

    def __init__(self, rt: types.SimpleNamespace, args: argparse.Namespace):
        self.rt, self.args = rt, args
        self.V, self.T, self.L, self.H, self.C, B, self.bias = PRESETS[args.preset]
        self.B = args.batch_size or B
        self.device = rt.resolve_device(args.device)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, self.V, (self.B, self.T), generator=g).to(self.device)
        self.y = torch.randint(0, self.V, (self.B, self.T), generator=g).to(self.device)

    def ctx(self):
        return self.rt.autocast_context(self.device, self.args.dtype)

    def model_step(self, mode: str) -> tuple[Step, float | None, int]:
        """(one training step, model FLOPs per token or None for the reference, slots/token)."""
        torch.manual_seed(0)
        spec = MODES.get(mode, {})
        if mode == "reference":
            model = RefGPT(self.V, self.T, self.L, self.H, self.C, self.bias)
            flops, n1 = None, 1
        else:
            fields = dict(vocab_size=self.V, block_size=self.T, n_layer=self.L, n_head=self.H,
                          n_embd=self.C, bias=self.bias, **spec.get("fields", {}))
            model = self.rt.GPT(self.rt.GPTConfig.from_dict(fields))
            if "backend" in spec:
                model.set_attention_backend(spec["backend"])
            flops, n1 = model.flops_per_token(), model.config.reasoning.n_tokens + 1
        model.to(self.device)
        if mode == "reference" or spec.get("optimizer") == "reference":
            # nanoGPT's choice: the fused AdamW kernel on CUDA only (foreach elsewhere)
            fused = {"fused": True} if self.device.type == "cuda" else {}
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), **fused)
        else:  # rtlab's training path (what the trainer calls)
            optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), self.device.type)
        step_model = torch.compile(model) if self.args.compile else model
        matmul = spec.get("cpu_matmul")

        def step() -> None:
            with self.ctx():
                _, loss = step_model(self.x, self.y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        if matmul is None:
            return step, flops, n1

        def step_with_matmul() -> None:
            before = self.rt.cpu_matmul()
            self.rt.set_cpu_matmul(matmul)
            try:
                step()
            finally:
                self.rt.set_cpu_matmul(before)

        return step_with_matmul, flops, n1

    def limit_step(self, n1: int) -> tuple[Step, float]:
        """(the matrix products of one training step's linear layers, their FLOPs) for n1 slots
        per token: each block's four linears at batch x slots rows, the LM head at the main
        slots; forward x W^T, backward dy W and dy^T x; plain torch.matmul, nothing else."""
        C, rows = self.C, self.B * self.T * n1
        shapes = [(rows, C, 3 * C), (rows, C, C), (rows, C, 4 * C), (rows, 4 * C, C)] * self.L
        shapes.append((self.B * self.T, C, self.V))
        # in the dtype autocast would compute in (without paying its casts)
        dtype = torch.bfloat16 if self.args.dtype == "bfloat16" else torch.float32
        g = torch.Generator().manual_seed(1)
        made: dict[tuple, tuple] = {}
        for shape in set(shapes):
            r, k, n = shape
            made[shape] = tuple(torch.randn(*dims, generator=g).to(self.device, dtype)
                                for dims in ((r, k), (n, k), (r, n)))
        work = [made[s] for s in shapes]
        flops = float(sum(3 * 2 * r * k * n for r, k, n in shapes))

        def step() -> None:
            for x, w, dy in work:
                torch.matmul(x, w.t())  # forward
                torch.matmul(dy, w)  # gradient of the input
                torch.matmul(dy.t(), x)  # gradient of the weight

        return step, flops


def time_steps(step: Step, steps: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `steps` calls of step."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def target_checks(rows: list[dict], preset: str, device: torch.device) -> list[str]:
    """The targets for the modes present in this run: issue 15's on CPU (one thread), issue 2's
    on CUDA (GPT-2-small)."""
    by_mode = {row["mode"]: row for row in rows}
    checks = []

    def check(name: str, value: float, ok: bool) -> None:
        if not math.isnan(value):
            checks.append(f"- target {name}: {value:.3g} -> {'PASS' if ok else 'FAIL'}")

    cpu = device.type == "cpu"
    base = by_mode.get("baseline")
    if base is not None and cpu:
        fraction = base["limit_fraction"]
        check("baseline limit fraction >= 0.60", fraction, fraction >= 0.60)
    if base is not None and "reference" in by_mode:
        ratio, bar = base["ratio_vs_reference"], 1.25 if cpu else 1.0
        check(f"baseline / reference throughput >= {bar}", ratio, ratio >= bar)
    if preset == "gpt2" and not cpu and base is not None:
        rate = base["tokens_per_s"]
        check("GPT-2-small baseline tokens/s >= 450k", rate, rate >= 450e3)
    for mode, row in by_mode.items():
        if mode.startswith("reasoning") and (cpu or mode == "reasoning n=1"):
            over, bar = row["overhead_over_flop_ratio"], 1.05 if cpu else 1.15
            check(f"{mode} step <= {bar} x (FLOP ratio x baseline step)", over, over <= bar)
        if mode.startswith("myopic") and mode.endswith("fused") and (cpu or "strict" in mode):
            t, bar = row["time_per_token_vs_baseline"], 1.1 if cpu else 1.3
            check(f"{mode} time per token <= {bar} x baseline", t, t <= bar)
    return checks


def summarize(modes_done: list[str], samples: dict, info: dict, use_cpu_time: bool,
              peak: float | None) -> list[dict]:
    """One row per finished mode from its per-round samples (each paired with the anchors' rates
    and the matmul limit measured in the same round)."""
    base_flops = info["baseline"]["flops"] if "baseline" in info else None
    rows = []
    for mode in modes_done:
        runs = samples[mode]
        flops = info[mode]["flops"] if mode != "reference" else base_flops

        def median(values: list[float]) -> float:
            return statistics.median(values) if values else math.nan

        ratio_ref = median([s["rate"] / s["ref"] for s in runs if s["ref"] is not None])
        time_ratio = median([s["base"] / s["rate"] for s in runs if s["base"] is not None])
        flop_ratio = flops / base_flops if (flops and base_flops) else math.nan
        limit_fraction = (median([s["rate"] * flops / s["limit"] for s in runs])
                          if flops else math.nan)
        wall_rate = median([s["wall"] for s in runs])
        rows.append(dict(
            mode=mode, tokens_per_s=wall_rate,
            tokens_per_cpu_s=median([s["rate"] for s in runs]) if use_cpu_time else math.nan,
            limit_fraction=limit_fraction,
            limit_gflops=median([s["limit"] for s in runs]) / 1e9,
            ratio_vs_reference=ratio_ref, time_per_token_vs_baseline=time_ratio,
            flop_ratio_vs_baseline=flop_ratio, overhead_over_flop_ratio=time_ratio / flop_ratio,
            mfu=wall_rate * flops / peak if (peak and flops) else math.nan, rounds=len(runs),
        ))
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="model shape and batch (default: mini_sweep on CPU, gpt2 on CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per mode")
    parser.add_argument("--steps", type=int, default=None, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help=f"comma-separated, from: reference, {', '.join(MODES)}")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose rtlab runs")
    parser.add_argument("--out", type=Path, default=None, help="write table.md + results.json")
    parser.add_argument(
        "--deadline-s", type=float, default=None,
        help="start no further mode once this many seconds would be exceeded (estimated from "
        "the slowest mode so far); the modes finished are reported",
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modes.split(",") if m.strip() and m.strip() != "reference"
               and m.strip() not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from reference, {', '.join(MODES)}")
    if args.preset is None:
        args.preset = "gpt2" if args.device.startswith("cuda") else "mini_sweep"
    return args


def header_line(bench: Bench, args: argparse.Namespace, rounds: int, steps: int,
                use_cpu_time: bool) -> str:
    device, rt = bench.device, bench.rt
    matmul = rt.cpu_matmul() if rt.cpu_matmul is not None else "F.linear (no rtlab.model.linear)"
    return (
        f"rtlab GPT training throughput: preset {args.preset} (V={bench.V}, T={bench.T}, "
        f"L={bench.L}, H={bench.H}, C={bench.C}, B={bench.B}, bias={bench.bias}), device "
        f"{device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                            else f", rtlab CPU linears: {matmul}")
        + f", dtype {args.dtype}, compile {args.compile}, threads {torch.get_num_threads()}, "
        f"{rounds} interleaved rounds x {steps} steps per mode (anchors and matmul limit timed "
        f"in every round), medians; torch {torch.__version__}; rtlab from {args.repo}; "
        + ("rates per process-CPU-second (1 thread: immune to other processes' load)"
           if use_cpu_time else "rates per wall-clock second")
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    rt = import_rtlab(args.repo.resolve())
    bench = Bench(rt, args)
    device = bench.device
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rounds = args.rounds or (3 if args.quick else 8)
    steps = args.steps or (2 if args.quick else 6)
    if device.type == "cuda":
        steps, rounds = args.steps or 10, args.rounds or 3
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if rt.set_cpu_matmul is None:
        modes = [m for m in modes if "cpu_matmul" not in MODES.get(m, {})]
    # anchors first, so every later mode is timed next to them
    modes = [m for m in ANCHORS if m in modes] + [m for m in modes if m not in ANCHORS]
    # On a shared CPU box, other processes steal wall time but not this process's CPU time:
    # with one thread, tokens per CPU-second measures the work itself, so ratios on CPU use it.
    use_cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    header = header_line(bench, args, rounds, steps, use_cpu_time)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    runner = Runner(bench, rounds, steps, use_cpu_time)
    result: dict = {"header": header, "rows": [], "samples": runner.samples}
    slowest_mode_s = 0.0
    for mode in modes:
        elapsed = time.perf_counter() - started
        if args.deadline_s is not None and elapsed + slowest_mode_s > args.deadline_s:
            print(f"  deadline: skipping {mode} and later modes ({elapsed:.0f} s used)",
                  file=sys.stderr)
            break
        mode_t0 = time.perf_counter()
        runner.run_mode(mode)
        slowest_mode_s = max(slowest_mode_s, time.perf_counter() - mode_t0)
        print(f"  {mode} done ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr)
        result["rows"] = summarize(runner.done, runner.samples, runner.info, use_cpu_time,
                                   rt.peak_flops(device))
        if out is not None:  # after every mode: a run cut short still leaves its numbers
            out.mkdir(parents=True, exist_ok=True)
            tag = f"bench_{args.preset}_{device.type}"
            table = render(header, result["rows"], args.preset, device)
            (out / f"{tag}.md").write_text(table + "\n")
            (out / f"{tag}.json").write_text(json.dumps(result, indent=2, default=str))
    print(render(header, result["rows"], args.preset, device))
    return result


class Runner:
    """Builds each mode, warms it up and times it in interleaved rounds with its yardsticks."""

    def __init__(self, bench: Bench, rounds: int, steps: int, use_cpu_time: bool):
        self.bench, self.rounds, self.steps, self.use_cpu_time = bench, rounds, steps, use_cpu_time
        self.built: dict[str, Step] = {}
        self.info: dict[str, dict] = {}  # mode -> flops per token, slots per token
        self.limits: dict[int, tuple[Step, float]] = {}  # slots per token -> limit step, FLOPs
        self.samples: dict[str, list[dict]] = {}
        self.done: list[str] = []

    def limit_key(self, n1: int) -> str:
        if n1 not in self.limits:
            self.limits[n1] = self.bench.limit_step(n1)
            time_steps(self.limits[n1][0], 1, self.bench.device)  # warm up
        return f"limit x{n1}"

    def run_mode(self, mode: str) -> None:
        bench, warmup = self.bench, self.bench.args.warmup
        t0 = time.perf_counter()
        step, flops, n1 = bench.model_step(mode)
        time_steps(step, warmup, bench.device)  # compile, allocator, oneDNN kernels
        self.built[mode], self.info[mode] = step, {"flops": flops, "n1": n1}
        print(f"  warmed up {mode:24s} in {time.perf_counter() - t0:6.1f} s", file=sys.stderr)
        group = [m for m in ANCHORS if m in self.built and m != mode] + [mode]
        limit_of = {m: self.limit_key(self.info[m]["n1"]) for m in group}
        members = list(dict.fromkeys(group + list(limit_of.values())))
        tokens = bench.B * bench.T * self.steps
        for r in range(self.rounds):
            rates, walls = {}, {}
            # rotate the order each round so no member always runs right after a given other one
            for m in members[r % len(members):] + members[: r % len(members)]:
                if m.startswith("limit x"):
                    limit_step, limit_flops = self.limits[int(m[len("limit x"):])]
                    wall, cpu = time_steps(limit_step, self.steps, bench.device)
                    rates[m] = limit_flops * self.steps / (cpu if self.use_cpu_time else wall)
                    continue
                wall, cpu = time_steps(self.built[m], self.steps, bench.device)
                walls[m] = tokens / wall
                rates[m] = tokens / (cpu if self.use_cpu_time else wall)
            for m in group:
                self.samples.setdefault(m, []).append(dict(
                    rate=rates[m], wall=walls[m], ref=rates.get("reference"),
                    base=rates.get("baseline"), limit=rates[limit_of[m]],
                ))
        self.done.append(mode)


def render(header: str, rows: list[dict], preset: str, device: torch.device) -> str:
    lines = [
        header,
        "",
        "| mode | tokens/s (wall) | tokens/CPU-s | limit fraction | matmul limit GFLOP/s | "
        "ratio vs ref | time/token vs baseline | FLOP ratio | overhead / FLOP ratio | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v: float, spec: str) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['tokens_per_s']:,.0f} | {fmt(row['tokens_per_cpu_s'], ',.0f')}"
            f" | {fmt(row['limit_fraction'], '.3f')} | {fmt(row['limit_gflops'], '.1f')}"
            f" | {fmt(row['ratio_vs_reference'], '.3f')}"
            f" | {fmt(row['time_per_token_vs_baseline'], '.3f')}"
            f" | {fmt(row['flop_ratio_vs_baseline'], '.3f')}"
            f" | {fmt(row['overhead_over_flop_ratio'], '.3f')} | {fmt(row['mfu'], '.1%')} |"
        )
    lines += ["", *target_checks(rows, preset, device)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
