"""Device, dtype and peak-FLOP/s helpers shared by the trainer and the benchmarks."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Dense bf16 peak FLOP/s (no sparsity), matched by substring of the CUDA device name.
# Order matters: more specific names first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
]


def resolve_device(name: Literal["auto", "cpu", "cuda"] | str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")


def autocast_context(device: torch.device, dtype_name: str = "float32"):
    """bf16 autocast for 'bfloat16'; a no-op context for 'float32'."""
    if dtype_name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s for MFU, or None when unknown (e.g. CPU)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None
