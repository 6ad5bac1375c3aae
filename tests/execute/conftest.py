"""A tiny real dataset (the `text` dataset over a small corpus) and tiny configs for the trainer."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

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


def make_config(model: dict[str, Any] | None = None, **train: Any) -> dict[str, Any]:
    """TINY_CONFIG with overrides: model fields by dict, train fields by keyword."""
    config = copy.deepcopy(TINY_CONFIG)
    config["model"].update(model or {})
    config["train"].update(train)
    return config


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The trainer sets the (process-wide) thread count from the config: start every test from
    # one thread and hand the suite's own setting back afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(corpus file, data dir) for the `text` dataset over TEXT."""
    directory: Path = tmp_path_factory.mktemp("tiny_text")
    (directory / "corpus.txt").write_text(TEXT)
    return directory / "corpus.txt", directory / "data"


def load_text_dataset(corpus: Path, data_dir: Path) -> Dataset:
    return load_dataset("text", {"path": str(corpus), "tokenizer": "char"}, data_dir=data_dir)


@pytest.fixture(scope="session")
def text_dataset(text_corpus: tuple[Path, Path]) -> Dataset:
    """The `text` dataset (character tokenizer) over TEXT, prepared in a temporary data dir."""
    return load_text_dataset(*text_corpus)
