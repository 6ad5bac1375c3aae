"""Validation loss by position class: same batches, same forward pass, consistent with val_loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rtlab.data import Dataset, load_dataset
from rtlab.execute import build_model, train
from rtlab.execute.trainer import CLASS_VAL_LOSS, evaluate, fixed_eval_batches
from rtlab.track.names import CLASS_VAL_LOSS_PREFIX, VAL_LOSS
from tests.helpers.train_config import make_config

NO_AUTOCAST = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731

SYNTHETIC = {
    "precache_synthetic": ({"name": "precache_synthetic", "p": 0.5}, {"head": "regression"}),
    "precache_discrete": ({"name": "precache_discrete", "n_digits": 3, "modulus": 5}, {}),
    "precache_discrete_reasoning": (
        {"name": "precache_discrete", "n_digits": 3, "modulus": 5},
        {"reasoning": {"n_tokens": 1}},
    ),
}


def class_counts(dataset: Dataset, eval_iters: int, batch_size: int, block_size: int) -> list[int]:
    """How many validation positions of each class the trainer's fixed batches hold."""
    counts = torch.zeros(len(dataset.position_class_names), dtype=torch.long)
    for x, y in fixed_eval_batches(dataset, "val", eval_iters, batch_size, block_size):
        counts += torch.bincount(dataset.position_classes(x, y).flatten(),
                                 minlength=len(counts))
    return counts.tolist()


def test_the_metric_name_is_the_one_track_reads_back() -> None:
    assert CLASS_VAL_LOSS.format("answer") == CLASS_VAL_LOSS_PREFIX + "answer"
    assert CLASS_VAL_LOSS_PREFIX.startswith(VAL_LOSS)


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_class_losses_weighted_by_counts_give_the_val_loss(case: str, tmp_path: Path) -> None:
    data, model = SYNTHETIC[case]
    options = {k: v for k, v in data.items() if k != "name"}
    dataset = load_dataset(data["name"], options, data_dir=tmp_path / "data")
    config = make_config(model, max_iters=20, eval_interval=10, data=data)
    result = train(config, run_dir=tmp_path / "run", dataset=dataset)
    names = dataset.position_class_names
    counts = class_counts(dataset, config.train.eval_iters, config.train.batch_size,
                          config.model.block_size)
    assert all(count > 0 for count in counts)
    evaluations = [entry for entry in result.history if VAL_LOSS in entry]
    assert [entry["step"] for entry in evaluations] == [0, 10, 20]
    for entry in evaluations:
        losses = [entry[CLASS_VAL_LOSS.format(name)] for name in names]
        weighted = sum(c * loss for c, loss in zip(counts, losses, strict=True)) / sum(counts)
        assert weighted == pytest.approx(entry[VAL_LOSS], rel=1e-5)
    # The classes differ where the task says they should: after training, the copy positions
    # (synthetic) and the random digits (discrete) are not as hard as each other's counterpart.
    last = evaluations[-1]
    assert len({last[CLASS_VAL_LOSS.format(name)] for name in names}) == len(names)


@pytest.mark.parametrize("case", ["precache_synthetic", "precache_discrete"])
def test_class_evaluation_leaves_the_val_loss_bit_identical(case: str) -> None:
    data, model_section = SYNTHETIC[case]
    options = {k: v for k, v in data.items() if k != "name"}
    dataset = load_dataset(data["name"], options)
    torch.manual_seed(0)
    model = build_model(make_config(model_section, data=data).model, dataset)
    batches = fixed_eval_batches(dataset, "val", eval_iters=3, batch_size=4, block_size=16)
    ids = [dataset.position_classes(x, y) for x, y in batches]
    plain = evaluate(model, batches, NO_AUTOCAST)
    by_class = evaluate(model, batches, NO_AUTOCAST, ids, len(dataset.position_class_names))
    assert plain.mean == by_class.mean  # exact: the overall loss is computed as before
    assert plain.class_sums == [] and sum(by_class.class_counts) == 3 * 4 * 16


def test_a_dataset_without_classes_logs_none(text_dataset: Dataset, tmp_path: Path) -> None:
    logged: list[dict[str, Any]] = []
    train(make_config(), run_dir=tmp_path, dataset=text_dataset,
          on_metrics=lambda step, metrics: logged.append(metrics))
    assert any(VAL_LOSS in metrics for metrics in logged)
    assert not [key for metrics in logged for key in metrics
                if key.startswith(CLASS_VAL_LOSS_PREFIX)]
