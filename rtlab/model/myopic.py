"""Myopic attention (METHODS §3): the same forward pass as causal attention, with every gradient
between positions cut. CausalSelfAttention (gpt.py) picks the variant and the implementation;
the math is here.

Per layer, with scale = 1/sqrt(head_dim) and sg = stop-gradient:
    s_ji = scale <q_j, k~_i>  (i < j),    s_jj = scale <q_j, k_j>  (live),
    o_j  = sum_i a_ji v~_i + a_jj (v_j - v~_j),    a = causal softmax of s.
Past positions are read through k~, v~:
    strict: k~ = sg(k), v~ = sg(v)                  (no off-diagonal gradient at all);
    paper:  k~ = W_K sg(h) + b_K, v~ = W_V sg(h) + b_V   (activations cut, but W_K, W_V still
            learn from off-diagonal pairs; h is the layer's normalised input).
Their values equal k, v, so myopic logits equal the baseline's bit for bit.

Two implementations that must agree (METHODS §4.6):
    myopic_attention_explicit  materialises the T x T scores; O(T^2) memory; attention dropout;
    myopic_attention_fused     one fused causal attention call over (q, k~, v~) plus its lse, and
                               the live diagonal's gradient added in the backward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from rtlab.model.attention import flex_attention
from rtlab.model.masks import cached_flex_mask


def paper_key_values(x: torch.Tensor, qkv: torch.Tensor, c_attn: nn.Linear) -> torch.Tensor:
    """paper's k~, v~ (B, T, 2C) for the layer with input x and c_attn output qkv."""
    C = x.size(-1)
    bias = c_attn.bias[C:] if c_attn.bias is not None else None
    return _KeyValueWeightPath.apply(qkv[..., C:].detach(), x.detach(), c_attn.weight[C:], bias)


class _KeyValueWeightPath(torch.autograd.Function):
    """paper's k~, v~ = W_KV·sg(h) + b_KV without recomputing that matmul: the forward returns
    the already computed (detached) k, v; the backward sends the gradient into W_KV and b_KV
    only, as d(W·sg(h) + b) would."""

    @staticmethod
    def forward(ctx, kv, h, weight, bias):
        # kv (B, T, 2C): the k and v channels of c_attn's output; h (B, T, C) detached input
        ctx.save_for_backward(h)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return kv.view_as(kv)

    @staticmethod
    def backward(ctx, grad_kv):
        (h,) = ctx.saved_tensors
        grad_out = grad_kv.flatten(0, 1)
        # in the activations' dtype (bf16 under autocast, like a linear layer's weight gradient)
        grad_weight = (grad_out.t() @ h.flatten(0, 1).to(grad_out.dtype)).to(ctx.weight_dtype)
        grad_bias = grad_out.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return None, None, grad_weight, grad_bias


def myopic_attention_explicit(q, k, v, k_cut, v_cut, attn_dropout: nn.Module | None = None):
    """Materialised myopic attention: s_ji = scale<q_j, k~_i> (i < j), s_jj = scale<q_j, k_j>;
    o_j = sum_i a_ji v~_i + a_jj (v_j - v~_j). O(T^2) memory, supports attention dropout."""
    T = q.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1))
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = (q @ k_cut.transpose(-2, -1)) * scale
    diag_scores = (q * k).sum(-1) * scale  # live: the only path into k_j
    scores = torch.where(eye, diag_scores.unsqueeze(-1), scores)
    scores = scores.masked_fill(~causal, float("-inf"))
    att = F.softmax(scores, dim=-1)
    if attn_dropout is not None:
        att = attn_dropout(att)
    diag_att = torch.diagonal(att, dim1=-2, dim2=-1).unsqueeze(-1)  # (B, H, T, 1)
    return att @ v_cut + diag_att * (v - v_cut)


def fused_myopic_available(q: torch.Tensor) -> bool:
    """Whether q's device has a causal attention kernel that also returns the log-sum-exp."""
    if q.device.type == "cpu":
        return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    if q.device.type == "cuda":
        try:
            from torch.nn.attention.flex_attention import AuxRequest  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def _attention_with_lse(q, k, v, block_mask: Any = None):
    """Causal attention output y0 and its log-sum-exp (natural log, no gradient): the CPU flash
    kernel, or FlexAttention with a causal block_mask (always on CUDA)."""
    if block_mask is None and q.device.type != "cuda":
        y0, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
        return y0, lse
    from torch.nn.attention.flex_attention import AuxRequest

    if block_mask is None:
        block_mask = cached_flex_mask(q.size(-2), 0, 1, q.device)
    y0, aux = flex_attention(q, k, v, block_mask=block_mask, return_aux=AuxRequest(lse=True))
    return y0, aux.lse


def myopic_attention_fused(q, k, v, k_cut, v_cut, block_mask: Any = None):
    """Myopic attention from one fused causal attention call over (q, k~, v~) plus its lse.

    y0 = attn(q, k~, v~) already has the right value and the right gradient into q and into
    whatever k~, v~ carry (nothing for strict; W_K, W_V for paper). What it lacks is the live
    diagonal: o_j depends on v_j with weight a_jj and on k_j through s_jj, with
    d o_j / d s_jj = a_jj (v_j - o_j). Two zero-valued terms add exactly those gradients:
        y = y0 + a (v - v~) + a (sg v - sg y0) * scale <sg q, k - k~>
    where a = exp(s_jj - lse_j) carries no gradient. Using (k - k~), (v - v~) instead of
    (k - sg k) makes the same formula right for `paper`, whose y0 already sent the diagonal's
    share of the W_K, W_V gradient through k~, v~ (METHODS §3 gives the strict special case).
    The zero-valued terms are applied by _DiagonalGradient's backward, so the forward pass
    costs exactly one attention call.
    """
    scale = 1.0 / math.sqrt(q.size(-1))
    y0, lse = _attention_with_lse(q, k_cut, v_cut, block_mask)
    return _DiagonalGradient.apply(y0, q.detach(), k, v, k_cut, v_cut, lse, scale)


class _DiagonalGradient(torch.autograd.Function):
    """Identity on y0 whose backward adds the gradient of the two zero-valued terms of
    myopic_attention_fused: for upstream g,
        dv += a g,  dk += a scale <g, v - y0> q,  and the negatives into v~, k~."""

    @staticmethod
    def forward(ctx, y0, q, k, v, k_cut, v_cut, lse, scale):
        ctx.save_for_backward(y0.detach(), q, k.detach(), v.detach(), lse)
        ctx.scale = scale
        return y0.view_as(y0)

    @staticmethod
    def backward(ctx, g):
        y0, q, k, v, lse = ctx.saved_tensors
        acc = torch.promote_types(q.dtype, torch.float32)  # a_jj in >= fp32 under bf16 autocast
        diag_scores = (q.to(acc) * k.to(acc)).sum(-1) * ctx.scale
        a = torch.exp(diag_scores - lse.to(acc)).unsqueeze(-1)  # (B, H, T, 1)
        dv = (a * g.to(acc)).to(v.dtype)
        coeff = a * ctx.scale * (g.to(acc) * (v.to(acc) - y0.to(acc))).sum(-1, keepdim=True)
        dk = (coeff * q.to(acc)).to(k.dtype)
        return g, None, dk, dv, -dk, -dv, None, None
