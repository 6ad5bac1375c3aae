"""The dense-mask reasoning path against a slow loop implementation written from METHODS §2.

The reference reads the model's weights but re-derives everything else: the slot layout, the
visibility rule (as nested ifs, not the vectorised rule in gpt.py), attention per query slot and
head, and the per-timestep loss.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from tests.helpers.gpt import tiny_batch, tiny_model


def visible(t_q: int, s_q: int, t_k: int, s_k: int, n: int, d: int) -> bool:
    if t_k * (n + 1) + s_k > t_q * (n + 1) + s_q:
        return False  # causal order of slots
    if s_k == 0:
        return t_k <= t_q
    return t_k == t_q or t_k <= t_q - d


def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    out = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight
    return out + ln.bias if ln.bias is not None else out


def reference_logits(model, x):
    """Main-slot logits (B, T, V), one slot and one head at a time."""
    cfg = model.config
    n, d = cfg.reasoning.n_tokens, cfg.reasoning.delay
    B, T = x.shape
    C, H = cfg.n_embd, cfg.n_head
    D = C // H
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    logits = torch.zeros(B, T, cfg.vocab_size, dtype=torch.float64)
    for b in range(B):
        layout, h = [], []
        for t in range(T):
            for s in range(n + 1):
                layout.append((t, s))
                if s == 0:
                    h.append(wte[x[b, t]] + wpe[t])
                elif cfg.reasoning.input == "duplicate":
                    h.append(wte[x[b, t]] + wpe[t] + model.slot_emb[s - 1])
                else:
                    h.append(model.slot_emb[s - 1] + wpe[t])
        h = torch.stack(h)  # (P, C)
        for block in model.transformer.h:
            a = layer_norm(h, block.ln_1)
            qkv = a @ block.attn.c_attn.weight.T + block.attn.c_attn.bias
            q, k, v = qkv.split(C, dim=1)
            y = torch.zeros_like(h)
            for p, (t_q, s_q) in enumerate(layout):
                keys = [
                    i for i, (t_k, s_k) in enumerate(layout) if visible(t_q, s_q, t_k, s_k, n, d)
                ]
                for head in range(H):
                    sl = slice(head * D, (head + 1) * D)
                    scores = torch.stack([q[p, sl] @ k[i, sl] for i in keys]) / math.sqrt(D)
                    weights = torch.softmax(scores, dim=0)
                    y[p, sl] = sum(w * v[i, sl] for w, i in zip(weights, keys, strict=True))
            h = h + y @ block.attn.c_proj.weight.T + block.attn.c_proj.bias
            m = layer_norm(h, block.ln_2)
            m = F.gelu(m @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias)
            h = h + m @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias
        h = layer_norm(h, model.transformer.ln_f)
        for p, (t, s) in enumerate(layout):
            if s == 0:
                logits[b, t] = h[p] @ wte.T
    return logits


@pytest.mark.parametrize(
    "n_tokens,delay,input_kind",
    [
        (0, 1, "duplicate"),
        (1, 1, "duplicate"),
        (2, 1, "learned"),
        (2, 2, "duplicate"),
        (3, 3, "duplicate"),
    ],
)
def test_dense_mask_reasoning_path_equals_slow_loop_reference(n_tokens, delay, input_kind):
    model = tiny_model(
        block_size=5, reasoning={"n_tokens": n_tokens, "delay": delay, "input": input_kind}
    )
    with torch.no_grad():  # give biases and norms non-trivial values so they are checked too
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    x, y = tiny_batch(model, T=5)
    logits, loss = model(x, y)
    with torch.no_grad():
        expected = reference_logits(model, x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
    # targets are assigned by timestep: step t's main slot predicts y[:, t]
    expected_loss = F.cross_entropy(expected.flatten(0, 1), y.flatten())
    torch.testing.assert_close(loss, expected_loss, rtol=0, atol=1e-10)
