"""Checkpoints: atomic writes, `weights_only=True` loads, and RNG state as plain tensors.

A checkpoint is a dict of tensors and primitive containers only (no numpy arrays, no pickled
objects), so `torch.load(path, weights_only=True)` can read it: a checkpoint from an untrusted
run directory can then never execute code on load.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "ckpt.pt"
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a reader sees the old file or the new one, never half.

    The bytes go to a temporary file in the same directory (so `os.replace` is a rename on the
    same filesystem), are flushed to disk, and only then replace `path`. If anything fails the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    try:
        with open(tmp_path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    # Make the rename itself durable (a crash right after must not bring back the old file).
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; only tensors and primitives load."""
    state = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an rtlab checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return state


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and primitives."""
    np_kind, np_keys, np_pos, np_has_gauss, np_cached_gaussian = np.random.get_state()
    py_version, py_internal, py_gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached_gaussian),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss_next,
        },
    }


def restore_rng_state(rng: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(rng["torch_cpu"])
    if rng["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])
    np_state = rng["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = rng["python"]
    random.setstate(
        (py_state["version"], tuple(py_state["internal"].tolist()), py_state["gauss_next"])
    )
