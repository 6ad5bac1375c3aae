"""The whole rtlab GPT in one file: config, attention (three training modes), MLP, block, GPT.

Read top to bottom like nanoGPT's model.py. What each mode computes is defined in
docs/METHODS.md (§1 baseline, §2 reasoning tokens, §3 myopic training, §6 FLOPs); section numbers
below refer to it.

Attention backends, chosen per forward pass:
- baseline: SDPA with is_causal=True (exactly nanoGPT's path, nothing added);
- reasoning tokens: SDPA with a dense boolean slot mask (CPU) or FlexAttention with a block mask
  (CUDA), each built once per (length, device) and cached;
- myopic: an explicit implementation (materialised scores, supports dropout) and a fused one
  (a kernel that also returns the log-sum-exp, plus a cheap diagonal correction).
"""

from __future__ import annotations

import inspect
import math
import types
import warnings
from typing import Any, Literal

import torch
import torch.nn as nn
from torch.nn import functional as F

from rtlab.config import GPTConfig

# ----------------------------------------------------------------------------------------------
# Config: rtlab.config holds it (torch-free, shared with the spec); fields as in nanoGPT's GPTConfig
# plus the training modes: reasoning (METHODS §2), myopic (§3), head (§5).

# ----------------------------------------------------------------------------------------------
# Attention masks for reasoning slots (METHODS §2)


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
    P = T * (n_tokens + 1)
    p = torch.arange(P, device=device)
    return reasoning_visibility(p[:, None], p[None, :], n_tokens, delay)


# Dynamo keys its compile cache on a code object, so one compiled flex_attention reused for every
# call signature (shape, mask, grad mode, lse or not) would pile all of them on one cache and,
# past torch._dynamo.config.recompile_limit (8), silently run the slow eager kernel for new ones;
# separate torch.compile wrappers of the same function share that cache. So each signature gets
# its own copy of a small wrapper (a fresh code object, hence its own cache and limit).
_compiled_flex_attention: dict[tuple, Any] = {}


def _flex_call(q, k, v, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, **kwargs)


def _compiled_flex_for(key: tuple):
    compiled = _compiled_flex_attention.get(key)
    if compiled is None:
        code = _flex_call.__code__.replace(co_name=f"_flex_call_{len(_compiled_flex_attention)}")
        wrapper = types.FunctionType(code, _flex_call.__globals__, code.co_name)
        compiled = torch.compile(wrapper, dynamic=False)
        _compiled_flex_attention[key] = compiled
    return compiled


def _flex_attention(q, k, v, **kwargs):
    """FlexAttention. On CUDA outside torch.compile it is compiled here, once per call signature
    (its eager form is a slow reference); on CPU it runs eagerly, which only tests use
    (attention_backend='flex')."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, **kwargs)
    if q.device.type != "cuda":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            return flex_attention(q, k, v, **kwargs)
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


# ----------------------------------------------------------------------------------------------
# Modules


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no bias=False before 2.1; kept as nanoGPT)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.myopic = config.myopic
        self.myopic_impl = config.myopic_impl
        # "auto": FlexAttention on CUDA, SDPA / the CPU flash kernel elsewhere. Tests force
        # "flex" or "dense" to compare backends; it never changes the function computed.
        self.attention_backend: Literal["auto", "dense", "flex"] = "auto"

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """mask: None (plain causal), a dense bool (P, P) tensor, or a FlexAttention BlockMask."""
        B, T, C = x.size()
        qkv = self.c_attn(x)
        q, k, v = qkv.split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0

        if self.myopic != "off" and torch.is_grad_enabled():
            y = self._myopic(x, qkv, q, k, v, dropout_p, mask)
        elif mask is None or self.myopic != "off":
            # (without autograd, myopic attention is ordinary causal attention: METHODS §3)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        else:  # FlexAttention BlockMask (CUDA); no attention dropout in this kernel
            y = _flex_attention(q, k, v, block_mask=mask)

        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    # -- myopic training (METHODS §3) ------------------------------------------------------------

    def _cut_kv(self, x: torch.Tensor, qkv: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k~, v~: the keys/values past positions are read through, with their gradient cut.

        strict: sg(k), sg(v). paper: W·sg(h) + b, whose value is k's (so myopic logits equal the
        baseline's bit for bit) and whose gradient reaches only W_K, W_V and their biases.
        """
        if self.myopic == "strict":
            return k.detach(), v.detach()
        B, T, C = x.size()
        bias = self.c_attn.bias[C:] if self.c_attn.bias is not None else None
        kv = _KeyValueWeightPath.apply(
            qkv[..., C:].detach(), x.detach(), self.c_attn.weight[C:], bias
        )
        k_cut, v_cut = kv.split(C, dim=2)
        k_cut = k_cut.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v_cut = v_cut.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return k_cut, v_cut

    def _myopic(self, x, qkv, q, k, v, dropout_p: float, mask: Any) -> torch.Tensor:
        """mask: None, or the causal BlockMask whose FlexAttention call yields the lse (CUDA)."""
        k_cut, v_cut = self._cut_kv(x, qkv, k, v)
        impl = self.myopic_impl
        if impl == "auto":
            impl = "fused" if dropout_p == 0.0 and fused_myopic_available(q) else "explicit"
        if impl == "fused":
            if dropout_p > 0:
                raise ValueError("myopic_impl: 'fused' needs dropout 0")
            return myopic_attention_fused(q, k, v, k_cut, v_cut, block_mask=mask)
        return myopic_attention_explicit(q, k, v, k_cut, v_cut, self.attn_dropout)


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
        block_mask = _cached_flex_mask(q.size(-2), 0, 1, q.device)
    y0, aux = _flex_attention(q, k, v, block_mask=block_mask, return_aux=AuxRequest(lse=True))
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


_flex_mask_cache: dict[tuple, Any] = {}


@torch.compiler.disable
def _cached_flex_mask(P: int, n_tokens: int, delay: int, device: torch.device):
    key = (P, n_tokens, delay, str(device))
    if key not in _flex_mask_cache:
        _flex_mask_cache[key] = flex_block_mask(P, n_tokens, delay, device)
    return _flex_mask_cache[key]


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        C = config.n_embd
        n = config.reasoning.n_tokens
        modules: dict[str, nn.Module] = dict(
            wpe=nn.Embedding(config.block_size, C),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(C, bias=config.bias),
        )
        if config.head == "lm":
            modules["wte"] = nn.Embedding(config.vocab_size, C)
        else:
            modules["wte"] = nn.Linear(config.n_features, C, bias=config.bias)  # linear input
        self.transformer = nn.ModuleDict(modules)
        if config.head == "lm":
            self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
            # Weight tying: the same matrix reads tokens in and scores them out (fewer
            # parameters, and the usual nanoGPT/GPT-2 setup).
            self.transformer.wte.weight = self.lm_head.weight
        else:
            self.lm_head = nn.Linear(C, 1, bias=True)  # regression: one scalar per position
        # Reasoning slot s>0 gets e_s (duplicate input) or r_s (learned input): one row per slot.
        self.slot_emb = nn.Parameter(torch.zeros(n, C)) if n > 0 else None

        self.apply(self._init_weights)
        # Residual projections scaled by 1/sqrt(2L): each block adds two of them to the stream.
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if self.slot_emb is not None:
            torch.nn.init.normal_(self.slot_emb, mean=0.0, std=0.02)
        self._dense_mask_cache: dict[tuple, torch.Tensor] = {}
        self.attention_backend: Literal["auto", "dense", "flex"] = "auto"

    def set_attention_backend(self, backend: Literal["auto", "dense", "flex"]) -> GPT:
        """Force the attention kernels: 'dense' = SDPA (+ dense mask) and the CPU flash kernel
        for fused myopic; 'flex' = FlexAttention everywhere (eager on CPU: for tests only);
        'auto' (default) = flex on CUDA, dense elsewhere. The function computed is the same."""
        if backend not in ("auto", "dense", "flex"):
            raise ValueError(f"attention backend must be auto, dense or flex, got {backend!r}")
        self.attention_backend = backend
        for block in self.transformer.h:
            block.attn.attention_backend = backend
        return self

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non_embedding drops the position embedding (the token embedding is
        tied to the LM head, so it stays counted: it does real matmul work there)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    # -- inputs ----------------------------------------------------------------------------------

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Slot-level input embeddings E (B, P, C) fed to the first block, P = (n+1)*T."""
        cfg = self.config
        T = idx.size(1)
        if T > cfg.block_size:
            raise ValueError(
                f"sequence length {T} exceeds block_size {cfg.block_size} (block_size counts "
                "timesteps)"
            )
        if cfg.head == "regression":
            if idx.dim() != 3 or idx.size(-1) != cfg.n_features:
                raise ValueError(
                    f"regression input must be (B, T, n_features={cfg.n_features}), "
                    f"got {tuple(idx.shape)}"
                )
            tok = self.transformer.wte(idx.to(self.transformer.wte.weight.dtype))
        else:
            tok = self.transformer.wte(idx)
        pos = self.transformer.wpe(torch.arange(T, dtype=torch.long, device=idx.device))
        main = tok + pos  # (B, T, C)
        n = cfg.reasoning.n_tokens
        if n == 0:
            return main
        if cfg.reasoning.input == "duplicate":
            reasoning = main.unsqueeze(2) + self.slot_emb  # (B, T, n, C)
        else:
            reasoning = (
                (pos.unsqueeze(1) + self.slot_emb).unsqueeze(0).expand(main.size(0), -1, -1, -1)
            )
        return torch.cat([main.unsqueeze(2), reasoning], dim=2).flatten(1, 2)

    def _attention_mask(self, P: int, device: torch.device):
        """None for plain causal; otherwise a cached BlockMask (CUDA, unless attention dropout is
        on: FlexAttention has none) or dense bool mask (SDPA). Myopic: the causal BlockMask on
        CUDA (for the fused kernel's lse), else None."""
        r = self.config.reasoning
        backend = self.attention_backend
        if self.config.myopic != "off":
            # fused myopic reads FlexAttention's lse where the CPU flash kernel is unavailable;
            # fetched here, once per forward, so a compiled model breaks its graph once at most
            # (without autograd, myopic is plain causal attention and needs no mask)
            if torch.is_grad_enabled() and (backend == "flex" or device.type == "cuda"):
                return _cached_flex_mask(P, 0, 1, device)
            return None
        if r.n_tokens == 0:
            return None
        attention_dropout = self.training and self.config.dropout > 0
        if backend == "flex" and attention_dropout:
            raise ValueError("attention backend 'flex' has no attention dropout; set dropout 0")
        if backend == "flex" or (
            backend == "auto" and device.type == "cuda" and not attention_dropout
        ):
            return _cached_flex_mask(P, r.n_tokens, r.delay, device)
        # One mask for the longest context, sliced: visibility depends only on slot indices,
        # so its [:P, :P] corner is exactly the mask for P slots (generation's growing lengths
        # share it instead of caching one mask per length).
        key = str(device)
        mask = self._dense_mask_cache.get(key)
        if mask is None:
            mask = dense_reasoning_mask(self.config.block_size, r.n_tokens, r.delay, device)
            self._dense_mask_cache[key] = mask
        if P > mask.size(0):
            raise ValueError(
                f"{P} slots exceed block_size * (n_tokens+1) = {mask.size(0)} (block_size counts "
                "timesteps)"
            )
        return mask[:P, :P]

    # -- forward ---------------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor | None,
        targets: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (logits, loss). logits are for main slots only: (B, T, V) for the LM head,
        (B, T) for the regression head. Targets are per timestep (B, T), never slot-shifted."""
        cfg = self.config
        n1 = cfg.reasoning.n_tokens + 1
        x = self.embed(idx) if inputs_embeds is None else inputs_embeds
        B, P, C = x.size()
        if P % n1 != 0:
            raise ValueError(f"inputs_embeds length {P} is not a multiple of n_tokens+1={n1}")
        T = P // n1
        mask = self._attention_mask(P, x.device)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask)
        x = self.transformer.ln_f(x)

        if n1 > 1:
            slots = x.view(B, T, n1, C)
            main = slots[:, :, 0]
        else:
            main = x
        out = self.lm_head(main)
        if cfg.head == "regression":
            out = out.squeeze(-1)
        if targets is None:
            return out, None

        if cfg.head == "regression":
            loss = F.huber_loss(out, targets.to(out.dtype), delta=cfg.huber_delta)
            if n1 > 1 and cfg.reasoning.loss_on_reasoning:
                reasoning_out = self.lm_head(slots[:, :, 1:]).squeeze(-1)  # (B, T, n)
                all_out = torch.cat([out.unsqueeze(-1), reasoning_out], dim=-1)
                loss = F.huber_loss(
                    all_out,
                    targets.to(out.dtype).unsqueeze(-1).expand_as(all_out),
                    delta=cfg.huber_delta,
                )
            return out, loss

        if n1 > 1 and cfg.reasoning.loss_on_reasoning:
            # lucidrains variant: every slot of step t is trained on x_{t+1}; mean over all slots.
            all_logits = self.lm_head(x)  # (B, P, V), slot order matches timestep order
            slot_targets = targets.unsqueeze(-1).expand(B, T, n1).reshape(B, P)
            loss = F.cross_entropy(
                all_logits.view(-1, all_logits.size(-1)),
                slot_targets.reshape(-1),
                ignore_index=-1,
            )
        else:
            loss = F.cross_entropy(out.view(-1, out.size(-1)), targets.reshape(-1), ignore_index=-1)
        return out, loss

    # -- compute ---------------------------------------------------------------------------------

    def flops_per_token(self) -> float:
        """Training FLOPs per original token actually executed (METHODS §6, counting slots):
        each of its n+1 slots costs 6N + 12*L*C*S with S = (n+1)*block_size the attended length
        in slots, less the LM head (6*V*C) at the n reasoning slots, which the model never
        computes unless loss_on_reasoning is on. METHODS §6's N includes the head at every
        slot; rtlab counts the head at main slots only, the FLOPs really spent."""
        cfg = self.config
        n1 = cfg.slots_per_token
        N = self.num_params(non_embedding=True)
        S = n1 * cfg.block_size
        flops = n1 * (6 * N + 12 * cfg.n_layer * cfg.n_embd * S)
        if cfg.head == "lm" and not cfg.reasoning.loss_on_reasoning:
            flops -= (n1 - 1) * 6 * cfg.vocab_size * cfg.n_embd
        return float(flops)

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
    ) -> torch.optim.AdamW:
        """AdamW (fused where the device has the kernel) with weight decay on matrices only
        (not on biases, norms or slot vectors)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2 and p is not self.slot_emb]
        no_decay = [p for p in params if not (p.dim() >= 2 and p is not self.slot_emb)]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # The fused kernel (one op for all tensors) exists on CUDA and, since torch 2.4, on CPU,
        # where it makes a small model's training step ~10% faster than the foreach default.
        fused = (
            device_type in ("cuda", "cpu")
            and "fused" in inspect.signature(torch.optim.AdamW).parameters
        )
        extra = {"fused": True} if fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    # -- generation ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        """Sample max_new_tokens tokens after idx (B, t). Each step recomputes all slots of the
        context (so a sampled token's reasoning slots are appended before the next prediction);
        once the context fills block_size it slides, as in nanoGPT."""
        cfg = self.config
        if cfg.head != "lm":
            raise ValueError("generate needs head: 'lm' (the regression head has no tokens)")
        if idx.size(1) > cfg.block_size:
            raise ValueError(
                f"generate: prompt length {idx.size(1)} exceeds block_size {cfg.block_size}"
            )
        if temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0, got {temperature}")
        # The length changes every step: dense masks, not a FlexAttention kernel per length.
        backend = self.attention_backend
        self.set_attention_backend("dense" if backend == "auto" else backend)
        try:
            for _ in range(max_new_tokens):
                idx_cond = idx[:, -cfg.block_size :]
                logits, _ = self(idx_cond)
                logits = logits[:, -1, :].float() / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1)
                idx = torch.cat((idx, idx_next), dim=1)
        finally:
            self.set_attention_backend(backend)
        return idx
