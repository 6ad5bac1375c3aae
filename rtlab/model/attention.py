"""Attention backends: one per model, chosen from its config at construction (make_attention) and
again by GPT.set_attention_backend, which tests use to force a kernel.

A backend answers two calls:
- mask(P, device, training): what its kernel needs for P slots, built once per forward pass and
  shared by every layer (None, a dense boolean mask, or a FlexAttention BlockMask);
- backend(q, k, v, mask, dropout_p): the attention output, (B, H, P, D) like q.

  SDPA               baseline: nanoGPT's causal scaled_dot_product_attention, no mask; also
                     reasoning slots with delay 1 under 'auto', whose slot mask is causal
  DenseMaskSDPA      reasoning slots (METHODS §2): SDPA with the dense slot mask (masks.py)
  FlexAttention      reasoning slots: FlexAttention with the BlockMask of the same rule (CUDA;
                     eager on CPU, for tests); no attention dropout
  AutoSlotAttention  reasoning slots (delay > 1), 'auto': FlexAttention on CUDA, DenseMaskSDPA
                     elsewhere
  MyopicAttention    myopic (METHODS §3): causal SDPA without autograd; with it the layer runs
                     myopic.py, and this backend supplies the causal BlockMask for the fused lse

All of them compute the same function (METHODS §4.6); the choice is about speed and dropout.
"""

from __future__ import annotations

import types
import warnings
from typing import Any, Literal, Protocol

import torch
from torch.nn import functional as F

from rtlab.config import GPTConfig
from rtlab.model.masks import cached_flex_mask, dense_reasoning_mask

Backend = Literal["auto", "dense", "flex"]


class Attention(Protocol):
    def mask(self, P: int, device: torch.device, training: bool) -> Any: ...

    def __call__(self, q, k, v, mask: Any, dropout_p: float) -> torch.Tensor: ...


def make_attention(
    config: GPTConfig, backend: Backend = "auto", dense_cache: dict | None = None
) -> Attention:
    """The backend for config's mode. backend: 'dense' = SDPA (+ dense mask); 'flex' =
    FlexAttention (eager on CPU: for tests only); 'auto' = causal SDPA where the slot mask is
    causal (delay 1), else flex on CUDA and dense elsewhere.
    dense_cache: where DenseMaskSDPA keeps its mask (the model's, so it outlives a backend swap)."""
    if backend not in ("auto", "dense", "flex"):
        raise ValueError(f"attention backend must be auto, dense or flex, got {backend!r}")
    if config.myopic != "off":
        return MyopicAttention(flex=backend == "flex")
    if config.reasoning.n_tokens == 0:
        return SDPA()
    if backend == "auto" and config.reasoning.delay == 1:
        # With delay 1 the slot mask is exactly causal over slots (METHODS §2: a reasoning key of
        # an earlier step is visible once t_k <= t_q - 1, i.e. always): no mask at all, SDPA's
        # causal kernel (flash on CPU and CUDA). 'dense' still builds the mask, to check this.
        return SDPA()
    dense = DenseMaskSDPA(config, {} if dense_cache is None else dense_cache)
    flex = FlexAttention(config)
    return {"dense": dense, "flex": flex, "auto": AutoSlotAttention(dense, flex, config)}[backend]


class SDPA:
    """nanoGPT's kernel: causal when mask is None, else the given dense boolean mask alone."""

    def mask(self, P: int, device: torch.device, training: bool) -> Any:
        return None

    def __call__(self, q, k, v, mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=mask is None
        )


class DenseMaskSDPA(SDPA):
    """SDPA with the dense reasoning-slot mask; supports attention dropout."""

    def __init__(self, config: GPTConfig, cache: dict[str, torch.Tensor]):
        self.block_size = config.block_size
        self.n_tokens, self.delay = config.reasoning.n_tokens, config.reasoning.delay
        self.cache = cache  # device name -> mask for block_size timesteps

    def mask(self, P: int, device: torch.device, training: bool) -> torch.Tensor:
        # One mask for the longest context, sliced: visibility depends only on slot indices,
        # so its [:P, :P] corner is exactly the mask for P slots (generation's growing lengths
        # share it instead of caching one mask per length).
        key = str(device)
        mask = self.cache.get(key)
        if mask is None:
            mask = dense_reasoning_mask(self.block_size, self.n_tokens, self.delay, device)
            self.cache[key] = mask
        if P > mask.size(0):
            raise ValueError(
                f"{P} slots exceed block_size * (n_tokens+1) = {mask.size(0)} (block_size counts "
                "timesteps)"
            )
        return mask[:P, :P]


class FlexAttention:
    """FlexAttention with the reasoning-slot BlockMask (cached per length and device)."""

    def __init__(self, config: GPTConfig):
        self.n_tokens, self.delay = config.reasoning.n_tokens, config.reasoning.delay
        self.dropout = config.dropout

    def mask(self, P: int, device: torch.device, training: bool) -> Any:
        if training and self.dropout > 0:
            raise ValueError("attention backend 'flex' has no attention dropout; set dropout 0")
        return cached_flex_mask(P, self.n_tokens, self.delay, device)

    def __call__(self, q, k, v, mask: Any, dropout_p: float) -> torch.Tensor:
        return flex_attention(q, k, v, block_mask=mask)  # dropout_p is 0: mask() checked


class AutoSlotAttention:
    """Reasoning slots under 'auto': FlexAttention on CUDA unless attention dropout is on (flex
    has none), DenseMaskSDPA otherwise."""

    def __init__(self, dense: DenseMaskSDPA, flex: FlexAttention, config: GPTConfig):
        self.dense, self.flex, self.dropout = dense, flex, config.dropout

    def mask(self, P: int, device: torch.device, training: bool) -> Any:
        use_flex = device.type == "cuda" and not (training and self.dropout > 0)
        return (self.flex if use_flex else self.dense).mask(P, device, training)

    def __call__(self, q, k, v, mask: Any, dropout_p: float) -> torch.Tensor:
        kernel = self.dense if isinstance(mask, torch.Tensor) else self.flex  # as mask() chose
        return kernel(q, k, v, mask, dropout_p)


class MyopicAttention(SDPA):
    """Myopic layers. Without autograd myopic attention is ordinary causal attention (METHODS
    §3), so this is SDPA; with autograd CausalSelfAttention runs myopic.py's explicit or fused
    form instead, and mask() returns the causal BlockMask whose FlexAttention call gives the fused
    form its log-sum-exp where the CPU flash kernel is unavailable (CUDA, or flex forced)."""

    def __init__(self, flex: bool):
        self.flex = flex

    def mask(self, P: int, device: torch.device, training: bool) -> Any:
        # fetched here, once per forward, so a compiled model breaks its graph once at most
        if torch.is_grad_enabled() and (self.flex or device.type == "cuda"):
            return cached_flex_mask(P, 0, 1, device)
        return None


# ----------------------------------------------------------------------------------------------
# FlexAttention calls
#
# Dynamo keys its compile cache on a code object, so one compiled flex_attention reused for every
# call signature (shape, mask, grad mode, lse or not) would pile all of them on one cache and,
# past torch._dynamo.config.recompile_limit (8), silently run the slow eager kernel for new ones;
# separate torch.compile wrappers of the same function share that cache. So each signature gets
# its own copy of a small wrapper (a fresh code object, hence its own cache and limit).
_compiled_flex_attention: dict[tuple, Any] = {}


def _flex_call(q, k, v, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention

    return torch_flex_attention(q, k, v, **kwargs)


def _compiled_flex_for(key: tuple):
    compiled = _compiled_flex_attention.get(key)
    if compiled is None:
        code = _flex_call.__code__.replace(co_name=f"_flex_call_{len(_compiled_flex_attention)}")
        wrapper = types.FunctionType(code, _flex_call.__globals__, code.co_name)
        compiled = torch.compile(wrapper, dynamic=False)
        _compiled_flex_attention[key] = compiled
    return compiled


def flex_attention(q, k, v, **kwargs):
    """FlexAttention. On CUDA outside torch.compile it is compiled here, once per call signature
    (its eager form is a slow reference); on CPU it runs eagerly, which only tests use
    (attention backend 'flex')."""
    from torch.nn.attention.flex_attention import flex_attention as torch_flex_attention

    if torch.compiler.is_compiling():
        return torch_flex_attention(q, k, v, **kwargs)
    if q.device.type != "cuda":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            return torch_flex_attention(q, k, v, **kwargs)
    # the block masks are cached per (slots, n_tokens, delay, device): their id names the mask
    key = (
        tuple(q.shape),
        tuple(k.shape),
        q.dtype,
        str(q.device),
        id(kwargs.get("block_mask")),
        torch.is_grad_enabled(),
        "return_aux" in kwargs,
    )
    return _compiled_flex_for(key)(q, k, v, **kwargs)
