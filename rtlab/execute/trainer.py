"""The training loop, top to bottom: batch, forward, backward, clip, step, evaluate, checkpoint.

Pure PyTorch: it knows nothing of MLflow or Optuna. Whoever calls `train` receives metrics through
`on_metrics(step, metrics)` and checkpoints through `on_checkpoint(step, path)`, and can stop it
cleanly through `should_stop()`.

Exact resume. Everything a step depends on is either in the checkpoint (weights, optimizer moments,
RNG states, step) or a pure function of the step number: micro-batch `m` of optimizer step `s`
(0-based) is `dataset.batch("train", index=s * grad_accum + m, ...)`, so there is no sampler
state to save. A run stopped or killed after a checkpoint and resumed therefore ends with the same
weights and metrics, bit for bit (on the same device and thread count), as a run never stopped.

Steps: `step` counts completed optimizer updates. Step 0 is the untrained model (evaluated once,
so curves start at the initial loss); step `max_iters` is the end. All metrics of a step are
reported in one `on_metrics` call, before the checkpoint of that step is written, so after a
resume `on_metrics` is called only for steps after the checkpoint's step.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtlab.execute.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rtlab.model import GPT, GPTConfig
from rtlab.model.device import autocast_context, peak_flops, resolve_device
from rtlab.spec import TrainConfig

# Evaluation batches are drawn with this seed, whatever the run's seed: every evaluation of every
# arm and every seed replicate sees exactly the same data, so loss differences come from the models.
EVAL_SEED = 1_000_003

# Train-config fields that may differ between the run that wrote a checkpoint and the run resuming
# from it (where and how it runs, how often it reports), as opposed to what it computes.
RESUMABLE_ACROSS = {
    "device",
    "threads",
    "compile",
    "log_interval",
    "checkpoint_interval",
    "save_checkpoint",
    "sample_tokens",
}

FINAL_KEYS = ("final_train_loss", "final_val_loss", "best_val_loss", "tokens_seen", "flops_seen")

MetricsCallback = Callable[[int, dict[str, float]], None]
CheckpointCallback = Callable[[int, Path], None]


class TrainingDiverged(RuntimeError):
    """A loss or gradient norm became NaN or infinite; the run cannot go on."""

    def __init__(self, reason: str, step: int, quantity: str, value: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step
        self.quantity = quantity
        self.value = value


@dataclass
class TrainResult:
    status: str  # "finished" or "stopped" (should_stop() asked; resumable from checkpoint_path)
    steps: int  # optimizer steps completed, resumed ones included
    resumed_from_step: int  # 0 for a fresh start
    final_metrics: dict[str, float]  # final_train_loss, final_val_loss, best_val_loss, tokens/flops
    history: list[dict[str, float]]  # every on_metrics call so far: {"step": s, **metrics}
    sample: str | None  # generated text (text datasets, finished runs, sample_tokens > 0)
    checkpoint_path: Path | None  # the last checkpoint written (None if none kept)
    flops_per_token: float
    device: str
    wall_seconds: float  # this call of train(), start to return
    step_seconds: float  # inside optimizer steps: batches, forward, backward, clip, update
    # Where the rest went: setup, eval, checkpoint, callbacks (the caller's time), sample.
    overhead_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def other_seconds(self) -> float:
        """Wall time outside optimizer steps (setup, evaluation, checkpoints, callbacks, sample)."""
        return self.wall_seconds - self.step_seconds


def learning_rate_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup for `warmup_iters` steps, then cosine decay to `min_lr` at `lr_decay_iters`."""
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + cosine * (cfg.learning_rate - cfg.min_lr)


def model_config(model_section: dict[str, Any], dataset: Any) -> GPTConfig:
    """The run's GPTConfig: the `model:` section plus what the dataset decides (vocab or
    features). The one place this happens: the audit checks exactly what trains."""
    model_dict = dict(model_section)
    head = "regression" if dataset.task == "regression" else "lm"
    if model_dict.get("head", head) != head:
        raise ValueError(
            f"model.head: '{model_dict['head']}' does not fit dataset '{dataset.name}' "
            f"(task '{dataset.task}' needs head '{head}')"
        )
    model_dict["head"] = head
    if head == "regression":
        model_dict["n_features"] = dataset.n_features
    else:
        model_dict["vocab_size"] = dataset.vocab_size
    return GPTConfig.from_dict(model_dict)


def build_model(model_section: dict[str, Any], dataset: Any) -> GPT:
    """The run's GPT (see model_config)."""
    return GPT(model_config(model_section, dataset))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def fixed_eval_batches(
    dataset: Any, split: str, eval_iters: int, batch_size: int, block_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The evaluation batches of a split: the same for every step, seed and arm (see EVAL_SEED)."""
    return [
        dataset.batch(split, index=i, batch_size=batch_size, block_size=block_size, seed=EVAL_SEED)
        for i in range(eval_iters)
    ]


def to_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)  # type: ignore[return-value]
    return batch[0].to(device), batch[1].to(device)


def forward_backward(
    model: torch.nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    autocast: Callable[[], Any],
) -> torch.Tensor:
    """Accumulate the gradient of the mean loss over `micro_batches`; return that mean (detached).

    Each micro-batch loss is divided by their number, so the accumulated gradient equals the one
    of a single batch made of all of them (micro-batches of equal size).
    """
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for x, y in micro_batches:
        with autocast():
            _, loss = model(x, y)
            loss = loss / len(micro_batches)
        loss.backward()
        loss_sum += loss.detach().float()
    return loss_sum


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    autocast: Callable[[], Any],
) -> float:
    """Mean loss over fixed batches, in eval mode (no dropout, so no RNG is drawn)."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast():
            _, loss = model(x, y)
        losses.append(loss.float())
    model.train(was_training)
    return torch.stack(losses).mean().item()  # one host sync per evaluation


def check_finite(value: float, quantity: str, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{quantity} is {value} at step {step}", step=step, quantity=quantity, value=value
        )


def run_identity(config: dict[str, Any], seed: int, data_fingerprint: str) -> str:
    """What a checkpoint must agree on to be resumed: everything that changes the computation."""
    train_section = {
        k: v for k, v in config.get("train", {}).items() if k not in RESUMABLE_ACROSS
    }
    identity = {"data": config.get("data"), "model": config.get("model"),
                "train": train_section, "seed": seed, "data_fingerprint": data_fingerprint}
    return json.dumps(identity, sort_keys=True, default=str)


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def train(
    config: dict[str, Any],
    seed: int,
    run_dir: Path,
    dataset: Any,
    on_metrics: MetricsCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one run (config = resolved {data, model, train}); resume from run_dir/ckpt.pt if there.

    Raises TrainingDiverged on a NaN/inf loss or gradient norm, ValueError on a config that does
    not fit the dataset or a checkpoint written for another config.
    """
    wall_start = time.perf_counter()
    timings: dict[str, float] = {}
    setup_start = time.perf_counter()
    cfg = TrainConfig.model_validate(config["train"])
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    autocast = lambda: autocast_context(device, cfg.dtype)  # noqa: E731

    # ---- model and optimizer (fresh, then overwritten by the checkpoint when resuming)
    seed_everything(seed)
    model = build_model(config["model"], dataset).to(device)
    block_size = model.config.block_size
    optimizer = model.configure_optimizers(
        cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device.type
    )
    flops_per_token = model.flops_per_token()
    peak = peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * block_size

    step = 0
    best_val = math.inf
    history: list[dict[str, float]] = []
    identity = run_identity(config, seed, dataset.fingerprint)
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["run_identity"] != identity:
            raise ValueError(
                f"{ckpt_path}: checkpoint was written for another config or seed; "
                "delete it (or use another run directory) to start afresh"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, best_val, history = ckpt["step"], ckpt["best_val"], ckpt["history"]
        restore_rng_state(ckpt["rng"])
        del ckpt
        saved_step = step  # the step of the checkpoint on disk
    else:
        saved_step = -1
    resumed_from_step = step

    # torch.compile wraps the same parameters: checkpoints keep saving the plain module's keys.
    train_model = torch.compile(model) if cfg.compile else model
    eval_batches = {
        split: [to_device(b, device) for b in fixed_eval_batches(
            dataset, split, cfg.eval_iters, cfg.batch_size, block_size)]
        for split in ("train", "val")
    }
    timings["setup"] = time.perf_counter() - setup_start

    def report(step: int, metrics: dict[str, float]) -> None:
        history.append({"step": step, **metrics})
        if on_metrics is not None:
            with timed(timings, "callbacks"):
                on_metrics(step, metrics)

    def write_checkpoint(step: int) -> None:
        nonlocal saved_step
        with timed(timings, "checkpoint"):
            save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT,
                "run_identity": identity,
                "model_config": model.config.to_dict(),
                "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint},
                "step": step,
                "best_val": best_val,
                "history": history,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": capture_rng_state(),
            })
        saved_step = step
        if on_checkpoint is not None:
            with timed(timings, "callbacks"):
                on_checkpoint(step, ckpt_path)

    def eval_metrics(step: int) -> dict[str, float]:
        nonlocal best_val
        with timed(timings, "eval"):
            metrics = {
                "train_loss": evaluate(train_model, eval_batches["train"], autocast),
                "val_loss": evaluate(train_model, eval_batches["val"], autocast),
            }
        check_finite(metrics["train_loss"], "eval train_loss", step)
        check_finite(metrics["val_loss"], "eval val_loss", step)
        best_val = min(best_val, metrics["val_loss"])
        return metrics

    def final_metrics(step: int, last_eval: dict[str, float]) -> dict[str, float]:
        tokens = step * tokens_per_step
        return {
            "final_train_loss": last_eval["train_loss"],
            "final_val_loss": last_eval["val_loss"],
            "best_val_loss": best_val,
            "tokens_seen": float(tokens),
            "flops_seen": flops_per_token * tokens,
        }

    def is_eval_step(s: int) -> bool:
        return s == cfg.max_iters or s % cfg.eval_interval == 0

    # ---- step 0: the untrained model, so every curve starts from the same place
    if step == 0 and not history:
        report(0, eval_metrics(0))

    # ---- the loop
    model.train()
    step_seconds = 0.0
    log_tokens, log_seconds = 0, 0.0  # throughput since the last log step
    status = "finished"
    while step < cfg.max_iters:
        if should_stop is not None and should_stop():
            status = "stopped"
            break

        step_start = time.perf_counter()
        lr = learning_rate_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [
            to_device(dataset.batch("train", index=step * cfg.grad_accum + micro,
                                    batch_size=cfg.batch_size, block_size=block_size, seed=seed),
                      device)
            for micro in range(cfg.grad_accum)
        ]
        loss = forward_backward(train_model, micro_batches, autocast)
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.zeros(())
        # One host sync per step: both numbers come back together (it also makes the timing honest).
        batch_loss, grad_norm_value = torch.stack([loss, grad_norm.to(loss.device)]).tolist()
        check_finite(batch_loss, "train loss", step + 1)
        check_finite(grad_norm_value, "gradient norm", step + 1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - step_start
        step_seconds += elapsed
        log_tokens += tokens_per_step
        log_seconds += elapsed

        metrics: dict[str, float] = {}
        is_last = step == cfg.max_iters
        if is_last or step % cfg.log_interval == 0:
            tokens_per_sec = log_tokens / log_seconds
            metrics.update({
                "batch_loss": batch_loss,
                "lr": lr,
                "tokens_seen": float(step * tokens_per_step),
                "flops_seen": flops_per_token * step * tokens_per_step,
                "tokens_per_sec": tokens_per_sec,
            })
            if peak is not None:
                metrics["mfu"] = flops_per_token * tokens_per_sec / peak
            log_tokens, log_seconds = 0, 0.0
        if is_eval_step(step):
            metrics.update(eval_metrics(step))
        if is_last:
            metrics.update(final_metrics(step, metrics))
        if metrics:
            report(step, metrics)
        if step % cfg.checkpoint_interval == 0 and not is_last:
            write_checkpoint(step)

    # ---- the end: a last checkpoint (resume point of a stopped run, result of a finished one)
    keep_checkpoint = status == "stopped" or cfg.save_checkpoint
    if keep_checkpoint and saved_step != step:
        write_checkpoint(step)
    elif not keep_checkpoint and ckpt_path.exists():
        ckpt_path.unlink()  # finished, and the final weights are not wanted

    sample = None
    if status == "finished" and dataset.task == "lm" and cfg.sample_tokens > 0:
        with timed(timings, "sample"):
            sample = generate_sample(model, dataset, cfg.sample_tokens, seed, device, autocast)

    if status == "finished":
        last = next(h for h in reversed(history) if "final_val_loss" in h)
        final = {k: v for k, v in last.items() if k in FINAL_KEYS}
    else:
        tokens = step * tokens_per_step
        final = {"tokens_seen": float(tokens), "flops_seen": flops_per_token * tokens}
    wall = time.perf_counter() - wall_start
    timings["other"] = wall - step_seconds - sum(timings.values())
    return TrainResult(
        status=status,
        steps=step,
        resumed_from_step=resumed_from_step,
        final_metrics=final,
        history=history,
        sample=sample,
        checkpoint_path=ckpt_path if keep_checkpoint else None,
        flops_per_token=flops_per_token,
        device=str(device),
        wall_seconds=wall,
        step_seconds=step_seconds,
        overhead_seconds=timings,
    )


@torch.no_grad()
def generate_sample(
    model: GPT, dataset: Any, max_new_tokens: int, seed: int, device: torch.device,
    autocast: Callable[[], Any],
) -> str | None:
    """Text sampled from the model (temperature 1), seeded so a resumed run prints the same.

    None for datasets without a text decoding (the data contract: encode/decode raise there).
    """
    try:
        dataset.decode([0])
    except ValueError:
        return None
    try:  # start from a newline where the vocabulary has one, else from token 0
        start_ids = dataset.encode("\n") or [0]
    except ValueError:
        start_ids = [0]
    torch.manual_seed(seed)
    model.eval()
    idx = torch.tensor([start_ids], dtype=torch.long, device=device)
    with autocast():
        out = model.generate(idx, max_new_tokens)
    return dataset.decode(out[0, len(start_ids):].tolist())
