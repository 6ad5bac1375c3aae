"""The rtlab GPT: layer norm, attention, MLP, blocks and GPT, read top to bottom like nanoGPT's
model.py (the config, GPTConfig, is rtlab.config's).

What each training mode computes is defined in docs/METHODS.md (§1 baseline, §2 reasoning tokens,
§3 myopic training, §6 FLOPs); section numbers below refer to it. The rest of the model is in
modules beside this one:
- attention.py: the attention backends (causal SDPA, dense-mask SDPA, FlexAttention, and the
  myopic layers' mask), one per model, chosen at construction or by `set_attention_backend`;
- masks.py: which slots may attend which with reasoning tokens (dense mask and BlockMask);
- linear.py: the blocks' linear layers, nn.Linear whose CPU float32 products take oneDNN;
- myopic.py: myopic attention's autograd functions, explicit and fused, with their math.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from rtlab.config import GPTConfig
from rtlab.model.attention import Attention, AutoSlotAttention, Backend, make_attention
from rtlab.model.linear import Linear
from rtlab.model.masks import dense_reasoning_mask, flex_block_mask
from rtlab.model.myopic import (
    fused_myopic_available,
    myopic_attention_explicit,
    myopic_attention_fused,
    paper_key_values,
)

# what tests and other modules import from here (some now live beside this file)
__all__ = [
    "GPT",
    "GPTConfig",
    "Block",
    "CausalSelfAttention",
    "LayerNorm",
    "MLP",
    "dense_reasoning_mask",
    "flex_block_mask",
    "myopic_attention_explicit",
    "myopic_attention_fused",
]

# ----------------------------------------------------------------------------------------------
# Config: rtlab.config holds it (torch-free, shared with the spec); fields as in nanoGPT's GPTConfig
# plus the training modes: reasoning (METHODS §2), myopic (§3), head (§5).


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
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.myopic = config.myopic
        self.myopic_impl = config.myopic_impl
        # The kernel for this mode (attention.py); a GPT replaces it with the one it shares
        # across its layers, whose mask it builds once per forward pass.
        self.attend: Attention = make_attention(config)

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        """mask: what the attention backend built for this length (attention.py)."""
        B, T, C = x.size()
        qkv = self.c_attn(x)
        q, k, v = qkv.split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        if self.myopic != "off" and torch.is_grad_enabled():
            y = self._myopic(x, qkv, q, k, v, dropout_p, mask)
        else:
            y = self.attend(q, k, v, mask, dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    # -- myopic training (METHODS §3; the math is in myopic.py) ----------------------------------

    def _cut_kv(self, x: torch.Tensor, qkv: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k~, v~: the keys/values past positions are read through, with their gradient cut.

        strict: sg(k), sg(v). paper: W·sg(h) + b, whose value is k's (so myopic logits equal the
        baseline's bit for bit) and whose gradient reaches only W_K, W_V and their biases.
        """
        if self.myopic == "strict":
            return k.detach(), v.detach()
        B, T, C = x.size()
        k_cut, v_cut = paper_key_values(x, qkv, self.c_attn).split(C, dim=2)
        k_cut = k_cut.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v_cut = v_cut.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        return k_cut, v_cut

    def _myopic(self, x, qkv, q, k, v, dropout_p: float, mask) -> torch.Tensor:
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


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
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
        # The dense reasoning mask, per device; kept here so it outlives backend swaps.
        self._dense_mask_cache: dict[str, torch.Tensor] = {}
        self.set_attention_backend("auto")

    def set_attention_backend(self, backend: Backend) -> GPT:
        """Force the attention kernels: 'dense' = SDPA (+ dense mask) and the CPU flash kernel
        for fused myopic; 'flex' = FlexAttention everywhere (eager on CPU: for tests only);
        'auto' (default) = causal SDPA where reasoning slots are causal (delay 1), else flex on
        CUDA and dense elsewhere. The function computed is the same. One backend
        (attention.py) serves every layer."""
        self.attention = make_attention(self.config, backend, self._dense_mask_cache)
        self.attention_backend = backend
        for block in self.transformer.h:
            block.attn.attend = self.attention
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
        """What the attention backend needs for P slots: built once per forward pass, shared by
        every layer (None, a dense boolean mask or a FlexAttention BlockMask; attention.py)."""
        return self.attention.mask(P, device, self.training)

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
        if P > cfg.block_size * n1:
            raise ValueError(
                f"{P} slots exceed block_size * (n_tokens+1) = {cfg.block_size * n1} (block_size "
                "counts timesteps)"
            )
        T = P // n1
        mask = self._attention_mask(P, x.device)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask)
        x = self.transformer.ln_f(x)

        main = x.view(B, T, n1, C)[:, :, 0] if n1 > 1 else x
        out = self.lm_head(main)
        if cfg.head == "regression":
            out = out.squeeze(-1)
        loss = None if targets is None else self._loss(x, out, targets)
        return out, loss

    def _loss(self, x: torch.Tensor, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss at main slots (METHODS §2), or at every slot with loss_on_reasoning; x is the
        final (B, P, C) slot stream, out the main slots' head output."""
        cfg = self.config
        n1 = cfg.reasoning.n_tokens + 1
        B, P, C = x.size()
        T = P // n1
        on_every_slot = n1 > 1 and cfg.reasoning.loss_on_reasoning
        if cfg.head == "regression":
            if not on_every_slot:
                return F.huber_loss(out, targets.to(out.dtype), delta=cfg.huber_delta)
            reasoning_out = self.lm_head(x.view(B, T, n1, C)[:, :, 1:]).squeeze(-1)  # (B, T, n)
            all_out = torch.cat([out.unsqueeze(-1), reasoning_out], dim=-1)
            all_targets = targets.to(out.dtype).unsqueeze(-1).expand_as(all_out)
            return F.huber_loss(all_out, all_targets, delta=cfg.huber_delta)
        if on_every_slot:
            # lucidrains variant: every slot of step t is trained on x_{t+1}; mean over all slots.
            all_logits = self.lm_head(x)  # (B, P, V), slot order matches timestep order
            slot_targets = targets.unsqueeze(-1).expand(B, T, n1).reshape(B, P)
            return F.cross_entropy(
                all_logits.view(-1, all_logits.size(-1)), slot_targets.reshape(-1), ignore_index=-1
            )
        return F.cross_entropy(out.view(-1, out.size(-1)), targets.reshape(-1), ignore_index=-1)

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
        # The length changes every step: dense masks, not a FlexAttention kernel per length
        # (only a backend that may pick flex needs the switch).
        backend = self.attention_backend
        may_use_flex = backend == "auto" and isinstance(self.attention, AutoSlotAttention)
        self.set_attention_backend("dense" if may_use_flex else backend)
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
