"""The model's linear layers: nn.Linear, with the CPU float32 matmuls of training through oneDNN.

On an x86 CPU, PyTorch runs a float32 `F.linear` on MKL's sgemm. oneDNN (shipped inside every
x86 PyTorch build, the library behind `torch.ops.mkldnn`) runs the same products faster at the
shapes of a small GPT: on a 2-core AMD EPYC (Zen 4), one thread, the mini_sweep model's layers
(2048 x 128 @ 128 x 384 and the like) ran at 100-108 GFLOP/s against MKL's 80-90 in isolation,
and a whole training step is 4-6% faster for the baseline and about 8% with two reasoning slots
(more rows) in benchmarks/bench_model.py (rows `baseline (MKL matmul)` and `reasoning n=2 (MKL
matmul)` are the same models on F.linear).
So `Linear.forward` computes, on that path:

    forward      y  = x W^T + b      oneDNN  (torch.ops.mkldnn._linear_pointwise)
    backward     dx = dy W           oneDNN  (the same op, with W^T as the weight: a strided view)
                 dW = dy^T x         MKL     (oneDNN is slower here: both operands transposed)
                 db = sum of dy over rows

It is the same function in float32 (the forward is usually bit-identical to MKL's; dx differs in
the last bits, a different summation order), and deterministic: a rerun on the same machine and
thread count is bit-identical. Everything else (CUDA, float64, bfloat16 autocast, torch.compile,
inputs of fewer than MIN_ROWS rows, where a new shape's oneDNN kernel costs more to build than it
saves, non-x86 CPUs, builds without oneDNN) takes plain `F.linear`.

`RTLAB_CPU_MATMUL=mkl` in the environment (read at import) or `set_cpu_matmul("mkl")` turns the
oneDNN path off, e.g. to compare the two in a benchmark.
"""

from __future__ import annotations

import os
import platform
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

# Below this many rows (tokens x batch) a product is too small for oneDNN to pay off, and
# generation, whose length changes every step, would build a oneDNN kernel per length.
MIN_ROWS = 512

CpuMatmul = Literal["onednn", "mkl"]


def onednn_linear_available() -> bool:
    """Whether this PyTorch build and CPU have the oneDNN linear op (x86 builds with MKLDNN)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # e.g. Apple silicon: PyTorch's own BLAS (Accelerate) is the fast path there
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (raises when the op is not registered)
    except (AttributeError, RuntimeError):
        return False
    return True


_AVAILABLE = onednn_linear_available()
_enabled = os.environ.get("RTLAB_CPU_MATMUL", "onednn").strip().lower() != "mkl"


def set_cpu_matmul(kind: CpuMatmul) -> None:
    """'onednn' (default where available) or 'mkl' (plain F.linear) for CPU float32 linears."""
    global _enabled
    if kind not in ("onednn", "mkl"):
        raise ValueError(f"cpu matmul must be 'onednn' or 'mkl', got {kind!r}")
    _enabled = kind == "onednn"


def cpu_matmul() -> CpuMatmul:
    """What CPU float32 linears of at least MIN_ROWS rows run on now."""
    return "onednn" if _enabled and _AVAILABLE else "mkl"


def _onednn(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with the forward and dx on oneDNN, dW on MKL (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = _onednn(x.reshape(-1, x.size(-1)), weight, bias)
        return y.view(*x.shape[:-1], weight.size(0))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(g, weight.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = g.t() @ x.reshape(-1, x.size(-1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        return grad_x, grad_weight, grad_bias


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether Linear.forward takes the oneDNN path for this input."""
    return (
        _enabled
        and _AVAILABLE
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() >= MIN_ROWS * x.size(-1)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


class Linear(nn.Linear):
    """nn.Linear (same parameters, state_dict and init) whose CPU float32 products take oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if uses_onednn(x, self.weight):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
