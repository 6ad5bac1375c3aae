"""The training loop: learning, exact resume, checkpoints, divergence, schedule, evaluation."""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from rtlab.config import DATASET_DECIDES, ModelConfig, TrainConfig
from rtlab.data import Dataset, load_dataset
from rtlab.execute import (
    CHECKPOINT_NAME,
    EVAL_SEED,
    TrainingDiverged,
    TrainResult,
    build_model,
    learning_rate_at,
    load_checkpoint,
    save_checkpoint,
    train,
)
from rtlab.execute.trainer import evaluate, fixed_eval_batches, forward_backward
from tests.helpers.train_config import make_config

TIMING_KEYS = {"tokens_per_sec", "mfu"}  # wall-clock measurements: the only metrics that may differ


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in history]


def assert_identical_runs(a: TrainResult, b: TrainResult, dir_a: Path, dir_b: Path) -> None:
    assert a.status == b.status == "finished"
    assert a.steps == b.steps
    assert a.final_metrics == b.final_metrics  # exact float equality, not approx
    assert without_timings(a.history) == without_timings(b.history)
    assert a.sample == b.sample
    ckpt_a = load_checkpoint(dir_a / CHECKPOINT_NAME)
    ckpt_b = load_checkpoint(dir_b / CHECKPOINT_NAME)
    assert ckpt_a["model"].keys() == ckpt_b["model"].keys()
    for name, tensor in ckpt_a["model"].items():
        assert torch.equal(tensor, ckpt_b["model"][name]), name
    state_a, state_b = ckpt_a["optimizer"]["state"], ckpt_b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)


# ---- learning ----------------------------------------------------------------------------------


def test_loss_decreases_on_tiny_config(text_dataset: Dataset, tmp_path: Path) -> None:
    result = train(make_config(max_iters=60, eval_interval=20), run_dir=tmp_path,
                   dataset=text_dataset)
    initial = result.history[0]
    assert initial["step"] == 0
    # The untrained model is near uniform (ln vocab); 60 steps must learn character statistics.
    assert initial["val_loss"] == pytest.approx(math.log(text_dataset.vocab_size), abs=0.3)
    assert result.final_metrics["final_val_loss"] < initial["val_loss"] - 0.7
    assert result.final_metrics["best_val_loss"] <= result.final_metrics["final_val_loss"]
    assert result.status == "finished" and result.steps == 60
    assert isinstance(result.sample, str) and len(result.sample) == 20


def test_metrics_reported_at_log_and_eval_steps_with_final_metrics_once(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    checkpoints: list[tuple[int, Path]] = []
    result = train(make_config(), run_dir=tmp_path, dataset=text_dataset,
                   on_metrics=lambda step, m: calls.append((step, dict(m))),
                   on_checkpoint=lambda step, path: checkpoints.append((step, path)))
    assert [step for step, _ in calls] == [0, 5, 10, 15, 20]
    eval_steps = [step for step, m in calls if "val_loss" in m]
    assert eval_steps == [0, 10, 20]
    final_steps = [step for step, m in calls if "final_val_loss" in m]
    assert final_steps == [20]
    last = calls[-1][1]
    tokens_per_step = 8 * 1 * 16
    assert last["tokens_seen"] == 20 * tokens_per_step
    assert last["flops_seen"] == pytest.approx(result.flops_per_token * 20 * tokens_per_step)
    assert last["lr"] == pytest.approx(learning_rate_at(19, make_config().train))
    assert last["tokens_per_sec"] > 0
    assert "mfu" not in last  # no known peak on CPU
    assert checkpoints == [(10, tmp_path / CHECKPOINT_NAME), (20, tmp_path / CHECKPOINT_NAME)]
    assert result.checkpoint_path == tmp_path / CHECKPOINT_NAME


def test_callback_time_counts_as_overhead_not_step_time(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    sleep_s = 0.05
    result = train(make_config(max_iters=10, sample_tokens=0), run_dir=tmp_path,
                   dataset=text_dataset, on_metrics=lambda step, m: time.sleep(sleep_s))
    n_calls = len(result.history)  # steps 0, 5, 10
    assert result.overhead_seconds["callbacks"] >= n_calls * sleep_s
    assert result.step_seconds > 0
    assert result.other_seconds >= n_calls * sleep_s
    assert sum(result.overhead_seconds.values()) + result.step_seconds == pytest.approx(
        result.wall_seconds)


@pytest.mark.parametrize(
    "model",
    [
        {"reasoning": {"n_tokens": 1, "delay": 1}},
        {"reasoning": {"n_tokens": 2, "delay": 2}},
        {"myopic": "strict"},
        {"myopic": "paper"},
    ],
    ids=["reasoning_1", "reasoning_2_delay_2", "myopic_strict", "myopic_paper"],
)
def test_reasoning_and_myopic_configs_train(
    text_dataset: Dataset, tmp_path: Path, model: dict[str, Any]
) -> None:
    baseline_flops = build_model(make_config().model, text_dataset).flops_per_token()
    result = train(make_config(model), run_dir=tmp_path, dataset=text_dataset)
    assert result.final_metrics["final_val_loss"] < result.history[0]["val_loss"]
    assert isinstance(result.sample, str) and len(result.sample) == 20
    if "reasoning" in model:  # more slots per token: more FLOPs per token
        assert result.flops_per_token > baseline_flops
    else:  # myopic changes gradients only
        assert result.flops_per_token == baseline_flops


# ---- resume ------------------------------------------------------------------------------------

# Dropout draws from the torch RNG and grad_accum > 1 exercises micro-batch indexing: both must
# continue exactly where the checkpoint left them.
RESUME_CONFIG = make_config({"dropout": 0.1}, seed=3, grad_accum=2, max_iters=20,
                            checkpoint_interval=5)


def test_resume_after_clean_stop_is_bit_identical(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    uninterrupted = train(RESUME_CONFIG, run_dir=tmp_path / "a", dataset=text_dataset)

    polls = 0

    def stop_after_12_steps() -> bool:
        nonlocal polls
        polls += 1
        return polls > 12

    stopped = train(RESUME_CONFIG, run_dir=tmp_path / "b", dataset=text_dataset,
                    should_stop=stop_after_12_steps)
    assert stopped.status == "stopped" and stopped.steps == 12
    assert stopped.sample is None
    assert "final_val_loss" not in stopped.final_metrics
    # The stop wrote a checkpoint at step 12 (not only at the interval's step 10).
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 12

    resumed = train(RESUME_CONFIG, run_dir=tmp_path / "b", dataset=text_dataset)
    assert resumed.resumed_from_step == 12
    assert_identical_runs(uninterrupted, resumed, tmp_path / "a", tmp_path / "b")


class Crash(Exception):
    pass


def test_resume_after_crash_is_bit_identical_and_reports_no_step_twice(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    uninterrupted = train(RESUME_CONFIG, run_dir=tmp_path / "a", dataset=text_dataset)

    def crash_at_step_15(step: int, metrics: dict[str, float]) -> None:
        if step == 15:  # after the checkpoint of step 10; steps 11..15 are lost work
            raise Crash

    with pytest.raises(Crash):
        train(RESUME_CONFIG, run_dir=tmp_path / "b", dataset=text_dataset,
              on_metrics=crash_at_step_15)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["step"] == 10

    reported: list[int] = []
    resumed = train(RESUME_CONFIG, run_dir=tmp_path / "b", dataset=text_dataset,
                    on_metrics=lambda step, m: reported.append(step))
    assert resumed.resumed_from_step == 10
    assert reported == [15, 20]  # steps <= 10 were reported before the checkpoint was written
    assert_identical_runs(uninterrupted, resumed, tmp_path / "a", tmp_path / "b")


def test_rerun_of_finished_run_returns_same_result_without_training(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    first = train(make_config(), run_dir=tmp_path, dataset=text_dataset)
    reported: list[int] = []
    again = train(make_config(), run_dir=tmp_path, dataset=text_dataset,
                  on_metrics=lambda step, m: reported.append(step))
    assert reported == []
    assert again.resumed_from_step == 20 and again.step_seconds == 0.0
    assert again.final_metrics == first.final_metrics and again.sample == first.sample


def test_resume_refuses_checkpoint_of_another_config(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    train(make_config(max_iters=10), run_dir=tmp_path, dataset=text_dataset,
          should_stop=lambda: True)
    with pytest.raises(ValueError, match="another config or seed"):
        train(make_config(max_iters=10, learning_rate=1e-3), run_dir=tmp_path,
              dataset=text_dataset)
    with pytest.raises(ValueError, match="another config or seed"):
        train(make_config(max_iters=10, seed=1), run_dir=tmp_path, dataset=text_dataset)


# ---- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_loads_with_weights_only(text_dataset: Dataset, tmp_path: Path) -> None:
    train(make_config(), run_dir=tmp_path, dataset=text_dataset)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["step"] == 20
    assert {"model", "optimizer", "rng", "best_val", "history", "model_config"} <= ckpt.keys()
    assert ckpt["best_val"] == min(h["val_loss"] for h in ckpt["history"] if "val_loss" in h)
    assert set(ckpt["rng"]) == {"torch_cpu", "torch_cuda", "numpy", "python"}
    # The checkpoint alone rebuilds the model (what `rtlab sample` needs).
    section = {k: v for k, v in ckpt["model_config"].items() if k not in DATASET_DECIDES}
    model = build_model(ModelConfig.model_validate(section), text_dataset)
    model.load_state_dict(ckpt["model"])


class NotATensor:
    pass


def test_load_checkpoint_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    torch.save({"format": 1, "payload": NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_failed_checkpoint_write_leaves_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"format": 1, "step": 1, "weights": torch.ones(1000)})
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (whatever pickle raises for a lambda)
        # The tensor is serialised before the lambda fails: a partial file did exist on disk.
        save_checkpoint(path, {"format": 1, "step": 2, "weights": torch.zeros(1000),
                               "not_serialisable": lambda: None})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


def test_save_checkpoint_false_keeps_no_final_checkpoint(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    result = train(make_config(save_checkpoint=False), run_dir=tmp_path,
                   dataset=text_dataset)
    assert result.checkpoint_path is None
    assert not (tmp_path / CHECKPOINT_NAME).exists()


# ---- divergence --------------------------------------------------------------------------------


def test_nan_loss_raises_training_diverged_with_reason(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    # An absurd learning rate without clipping blows the weights up to inf after one step.
    config = make_config(learning_rate=1e30, grad_clip=0.0, warmup_iters=0)
    with pytest.raises(TrainingDiverged) as info:
        train(config, run_dir=tmp_path, dataset=text_dataset)
    error = info.value
    assert error.quantity in ("train loss", "gradient norm")
    assert not math.isfinite(error.value)
    assert 1 <= error.step <= 20
    assert f"at step {error.step}" in str(error) and error.quantity in str(error)


# ---- pieces of the step ------------------------------------------------------------------------


def test_grad_accumulation_equals_one_large_batch(text_dataset: Dataset) -> None:
    model = build_model(make_config().model, text_dataset)
    x, y = text_dataset.batch("train", index=0, batch_size=8, block_size=16, seed=0)

    def gradients(micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss = forward_backward(model, micro_batches, lambda: torch.autocast("cpu", enabled=False))
        grads = [p.grad.clone() for p in model.parameters()]
        grads.append(loss)
        return grads

    whole = gradients([(x, y)])
    halves = gradients([(x[:4], y[:4]), (x[4:], y[4:])])
    quarters = gradients([(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)])
    for g_whole, g_halves, g_quarters in zip(whole, halves, quarters, strict=True):
        torch.testing.assert_close(g_halves, g_whole, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g_quarters, g_whole, rtol=1e-5, atol=1e-6)


def test_learning_rate_schedule_warmup_then_cosine_to_min_lr() -> None:
    cfg = TrainConfig(max_iters=100, learning_rate=1.0, min_lr=0.1, warmup_iters=10,
                      lr_decay_iters=90)
    assert learning_rate_at(0, cfg) == pytest.approx(1 / 11)
    assert learning_rate_at(9, cfg) == pytest.approx(10 / 11)
    assert learning_rate_at(10, cfg) == pytest.approx(1.0)
    assert learning_rate_at(50, cfg) == pytest.approx(0.1 + 0.5 * 0.9)  # cosine midpoint
    assert learning_rate_at(90, cfg) == pytest.approx(0.1)
    assert learning_rate_at(99, cfg) == pytest.approx(0.1)
    decay = [learning_rate_at(s, cfg) for s in range(10, 91)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    # Defaults resolved by TrainConfig: decay over the whole run, down to learning_rate / 10.
    default = TrainConfig(max_iters=100, learning_rate=1.0)
    assert learning_rate_at(0, default) == pytest.approx(1.0)
    assert learning_rate_at(100, default) == pytest.approx(0.1)
    assert 0.1 < learning_rate_at(99, default) < 0.101  # the last update is just above min_lr


# ---- evaluation --------------------------------------------------------------------------------


class RecordingDataset:
    """The real dataset, noting which batches the trainer asks it for."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner
        self.requests: list[tuple[str, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def batch(self, split: str, index: int, batch_size: int, block_size: int, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        self.requests.append((split, index, seed))
        return self.inner.batch(split, index, batch_size, block_size, seed)


def test_eval_uses_the_same_fixed_batches_for_every_seed_and_step(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    eval_requests = {}
    for seed in (1, 2):
        dataset = RecordingDataset(text_dataset)
        train(make_config(sample_tokens=0, seed=seed), run_dir=tmp_path / str(seed),
              dataset=dataset)
        eval_requests[seed] = [r for r in dataset.requests if r[2] == EVAL_SEED]
        train_requests = [r for r in dataset.requests if r[2] != EVAL_SEED]
        # Training draws micro-batch index step * grad_accum + micro from the run's own seed.
        assert train_requests == [("train", i, seed) for i in range(20)]
    # Drawn once per run (3 evaluations reuse them), the same for both seeds.
    assert eval_requests[1] == eval_requests[2] == [
        ("train", 0, EVAL_SEED), ("train", 1, EVAL_SEED),
        ("val", 0, EVAL_SEED), ("val", 1, EVAL_SEED),
    ]


def test_evaluation_is_deterministic_and_draws_no_randomness(text_dataset: Dataset) -> None:
    model = build_model(make_config({"dropout": 0.3}).model, text_dataset)
    batches = fixed_eval_batches(text_dataset, "val", eval_iters=2, batch_size=4, block_size=16)
    rng_before = torch.get_rng_state()
    first = evaluate(model, batches, lambda: torch.autocast("cpu", enabled=False))
    second = evaluate(model, batches, lambda: torch.autocast("cpu", enabled=False))
    assert first == second
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training  # evaluation restores train mode


# ---- config handling ---------------------------------------------------------------------------


def test_head_that_does_not_fit_the_dataset_is_a_clear_error(
    text_dataset: Dataset, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="model.head: 'regression' does not fit dataset"):
        train(make_config({"head": "regression"}), run_dir=tmp_path,
              dataset=text_dataset)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_threads_setting_is_applied(text_dataset: Dataset, tmp_path: Path) -> None:
    config = make_config(max_iters=1, warmup_iters=0, threads=2, sample_tokens=0)
    train(config, run_dir=tmp_path, dataset=text_dataset)
    assert torch.get_num_threads() == 2


def test_bfloat16_autocast_trains(text_dataset: Dataset, tmp_path: Path) -> None:
    result = train(make_config(dtype="bfloat16"), run_dir=tmp_path, dataset=text_dataset)
    assert result.final_metrics["final_val_loss"] < result.history[0]["val_loss"]
    # Weights stay float32 under autocast (only the matmuls run in bfloat16).
    weights = load_checkpoint(tmp_path / CHECKPOINT_NAME)["model"]
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_regression_task_trains(tmp_path: Path) -> None:
    dataset = load_dataset("precache_synthetic", {"p": 0.5}, data_dir=tmp_path / "data")
    config = make_config({"head": "regression"}, max_iters=40, eval_interval=20,
                         data={"name": "precache_synthetic", "p": 0.5})
    result = train(config, run_dir=tmp_path / "run", dataset=dataset)
    assert result.final_metrics["final_val_loss"] < result.history[0]["val_loss"]
    assert result.sample is None  # no text to sample
    model_config = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["model_config"]
    assert model_config["head"] == "regression" and model_config["n_features"] == 2

