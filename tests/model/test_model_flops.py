"""flops_per_token (METHODS §6) against counts made independently of the model code."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rtlab.model import GPT, GPTConfig
from tests.helpers.gpt import tiny_model


def hand_count_params(V: int, C: int, L: int, n: int, bias: bool) -> int:
    """Non-position-embedding parameters from the architecture, by hand."""
    b = 1 if bias else 0
    ln = C + C * b  # weight, optional bias
    attention = 3 * C * C + 3 * C * b + C * C + C * b  # c_attn (q, k, v) and c_proj
    mlp = 4 * C * C + 4 * C * b + 4 * C * C + C * b  # c_fc and c_proj
    per_layer = 2 * ln + attention + mlp
    return V * C + L * per_layer + ln + n * C  # tied wte/lm_head, ln_f, slot vectors


@pytest.mark.parametrize("n_tokens,bias", [(0, True), (0, False), (1, True), (3, True), (8, False)])
def test_flops_per_token_follows_the_methods_formula(n_tokens, bias):
    V, C, L, T = 101, 48, 3, 20
    config = GPTConfig(
        vocab_size=V,
        block_size=T,
        n_layer=L,
        n_head=4,
        n_embd=C,
        bias=bias,
        reasoning={"n_tokens": n_tokens},
    )
    model = GPT(config)
    N = hand_count_params(V, C, L, n_tokens, bias)
    assert model.num_params() == N
    n1 = n_tokens + 1
    # METHODS §6 less the LM head at the n reasoning slots, which the model never computes
    assert model.flops_per_token() == n1 * (6 * N + 12 * L * C * n1 * T) - n_tokens * 6 * V * C


def test_flops_per_token_counts_the_head_at_every_slot_when_reasoning_slots_take_the_loss():
    V, C, L, T, n = 101, 48, 3, 20, 2
    fields = dict(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C)
    skipped = GPT(GPTConfig(**fields, reasoning={"n_tokens": n}))
    computed = GPT(GPTConfig(**fields, reasoning={"n_tokens": n, "loss_on_reasoning": True}))
    assert computed.flops_per_token() - skipped.flops_per_token() == n * 6 * V * C


@pytest.mark.parametrize("n_tokens", [0, 2])
def test_flops_per_token_matches_a_flop_counter_on_a_real_training_step(n_tokens):
    """FLOPs counted by torch's FlopCounterMode over forward + backward (math attention, so the
    attention matmuls are visible to it). The formula also counts what the counter cannot see
    (norms, biases, slot vectors): accounted for exactly below. The LM head runs at main slots
    only, and the formula counts it there only."""
    model = tiny_model(n_embd=64, n_head=4, block_size=16, reasoning={"n_tokens": n_tokens})
    model.train()
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    counted_per_token = counter.get_total_flops() / x.numel()
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    non_matmul_params = model.num_params() - matmul_params
    n1 = n_tokens + 1
    expected = model.flops_per_token() - n1 * 6 * non_matmul_params
    assert counted_per_token == pytest.approx(expected, rel=0.01)
