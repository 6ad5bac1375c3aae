"""A tiny text corpus and tiny trainer configs for the execute tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rtlab.data import Dataset, load_dataset

# A corpus with structure a tiny model can learn within a few dozen steps.
TEXT = "the quick brown fox jumps over the lazy dog.\nsphinx of black quartz, judge my vow.\n" * 200

TINY_CONFIG: dict[str, Any] = {
    "data": {"name": "tiny_text"},
    "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.0},
    "train": {
        "max_iters": 20,
        "batch_size": 8,
        "grad_accum": 1,
        "learning_rate": 3e-3,
        "warmup_iters": 2,
        "eval_interval": 10,
        "eval_iters": 2,
        "checkpoint_interval": 10,
        "log_interval": 5,
        "sample_tokens": 20,
        "device": "cpu",
        "threads": 1,
    },
}


def make_config(
    model: dict[str, Any] | None = None,
    seed: int = 0,
    data: dict[str, Any] | None = None,
    **train: Any,
) -> RunConfig:
    """A RunConfig of TINY_CONFIG with overrides: model fields by dict, train fields by keyword."""
    return RunConfig(
        experiment="tiny",
        arm="tiny",
        seed=seed,
        data=DataConfig.model_validate(data or TINY_CONFIG["data"]),
        model=ModelConfig.model_validate({**TINY_CONFIG["model"], **(model or {})}),
        train=TrainConfig.model_validate({**TINY_CONFIG["train"], **train}),
    )


def load_text_dataset(corpus: Path, data_dir: Path) -> Dataset:
    return load_dataset("text", {"path": str(corpus), "tokenizer": "char"}, data_dir=data_dir)
