"""Tiny float64 models and batches shared by the model tests."""

import torch

from rtlab.model import GPT, GPTConfig

TINY = dict(vocab_size=29, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    """A float64 GPT of a tiny shape with the given mode fields, in eval mode."""
    fields = {**TINY, **overrides}
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_dict(fields)).double()
    return model.eval()


def tiny_batch(model: GPT, B: int = 2, T: int | None = None, seed: int = 1):
    cfg = model.config
    T = T or cfg.block_size
    g = torch.Generator().manual_seed(seed)
    if cfg.head == "regression":
        x = torch.randn(B, T, cfg.n_features, generator=g, dtype=torch.float64)
        y = torch.randn(B, T, generator=g, dtype=torch.float64)
    else:
        x = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
        y = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    return x, y
