"""Training throughput of rtlab's GPT per mode, next to a minimal nanoGPT-style reference.

Every mode (and the reference) trains the same shape on the same random batch. Modes are taken
one at a time, in the order given: each is built and warmed up, then timed in interleaved rounds
together with the anchors (reference and baseline, when asked for), so machine noise hits a mode
and its anchors alike, and the table reports medians. `ratio vs ref` is the median over rounds of
(mode tokens/s) / (reference tokens/s) from the same round. The table and JSON are rewritten
after each mode, so a run cut short (timeout, --deadline-s) still leaves the modes it finished.
On CPU with one thread the ratios use tokens per process-CPU-second, which other processes'
load on a shared machine cannot skew; wall-clock tokens/s is shown too.

    python benchmarks/bench_model.py              # CPU, ~1 minute
    python benchmarks/bench_model.py --quick      # CPU, ~15 seconds
    python benchmarks/bench_model.py --preset gpt2 --device cuda --dtype bfloat16 --compile
    python benchmarks/bench_model.py --preset tiny --device cpu --compile   # smoke-test that path

`overhead / FLOP ratio` = (time per token relative to baseline) / (FLOPs per token relative to
baseline): 1.0 means a mode costs exactly what its extra arithmetic predicts.

The rtlab rows use `GPT.configure_optimizers` (fused AdamW on CPU and CUDA), the reference uses
nanoGPT's optimizer choice (fused on CUDA only); the row `baseline (ref optimizer)` steps rtlab's
baseline with the reference's optimizer, so it isolates the model's forward/backward speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

# importable without `pip install -e .` (sys.path[0] is benchmarks/ when run as a script)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtlab.model import GPT, GPTConfig  # noqa: E402
from rtlab.model.device import autocast_context, peak_flops, resolve_device  # noqa: E402

# ----------------------------------------------------------------------------------------------
# The reference: a minimal straightforward GPT (nanoGPT's model, trimmed to what training needs).


class RefBlock(nn.Module):
    def __init__(self, C: int, H: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
        self.H = H

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, V: int, T: int, L: int, H: int, C: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList([RefBlock(C, H) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
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
    # name: (vocab, block_size, n_layer, n_head, n_embd, batch_size)
    "cpu": (512, 64, 4, 4, 128, 8),
    "tiny": (128, 32, 2, 2, 32, 2),
    "gpt2": (50304, 1024, 12, 12, 768, 8),
}

MODES = {
    "baseline": {},
    # the same model stepped with the reference's optimizer: isolates forward/backward speed
    "baseline (ref optimizer)": {},
    "reasoning n=1": {"reasoning": {"n_tokens": 1, "delay": 1}},
    "reasoning n=3": {"reasoning": {"n_tokens": 3, "delay": 1}},
    "myopic strict fused": {"myopic": "strict", "myopic_impl": "fused"},
    "myopic paper fused": {"myopic": "paper", "myopic_impl": "fused"},
    "myopic strict explicit": {"myopic": "strict", "myopic_impl": "explicit"},
}


def build(mode: str, preset: str, device: torch.device, use_compile: bool):
    V, T, L, H, C, _ = PRESETS[preset]
    torch.manual_seed(0)
    if mode == "reference":
        model = RefGPT(V, T, L, H, C)
        flops = None
    else:
        config = GPTConfig.from_dict(
            dict(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, **MODES[mode])
        )
        model = GPT(config)
        flops = model.flops_per_token()
    model.to(device)
    if mode == "reference" or mode == "baseline (ref optimizer)":
        # nanoGPT's choice: the fused AdamW kernel on CUDA only (foreach elsewhere)
        fused = {"fused": True} if device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), **fused)
    else:
        # rtlab's training path (what the trainer calls)
        optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device.type)
    step_model = torch.compile(model) if use_compile else model
    return step_model, optimizer, flops


def run_steps(model, optimizer, x, y, steps: int, ctx_fn, device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for `steps` full training steps (forward, backward,
    optimizer)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        with ctx_fn():
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def target_checks(rows: list[dict], preset: str, device: torch.device) -> list[str]:
    """The targets of issue 2, for the modes present in this run."""
    by_mode = {row["mode"]: row for row in rows}
    checks = []

    def check(name: str, value: float, ok: bool) -> None:
        if not math.isnan(value):
            checks.append(f"- target {name}: {value:.3g} -> {'PASS' if ok else 'FAIL'}")

    if "baseline" in by_mode and "reference" in by_mode:
        ratio = by_mode["baseline"]["ratio_vs_reference"]
        check("baseline / reference throughput >= 1.0", ratio, ratio >= 1.0)
    if preset == "gpt2" and device.type == "cuda" and "baseline" in by_mode:
        rate = by_mode["baseline"]["tokens_per_s"]
        check("GPT-2-small baseline tokens/s >= 450k", rate, rate >= 450e3)
    if "reasoning n=1" in by_mode:
        over = by_mode["reasoning n=1"]["overhead_over_flop_ratio"]
        check("reasoning n=1 step time <= 1.15 x baseline x FLOP ratio", over, over <= 1.15)
    if "myopic strict fused" in by_mode:
        t = by_mode["myopic strict fused"]["time_per_token_vs_baseline"]
        check("myopic (fused) time per token <= 1.3 x baseline", t, t <= 1.3)
    return checks


ANCHORS = ("reference", "baseline")


def summarize(
    modes_done: list[str], samples: dict, flops_of: dict, use_cpu_time: bool, peak: float | None
) -> list[dict]:
    """One row per finished mode from its per-round samples (each paired with the anchors'
    rates measured in the same round)."""
    baseline_flops = flops_of.get("baseline")
    rows = []
    for mode in modes_done:
        runs = samples[mode]
        flops = flops_of[mode] if mode != "reference" else baseline_flops
        median_rate = statistics.median(s["rate"] for s in runs)
        median_wall_rate = statistics.median(s["wall"] for s in runs)
        with_ref = [s["rate"] / s["ref"] for s in runs if s["ref"] is not None]
        ratio_ref = statistics.median(with_ref) if with_ref else math.nan
        with_base = [s["base"] / s["rate"] for s in runs if s["base"] is not None]
        if with_base and flops is not None and baseline_flops is not None:
            time_ratio = statistics.median(with_base)
            flop_ratio = flops / baseline_flops
        else:
            time_ratio = flop_ratio = math.nan
        mfu = median_wall_rate * flops / peak if (peak and flops) else math.nan
        rows.append(
            dict(
                mode=mode,
                tokens_per_s=median_wall_rate,
                tokens_per_cpu_s=median_rate if use_cpu_time else math.nan,
                ratio_vs_reference=ratio_ref,
                time_per_token_vs_baseline=time_ratio,
                flop_ratio_vs_baseline=flop_ratio,
                overhead_over_flop_ratio=time_ratio / flop_ratio,
                mfu=mfu,
                rounds=len(runs),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per mode")
    parser.add_argument("--steps", type=int, default=None, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--modes", default=",".join(["reference", *MODES]))
    parser.add_argument("--quick", action="store_true", help="about 15 s on CPU")
    parser.add_argument("--out", type=Path, default=None, help="write table.md + results.json")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no further mode once this many seconds would be exceeded (estimated from "
        "the slowest mode so far); the modes finished are reported",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rounds = args.rounds or (3 if args.quick else 8)
    steps = args.steps or (2 if args.quick else 6)
    if device.type == "cuda":
        steps = args.steps or 10
        rounds = args.rounds or 3
    V, T, L, H, C, B = PRESETS[args.preset]
    B = args.batch_size or B
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m != "reference" and m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from reference, {', '.join(MODES)}")
    # anchors first, so every later mode is timed next to them
    modes = [m for m in ANCHORS if m in modes] + [m for m in modes if m not in ANCHORS]

    def ctx_fn():
        return autocast_context(device, args.dtype)

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (B, T), generator=g).to(device)
    y = torch.randint(0, V, (B, T), generator=g).to(device)

    tokens_per_round = B * T * steps
    # On a shared CPU box, other processes steal wall time but not this process's CPU time:
    # with one thread, tokens per CPU-second measures the work itself, so ratios on CPU use it.
    use_cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
    peak = peak_flops(device)
    header = (
        f"rtlab GPT training throughput: preset {args.preset} (V={V}, T={T}, L={L}, H={H}, "
        f"C={C}, B={B}), device {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", dtype {args.dtype}, compile {args.compile}, threads {torch.get_num_threads()}, "
        f"{rounds} interleaved rounds x {steps} steps per mode (anchors timed in every round), "
        f"medians; torch {torch.__version__}; "
        + (
            "ratios from process CPU time (1 thread: immune to other processes' load)"
            if use_cpu_time
            else "ratios from wall time"
        )
    )
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)

    built: dict[str, tuple] = {}
    flops_of: dict[str, float | None] = {}
    samples: dict[str, list[dict]] = {}
    done: list[str] = []
    slowest_mode_s = 0.0
    result: dict = {"header": header, "rows": [], "samples": samples}
    for mode in modes:
        elapsed = time.perf_counter() - started
        if args.deadline_s is not None and elapsed + slowest_mode_s > args.deadline_s:
            print(
                f"  deadline: skipping {mode} and later modes ({elapsed:.0f} s used)",
                file=sys.stderr,
            )
            break
        mode_t0 = time.perf_counter()
        model, optimizer, flops = build(mode, args.preset, device, args.compile)
        run_steps(model, optimizer, x, y, args.warmup, ctx_fn, device)  # compile, allocator
        built[mode], flops_of[mode] = (model, optimizer), flops
        print(f"  warmed up {mode:24s} in {time.perf_counter() - mode_t0:6.1f} s", file=sys.stderr)
        group = [m for m in ANCHORS if m in built and m != mode] + [mode]
        samples.setdefault(mode, [])
        for r in range(rounds):
            # rotate the order each round so no mode always runs right after a given other one
            rates, walls = {}, {}
            for m in group[r % len(group) :] + group[: r % len(group)]:
                wall, cpu = run_steps(*built[m], x, y, steps, ctx_fn, device)
                walls[m] = tokens_per_round / wall
                rates[m] = tokens_per_round / (cpu if use_cpu_time else wall)
            for m in group:
                samples.setdefault(m, []).append(
                    dict(
                        rate=rates[m],
                        wall=walls[m],
                        ref=rates.get("reference"),
                        base=rates.get("baseline"),
                    )
                )
        done.append(mode)
        slowest_mode_s = max(slowest_mode_s, time.perf_counter() - mode_t0)
        print(f"  {mode} done ({time.perf_counter() - started:.0f} s so far)", file=sys.stderr)
        rows = summarize(done, samples, flops_of, use_cpu_time, peak)
        table = render(header, rows, args.preset, device)
        result["rows"] = rows
        if out is not None:  # after every mode: a run cut short still leaves its numbers
            out.mkdir(parents=True, exist_ok=True)
            tag = f"bench_{args.preset}_{device.type}"
            (out / f"{tag}.md").write_text(table + "\n")
            (out / f"{tag}.json").write_text(json.dumps(result, indent=2, default=str))
    print(render(header, result["rows"], args.preset, device))
    return result


def render(header: str, rows: list[dict], preset: str, device: torch.device) -> str:
    lines = [
        header,
        "",
        "| mode | tokens/s (wall) | tokens/CPU-s | ratio vs ref | time/token vs baseline | "
        "FLOP ratio | overhead / FLOP ratio | MFU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v: float, spec: str) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['tokens_per_s']:,.0f} | {fmt(row['tokens_per_cpu_s'], ',.0f')}"
            f" | {fmt(row['ratio_vs_reference'], '.3f')}"
            f" | {fmt(row['time_per_token_vs_baseline'], '.2f')}"
            f" | {fmt(row['flop_ratio_vs_baseline'], '.2f')}"
            f" | {fmt(row['overhead_over_flop_ratio'], '.2f')} | {fmt(row['mfu'], '.1%')} |"
        )
    lines += ["", *target_checks(rows, preset, device)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
