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
import torch.nn.functional as F

from rtlab.config import GPTConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.execute.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from rtlab.execute.distributed import (
    any_rank,
    current_ranks,
    from_main,
    my_micro_batches,
    sum_gradients,
    sum_over_ranks,
)
from rtlab.model import GPT
from rtlab.model.device import autocast_context, peak_flops, resolve_device

# Evaluation batches are drawn with this seed, whatever the run's seed: every evaluation of every
# arm and every seed replicate sees exactly the same data, so loss differences come from the models.
EVAL_SEED = 1_000_003

# The metric of a position class's validation loss (datasets that label positions, e.g. the
# pre-caching tasks; Dataset.position_class_names); rtlab.track.names reads it back.
CLASS_VAL_LOSS = "val_loss/{}"

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


def gpt_config(model: ModelConfig, dataset: Any) -> GPTConfig:
    """The run's GPTConfig: the `model:` section plus what the dataset decides (vocab or
    features). The one place this happens: the audit checks exactly what trains."""
    head = "regression" if dataset.task == "regression" else "lm"
    if model.head != head:
        raise ValueError(
            f"model.head: '{model.head}' does not fit dataset '{dataset.name}' "
            f"(task '{dataset.task}' needs head '{head}')"
        )
    if head == "regression":
        decided = {"n_features": dataset.n_features}
    else:
        decided = {"vocab_size": dataset.vocab_size}
    return GPTConfig.model_validate({**model.model_dump(), **decided})


def build_model(model: ModelConfig, dataset: Any) -> GPT:
    """The run's GPT (see gpt_config)."""
    return GPT(gpt_config(model, dataset))


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
    step_micro_batches: int | None = None,
) -> torch.Tensor:
    """Accumulate the gradient of the mean loss over `micro_batches`; return that mean (detached).

    Each micro-batch loss is divided by the step's number of micro-batches (all of them, or
    `step_micro_batches` when other processes take the rest), so the accumulated gradient equals
    the one of a single batch made of all of them (micro-batches of equal size).
    """
    count = step_micro_batches or len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for x, y in micro_batches:
        with autocast():
            _, loss = model(x, y)
            loss = loss / count
        loss.backward()
        loss_sum += loss.detach().float()
    return loss_sum


@dataclass
class EvalLosses:
    """One evaluation over fixed batches: the mean loss, and per position class the sum and count
    of the per-position losses (empty lists for a dataset without classes)."""

    mean: float
    class_sums: list[float] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)

    def class_means(self, names: tuple[str, ...]) -> dict[str, float]:
        """{class name: mean loss over its positions}; a class absent from the batches is left
        out (no value rather than NaN)."""
        return {name: total / count for name, total, count
                in zip(names, self.class_sums, self.class_counts, strict=True) if count > 0}


def position_losses(out: torch.Tensor, y: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """The (B, T) per-position losses at the main slots whose mean is the model's loss (without
    loss_on_reasoning; with it the model also averages over reasoning slots). float32."""
    out = out.float()
    if config.head == "regression":
        return F.huber_loss(out, y.float(), delta=config.huber_delta, reduction="none")
    flat = F.cross_entropy(out.view(-1, out.size(-1)), y.reshape(-1), ignore_index=-1,
                           reduction="none")
    return flat.view(y.shape)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    autocast: Callable[[], Any],
    class_ids: list[torch.Tensor] | None = None,
    n_classes: int = 0,
) -> EvalLosses:
    """Mean loss over fixed batches, in eval mode (no dropout, so no RNG is drawn); with
    `class_ids` (one (B, T) tensor per batch) also each class's loss, from the same forward pass.

    The mean is the mean of the model's per-batch losses, exactly as without classes; the class
    losses pool positions over all batches, so weighted by their counts they give that mean back
    (batches are of equal size) up to float rounding.
    """
    was_training = model.training
    model.eval()
    losses = []
    sums = counts = None
    if class_ids is not None:
        device = batches[0][0].device
        sums = torch.zeros(n_classes, device=device)
        counts = torch.zeros(n_classes, dtype=torch.long, device=device)
    for index, (x, y) in enumerate(batches):
        with autocast():
            out, loss = model(x, y)
        losses.append(loss.float())
        if class_ids is not None:
            terms = position_losses(out, y, model.config)
            ids = class_ids[index][y != -1]  # ignored targets (ignore_index) belong to no class
            sums.index_add_(0, ids, terms[y != -1])
            counts += torch.bincount(ids, minlength=n_classes)
    model.train(was_training)
    if class_ids is None:
        return EvalLosses(torch.stack(losses).mean().item())  # one host sync per evaluation
    mean = torch.stack(losses).mean()
    return EvalLosses(mean.item(), sums.tolist(), counts.tolist())


def check_finite(value: float, quantity: str, step: int) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(
            f"{quantity} is {value} at step {step}", step=step, quantity=quantity, value=value
        )


def run_identity(run: RunConfig, data_fingerprint: str) -> str:
    """What a checkpoint must agree on to be resumed: everything that changes the computation."""
    sections = run.sections()
    train_section = {k: v for k, v in sections["train"].items() if k not in RESUMABLE_ACROSS}
    identity = {"data": sections["data"], "model": sections["model"], "train": train_section,
                "seed": run.seed, "data_fingerprint": data_fingerprint}
    return json.dumps(identity, sort_keys=True, default=str)


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def train(
    run: RunConfig,
    run_dir: Path,
    dataset: Any,
    on_metrics: MetricsCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one run; resume from run_dir/ckpt.pt if there.

    Raises TrainingDiverged on a NaN/inf loss or gradient norm, ValueError on a config that does
    not fit the dataset or a checkpoint written for another config.
    """
    wall_start = time.perf_counter()
    loop = TrainingLoop(run, Path(run_dir), dataset, on_metrics, on_checkpoint)
    # Step 0: the untrained model, so every curve starts from the same place.
    if loop.ranks.is_main and loop.step == 0 and not loop.history:
        loop.report(0, loop.eval_metrics(0))
    status = loop.run_steps(should_stop)
    return loop.finish(status, wall_start)


class TrainingLoop:
    """The state of one `train` call: model, optimizer, step, history, and its bookkeeping."""

    def __init__(self, run: RunConfig, run_dir: Path, dataset: Any,
                 on_metrics: MetricsCallback | None, on_checkpoint: CheckpointCallback | None):
        setup_start = time.perf_counter()
        self.run, self.cfg, self.dataset = run, run.train, dataset
        self.on_metrics, self.on_checkpoint = on_metrics, on_checkpoint
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        self.timings: dict[str, float] = {}
        self.ranks = current_ranks()  # one process, or this one's place under torchrun
        self.micro_batch_indices = my_micro_batches(self.cfg.grad_accum, self.ranks)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = resolve_device(self.cfg.device)
        self.autocast = lambda: autocast_context(self.device, self.cfg.dtype)

        # Model and optimizer: fresh, then overwritten by the checkpoint when resuming.
        seed_everything(run.seed)
        self.model = build_model(run.model, dataset).to(self.device)
        self.block_size = self.model.config.block_size
        self.optimizer = self.model.configure_optimizers(
            self.cfg.weight_decay, self.cfg.learning_rate, (self.cfg.beta1, self.cfg.beta2),
            self.device.type,
        )
        self.flops_per_token = self.model.flops_per_token()
        self.peak = peak_flops(self.device)
        self.tokens_per_step = self.cfg.batch_size * self.cfg.grad_accum * self.block_size
        self.step, self.best_val, self.history = 0, math.inf, []
        self.identity = run_identity(run, dataset.fingerprint)
        resume_from = self._resume_checkpoint()
        self.saved_step = self._resume(resume_from) if resume_from is not None else -1
        self.resumed_from_step = self.step
        self.step_seconds = 0.0

        # torch.compile wraps the same parameters: checkpoints keep saving the plain module's keys.
        self.train_model = torch.compile(self.model) if self.cfg.compile else self.model
        self.eval_batches = {
            split: [to_device(b, self.device) for b in fixed_eval_batches(
                dataset, split, self.cfg.eval_iters, self.cfg.batch_size, self.block_size)]
            for split in ("train", "val")
        }
        # The class of every validation position, once: the batches never change.
        self.class_names: tuple[str, ...] = tuple(getattr(dataset, "position_class_names", ()))
        self.val_class_ids = [dataset.position_classes(x, y)
                              for x, y in self.eval_batches["val"]] if self.class_names else None
        self.timings["setup"] = time.perf_counter() - setup_start

    def _resume_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from: rank 0's, on every rank."""
        ckpt = None
        if self.ranks.is_main and self.ckpt_path.exists():
            ckpt = load_checkpoint(self.ckpt_path)
        return from_main(ckpt) if self.ranks.active else ckpt

    def _resume(self, ckpt: dict[str, Any]) -> int:
        """Load the checkpoint into model, optimizer and RNGs; return its step."""
        if ckpt["run_identity"] != self.identity:
            raise ValueError(
                f"{self.ckpt_path}: checkpoint was written for another config or seed; "
                "delete it (or use another run directory) to start afresh"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.best_val, self.history = ckpt["step"], ckpt["best_val"], ckpt["history"]
        restore_rng_state(ckpt["rng"])
        return self.step

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": step, **metrics})
        if self.on_metrics is not None:
            with timed(self.timings, "callbacks"):
                self.on_metrics(step, metrics)

    def write_checkpoint(self, step: int) -> None:
        with timed(self.timings, "checkpoint"):
            save_checkpoint(self.ckpt_path, {
                "format": CHECKPOINT_FORMAT,
                "run_identity": self.identity,
                "model_config": self.model.config.to_dict(),
                "dataset": {"name": self.dataset.name, "fingerprint": self.dataset.fingerprint},
                "step": step,
                "best_val": self.best_val,
                "history": self.history,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": capture_rng_state(),
            })
        self.saved_step = step
        if self.on_checkpoint is not None:
            with timed(self.timings, "callbacks"):
                self.on_checkpoint(step, self.ckpt_path)

    def eval_metrics(self, step: int) -> dict[str, float]:
        with timed(self.timings, "eval"):
            train = evaluate(self.train_model, self.eval_batches["train"], self.autocast)
            val = evaluate(self.train_model, self.eval_batches["val"], self.autocast,
                           self.val_class_ids, len(self.class_names))
            metrics = {"train_loss": train.mean, "val_loss": val.mean}
            metrics.update({CLASS_VAL_LOSS.format(name): value
                            for name, value in val.class_means(self.class_names).items()})
        check_finite(metrics["train_loss"], "eval train_loss", step)
        check_finite(metrics["val_loss"], "eval val_loss", step)
        self.best_val = min(self.best_val, metrics["val_loss"])
        return metrics

    def counters(self, step: int) -> dict[str, float]:
        tokens = step * self.tokens_per_step
        return {"tokens_seen": float(tokens), "flops_seen": self.flops_per_token * tokens}

    def optimizer_step(self) -> tuple[float, float]:
        """One optimizer update at `self.step`: returns (learning rate, mean micro-batch loss)."""
        cfg, step = self.cfg, self.step
        lr = learning_rate_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [
            to_device(self.dataset.batch("train", index=step * cfg.grad_accum + micro,
                                         batch_size=cfg.batch_size, block_size=self.block_size,
                                         seed=self.run.seed), self.device)
            for micro in self.micro_batch_indices
        ]
        loss = forward_backward(self.train_model, micro_batches, self.autocast, cfg.grad_accum)
        if self.ranks.active:
            sum_gradients(list(self.model.parameters()))
            loss = sum_over_ranks(loss)
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.zeros(())
        # One host sync per step: both numbers come back together (it also makes the timing honest).
        batch_loss, grad_norm_value = torch.stack([loss, grad_norm.to(loss.device)]).tolist()
        check_finite(batch_loss, "train loss", step + 1)
        check_finite(grad_norm_value, "gradient norm", step + 1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr, batch_loss

    def run_steps(self, should_stop: Callable[[], bool] | None) -> str:
        """Optimizer steps until `max_iters` ("finished") or until `should_stop()` ("stopped")."""
        cfg = self.cfg
        self.model.train()
        log_tokens, log_seconds = 0, 0.0  # throughput since the last log step
        while self.step < cfg.max_iters:
            if self.stop_asked(should_stop):
                return "stopped"
            step_start = time.perf_counter()
            lr, batch_loss = self.optimizer_step()
            step, elapsed = self.step, time.perf_counter() - step_start
            self.step_seconds += elapsed
            log_tokens, log_seconds = log_tokens + self.tokens_per_step, log_seconds + elapsed
            if not self.ranks.is_main:
                continue  # rank 0 alone evaluates, reports and checkpoints

            metrics: dict[str, float] = {}
            is_last = step == cfg.max_iters
            if is_last or step % cfg.log_interval == 0:
                metrics.update(self.log_metrics(lr, batch_loss, log_tokens / log_seconds))
                log_tokens, log_seconds = 0, 0.0
            if is_last or step % cfg.eval_interval == 0:
                metrics.update(self.eval_metrics(step))
            if is_last:
                metrics.update({"final_train_loss": metrics["train_loss"],
                                "final_val_loss": metrics["val_loss"],
                                "best_val_loss": self.best_val, **self.counters(step)})
            if metrics:
                self.report(step, metrics)
            if step % cfg.checkpoint_interval == 0 and not is_last:
                self.write_checkpoint(step)
        return "finished"

    def stop_asked(self, should_stop: Callable[[], bool] | None) -> bool:
        """Rank 0 decides (its callback); under torchrun every rank learns it."""
        stop = should_stop is not None and self.ranks.is_main and should_stop()
        return any_rank(stop, self.device) if self.ranks.active else stop

    def log_metrics(self, lr: float, batch_loss: float, tokens_per_sec: float) -> dict[str, float]:
        metrics = {
            "batch_loss": batch_loss,
            "lr": lr,
            "tokens_seen": float(self.step * self.tokens_per_step),
            "flops_seen": self.flops_per_token * self.step * self.tokens_per_step,
            "tokens_per_sec": tokens_per_sec,
        }
        if self.peak is not None:
            metrics["mfu"] = self.flops_per_token * tokens_per_sec / self.peak
        return metrics

    def finish(self, status: str, wall_start: float) -> TrainResult:
        """A last checkpoint (resume point of a stopped run, result of a finished one), the
        sample, and the result."""
        if not self.ranks.is_main:
            return self.follower_result(status, wall_start)
        keep_checkpoint = status == "stopped" or self.cfg.save_checkpoint
        if keep_checkpoint and self.saved_step != self.step:
            self.write_checkpoint(self.step)
        elif not keep_checkpoint and self.ckpt_path.exists():
            self.ckpt_path.unlink()  # finished, and the final weights are not wanted

        sample = None
        if status == "finished" and self.dataset.task == "lm" and self.cfg.sample_tokens > 0:
            with timed(self.timings, "sample"):
                sample = generate_sample(self.model, self.dataset, self.cfg.sample_tokens,
                                         self.run.seed, self.device, self.autocast)
        if status == "finished":
            last = next(h for h in reversed(self.history) if "final_val_loss" in h)
            final = {k: v for k, v in last.items() if k in FINAL_KEYS}
        else:
            final = self.counters(self.step)
        wall = time.perf_counter() - wall_start
        self.timings["other"] = wall - self.step_seconds - sum(self.timings.values())
        return TrainResult(
            status=status, steps=self.step, resumed_from_step=self.resumed_from_step,
            final_metrics=final, history=self.history, sample=sample,
            checkpoint_path=self.ckpt_path if keep_checkpoint else None,
            flops_per_token=self.flops_per_token, device=str(self.device), wall_seconds=wall,
            step_seconds=self.step_seconds, overhead_seconds=self.timings,
        )

    def follower_result(self, status: str, wall_start: float) -> TrainResult:
        """What a rank other than 0 returns: its share of the work, nothing written."""
        return TrainResult(
            status=status, steps=self.step, resumed_from_step=self.resumed_from_step,
            final_metrics=self.counters(self.step), history=[], sample=None,
            checkpoint_path=None, flops_per_token=self.flops_per_token, device=str(self.device),
            wall_seconds=time.perf_counter() - wall_start, step_seconds=self.step_seconds,
            overhead_seconds=self.timings,
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
