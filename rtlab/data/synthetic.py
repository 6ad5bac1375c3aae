"""Synthetic tasks generated on the fly from (seed, split, index): nothing to prepare or cache.

`precache_synthetic` (Wu, Morris & Levine 2024; METHODS.md §5), regression:
    x_n ~ N(0, 1) i.i.d.,  z_n ~ Bernoulli(p) i.i.d.,
    y_n = z_n * sum_{i=1..W} sin(F * x_{n-i}) + (1 - z_n) * x_n,   with x_m = 0 for m < 0,
where n counts from the start of each sequence (every row of a batch is a fresh sequence of
`block_size` steps; the paper uses 64 and W = F = 10, the defaults). The model reads the
features (x_n, z_n), so x has shape (B, T, 2) and y has shape (B, T), both float32. sin(F x)
of a past input cannot be recovered from an attention average of linear features of x, so a good
model computes sin(F x_m) at position m, where its own target never needs it (pre-caching):
exactly what myopic training forbids.

`precache_discrete`, language modelling: the same idea with tokens. The stream is a repetition of
periods of `n_digits + 2` tokens:
    d_1 d_2 ... d_w  =  a,      w = n_digits, digits d_i ~ Uniform{0..M-1} i.i.d., M = modulus,
    a = (sum_{i=2..w} d_{i-1} * d_i) mod M,
with `=` the token id M (vocab_size = M + 1). Each row of a batch is a window of `block_size + 1`
tokens of an endless stream of independent periods, starting at a random phase; y is x shifted by
one (ordinary next-token prediction). The answer a, predicted at the `=` position, depends on all
w digits up to w + 1 steps back through the products of adjacent digits. An attention read at the
`=` position sees a mixture of single-digit features, which fixes the digit histogram but not
which digits were neighbours; a model with few heads must therefore form c_i = d_{i-1} * d_i (mod
M) at position i, via a previous-token lookup, although position i's own target (the next digit,
random) has no use for it. Myopic training cuts that gradient. Every other target is either
random (a digit, loss ln M) or trivial (`=`), so the loss floor is w * ln(M) / (w + 2) per token;
`meta["loss_floor"]` gives it, and the excess over it measures how well the answers are learnt.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from rtlab.data.base import DataError, Dataset, Split, batch_generator, check_batch_args

PRECACHE_WINDOW = 10  # sum over x_{n-1} .. x_{n-10} (METHODS §5)
PRECACHE_FREQUENCY = 10.0  # sin(10 x)


def params_fingerprint(params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def precache_targets(
    x: np.ndarray, z: np.ndarray, window: int = PRECACHE_WINDOW,
    frequency: float = PRECACHE_FREQUENCY,
) -> np.ndarray:
    """y_n = z_n * sum_{i=1..W} sin(F x_{n-i}) + (1 - z_n) x_n over the last axis, float64
    (the paper: W = F = 10)."""
    s = np.sin(frequency * x.astype(np.float64))
    # prefix[k] = sum_{m < k} s_m, so sum_{i=1..W} s_{n-i} = prefix[n] - prefix[max(n - W, 0)].
    prefix = np.concatenate([np.zeros(s.shape[:-1] + (1,)), np.cumsum(s, axis=-1)], axis=-1)
    n = np.arange(x.shape[-1])
    window_sum = prefix[..., n] - prefix[..., np.maximum(n - window, 0)]
    return z * window_sum + (1.0 - z) * x


class PrecacheSynthetic(Dataset):
    """Wu et al.'s pre-caching regression task (METHODS §5), with Bernoulli probability p.

    Position classes: `copy` (z = 0, the target is the current input) and `needs_past` (z = 1,
    the target sums features of the W previous inputs: where pre-caching pays off).
    """

    position_class_names = ("copy", "needs_past")

    def __init__(self, p: float, window: int = PRECACHE_WINDOW,
                 frequency: float = PRECACHE_FREQUENCY) -> None:
        if not 0.0 <= p <= 1.0:
            raise DataError(f"precache_synthetic: p must be in [0, 1], got {p}")
        if window < 1:
            raise DataError(f"precache_synthetic: window must be >= 1, got {window}")
        if not frequency > 0:
            raise DataError(f"precache_synthetic: frequency must be > 0, got {frequency}")
        params = {
            "dataset": "precache_synthetic",
            "p": p,
            "window": window,
            "frequency": frequency,
            "generator": "numpy-pcg64-v1",
        }
        super().__init__(
            name="precache_synthetic",
            task="regression",
            n_features=2,
            fingerprint=params_fingerprint(params),
            meta={"params": params, "source": {"kind": "generated"}},
        )
        self.p, self.window, self.frequency = p, window, frequency

    def batch(
        self, split: Split, index: int, batch_size: int, block_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch_args(batch_size, block_size)
        rng = batch_generator(seed, split, index)
        # Targets are computed from the float32 inputs the model will read, so they agree exactly.
        x = rng.standard_normal((batch_size, block_size)).astype(np.float32).astype(np.float64)
        z = (rng.random((batch_size, block_size)) < self.p).astype(np.float64)
        y = precache_targets(x, z, self.window, self.frequency)
        features = np.stack([x, z], axis=-1)
        return (
            torch.from_numpy(features.astype(np.float32)),
            torch.from_numpy(y.astype(np.float32)),
        )

    def position_classes(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """z itself: 0 = copy, 1 = needs_past (z is the second input feature)."""
        return (x[..., 1] > 0.5).long()


def pair_sum_answers(digits: np.ndarray, modulus: int) -> np.ndarray:
    """a = (sum_{i=2..w} d_{i-1} * d_i) mod M over the last axis."""
    return (digits[..., :-1] * digits[..., 1:]).sum(axis=-1) % modulus


class PrecacheDiscrete(Dataset):
    """The discrete pre-caching LM task (module docstring): `d_1 .. d_w = a` periods.

    Position classes: `answer` (the input is `=`, so the target is the answer a, which needs the
    past) and `other` (digits, which are random, and `=`, which is certain).
    """

    position_class_names = ("other", "answer")

    def __init__(self, n_digits: int, modulus: int) -> None:
        if n_digits < 2:
            raise DataError(f"precache_discrete: n_digits must be >= 2, got {n_digits}")
        if not 2 <= modulus <= 1000:
            raise DataError(f"precache_discrete: modulus must be in [2, 1000], got {modulus}")
        self.n_digits, self.modulus = n_digits, modulus
        self.period = n_digits + 2
        self.equals_id = modulus
        params = {
            "dataset": "precache_discrete",
            "n_digits": n_digits,
            "modulus": modulus,
            "generator": "numpy-pcg64-v1",
        }
        floor = n_digits * math.log(modulus) / self.period
        super().__init__(
            name="precache_discrete",
            task="lm",
            vocab_size=modulus + 1,
            fingerprint=params_fingerprint(params),
            meta={
                "params": params,
                "source": {"kind": "generated"},
                "loss_floor": floor,
                "period": self.period,
            },
        )

    def batch(
        self, split: Split, index: int, batch_size: int, block_size: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch_args(batch_size, block_size)
        rng = batch_generator(seed, split, index)
        n_periods = (block_size + 1) // self.period + 2
        digits = rng.integers(0, self.modulus, size=(batch_size, n_periods, self.n_digits))
        periods = np.empty((batch_size, n_periods, self.period), dtype=np.int64)
        periods[..., : self.n_digits] = digits
        periods[..., self.n_digits] = self.equals_id
        periods[..., self.n_digits + 1] = pair_sum_answers(digits, self.modulus)
        stream = periods.reshape(batch_size, -1)
        phase = rng.integers(0, self.period, size=batch_size)
        windows = np.take_along_axis(stream, phase[:, None] + np.arange(block_size + 1), axis=1)
        tokens = torch.from_numpy(windows)
        return tokens[:, :-1], tokens[:, 1:]

    def position_classes(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """1 (answer) where the input token is `=`, else 0 (other)."""
        return (x == self.equals_id).long()

    def encode(self, text: str) -> list[int]:
        """'0189=8' (modulus <= 10) or '12 7 = 3' (space-separated numbers) -> ids."""
        pieces = text.split() if self.modulus > 10 else list(text.replace(" ", ""))
        ids = []
        for position, piece in enumerate(pieces):
            if piece == "=":
                ids.append(self.equals_id)
            elif piece.isdigit() and int(piece) < self.modulus:
                ids.append(int(piece))
            else:
                raise DataError(f"precache_discrete: cannot encode {piece!r} (piece {position})")
        return ids

    def decode(self, ids: list[int]) -> str:
        if self.modulus <= 10:
            return "".join("=" if i == self.equals_id else str(i) for i in ids)
        return " ".join("=" if i == self.equals_id else str(i) for i in ids)
