"""Which slots a query may attend with reasoning tokens (METHODS §2), as the two attention kernels
want it: a dense boolean (P, P) mask for SDPA, or a FlexAttention BlockMask.

One rule, `reasoning_visibility`, builds both. Block masks are cached per (slots, n_tokens, delay,
device) for the whole process; the dense mask is cached per model and device
(GPT._dense_mask_cache, filled by DenseMaskSDPA in attention.py), built once for block_size
timesteps and sliced to each length.
"""

from __future__ import annotations

from typing import Any

import torch


def reasoning_visibility(q_slot: torch.Tensor, k_slot: torch.Tensor, n_tokens: int, delay: int):
    """True where query slot index q_slot may attend key slot index k_slot (broadcasting ints).

    Slot p = t*(n+1) + s. Main keys (s=0) are visible to every later slot; a reasoning key is
    visible to later slots of its own timestep and to every slot at least `delay` steps later.
    Written with plain tensor ops so the same rule builds the dense mask and the FlexAttention mask.
    """
    n1 = n_tokens + 1
    t_q, t_k, s_k = q_slot // n1, k_slot // n1, k_slot % n1
    visible = (s_k == 0) | (t_k == t_q) | (t_k <= t_q - delay)
    return visible & (k_slot <= q_slot)


def dense_reasoning_mask(T: int, n_tokens: int, delay: int, device: torch.device) -> torch.Tensor:
    """The (P, P) boolean mask over the P = T*(n+1) slots of T timesteps; True = may attend."""
    P = T * (n_tokens + 1)
    p = torch.arange(P, device=device)
    return reasoning_visibility(p[:, None], p[None, :], n_tokens, delay)


def flex_block_mask(P: int, n_tokens: int, delay: int, device: torch.device):
    """FlexAttention BlockMask over P slots (causal when n_tokens == 0)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if n_tokens == 0:

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            return reasoning_visibility(q_idx, kv_idx, n_tokens, delay)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=P, KV_LEN=P, device=device)


_flex_mask_cache: dict[tuple, Any] = {}


# Building a BlockMask is Python-level work that dynamo need not trace: a compiled model breaks
# its graph here, once per forward (the model fetches the mask once for all layers).
@torch.compiler.disable
def cached_flex_mask(P: int, n_tokens: int, delay: int, device: torch.device):
    """flex_block_mask, built once per (P, n_tokens, delay, device) for the whole process."""
    key = (P, n_tokens, delay, str(device))
    if key not in _flex_mask_cache:
        _flex_mask_cache[key] = flex_block_mask(P, n_tokens, delay, device)
    return _flex_mask_cache[key]
