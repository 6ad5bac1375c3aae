"""The interface shared by every rtlab dataset, and the token-file dataset behind most of them.

A dataset's `batch(split, index, batch_size, block_size, seed)` is a pure function of its
arguments: the random generator is seeded from (seed, split, index), so step k of a resumed run
draws exactly the batch that step k of an uninterrupted run drew, and the sampler keeps no state
to checkpoint.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

Split = Literal["train", "val"]
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1}

# Token files are stored as uint16 (nanoGPT's format), so ids must stay below 2**16.
MAX_UINT16_VOCAB = 65535


class DataError(ValueError):
    """Bad data input (missing file, unknown dataset, bad option...); the message names it."""


def did_you_mean(word: object, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest candidate, or "" when nothing is close.

    The one suggestion helper of rtlab (data and spec errors use it).
    """
    if not isinstance(word, str):
        return ""
    options = sorted(set(candidates))
    matches = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not matches:
        # difflib compares case-sensitively; catch pure case slips such as `N_Layer`.
        matches = [o for o in options if o.lower() == word.lower()]
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def batch_generator(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one batch: independent streams per (seed, split, index)."""
    if split not in SPLIT_IDS:
        raise DataError(f"split must be 'train' or 'val', got {split!r}")
    if seed < 0 or index < 0:
        raise DataError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, SPLIT_IDS[split], index]))
    )


def check_batch_args(batch_size: int, block_size: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise DataError(
            f"batch_size and block_size must be >= 1, got batch_size={batch_size}, "
            f"block_size={block_size}"
        )


@dataclass
class Dataset:
    """What the trainer sees. Subclasses implement `batch`."""

    name: str
    task: Literal["lm", "regression"]
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)
    vocab_size: int | None = None
    n_features: int | None = None

    # The classes a dataset sorts target positions into, so that a loss can be read per class
    # (e.g. positions whose target needs the past vs plain copies). Empty: no classes.
    position_class_names: ClassVar[tuple[str, ...]] = ()

    def batch(
        self, split: Split, index: int, batch_size: int, block_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def position_classes(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Each position's class of a batch (x, y): int64 (B, T) indices into
        `position_class_names`, on x's device; None for a dataset without classes."""
        return None

    def encode(self, text: str) -> list[int]:
        raise DataError(f"dataset '{self.name}' has no text encoding")

    def decode(self, ids: list[int]) -> str:
        raise DataError(f"dataset '{self.name}' has no text decoding")


class TokenDataset(Dataset):
    """Language modelling over uint16 token files (`train.bin`, `val.bin`), memory-mapped.

    A batch is `batch_size` windows of `block_size + 1` tokens at uniform random offsets, read with
    one fancy index (offsets[:, None] + arange): no per-sample Python loop.
    """

    def __init__(
        self,
        name: str,
        fingerprint: str,
        meta: dict[str, Any],
        vocab_size: int,
        files: dict[str, Path],
        encode: Callable[[str], list[int]] | None = None,
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        super().__init__(
            name=name, task="lm", fingerprint=fingerprint, meta=meta, vocab_size=vocab_size
        )
        self.files = files
        self._encode = encode
        self._decode = decode
        self._tokens: dict[str, np.memmap] = {}

    def tokens(self, split: str) -> np.ndarray:
        if split not in SPLIT_IDS:
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        if split not in self._tokens:
            self._tokens[split] = np.memmap(self.files[split], dtype=np.uint16, mode="r")
        return self._tokens[split]

    def batch(
        self, split: Split, index: int, batch_size: int, block_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch_args(batch_size, block_size)
        data = self.tokens(split)
        if len(data) < block_size + 1:
            raise DataError(
                f"{self.files[split]}: the {split} split has {len(data)} tokens, fewer than "
                f"block_size + 1 = {block_size + 1}"
            )
        rng = batch_generator(seed, split, index)
        starts = rng.integers(0, len(data) - block_size, size=batch_size)
        windows = torch.from_numpy(
            data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)
        )
        return windows[:, :-1], windows[:, 1:]

    def encode(self, text: str) -> list[int]:
        if self._encode is None:
            return super().encode(text)
        return self._encode(text)

    def decode(self, ids: list[int]) -> str:
        if self._decode is None:
            return super().decode(ids)
        return self._decode(ids)
