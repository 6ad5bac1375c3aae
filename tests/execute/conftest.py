"""Fixtures for the trainer tests: one torch thread per test, a tiny `text` dataset per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rtlab.data import Dataset
from tests.helpers.train_config import TEXT, load_text_dataset


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


@pytest.fixture(scope="session")
def text_dataset(text_corpus: tuple[Path, Path]) -> Dataset:
    """The `text` dataset (character tokenizer) over TEXT, prepared in a temporary data dir."""
    return load_text_dataset(*text_corpus)
