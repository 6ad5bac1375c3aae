"""Tiny real datasets and configs for the trainer tests (a real TokenDataset over token files)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from rtlab.data.base import TokenDataset
from rtlab.data.tokenizer import CharTokenizer

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


def make_config(model: dict[str, Any] | None = None, **train: Any) -> dict[str, Any]:
    """TINY_CONFIG with overrides: model fields by dict, train fields by keyword."""
    config = copy.deepcopy(TINY_CONFIG)
    config["model"].update(model or {})
    config["train"].update(train)
    return config


@pytest.fixture(autouse=True)
def one_thread() -> None:
    # The trainer sets the thread count from the config; start every test from the same state.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def text_dataset(tmp_path_factory: pytest.TempPathFactory) -> TokenDataset:
    directory: Path = tmp_path_factory.mktemp("tiny_text")
    tokenizer = CharTokenizer.from_text(TEXT)
    tokens = tokenizer.encode_array(TEXT)
    split_at = int(0.9 * len(tokens))
    files = {"train": directory / "train.bin", "val": directory / "val.bin"}
    tokens[:split_at].tofile(files["train"])
    tokens[split_at:].tofile(files["val"])
    return TokenDataset(
        name="tiny_text",
        fingerprint="tiny-text-test",
        meta={},
        vocab_size=tokenizer.vocab_size,
        files=files,
        encode=tokenizer.encode,
        decode=tokenizer.decode,
    )
