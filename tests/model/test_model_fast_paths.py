"""The fast paths of a CPU training step against the paths they replace (METHODS §4.6: every
backend computes the same function).

- reasoning tokens with delay 1: unmasked causal SDPA instead of the dense slot mask.
"""

import pytest
import torch

from rtlab.config import GPTConfig
from rtlab.model.attention import SDPA, DenseMaskSDPA, make_attention
from rtlab.model.masks import dense_reasoning_mask
from tests.helpers.gpt import tiny_batch, tiny_model

CPU = torch.device("cpu")

# -- delay 1: the slot mask is causal ------------------------------------------------------------


@pytest.mark.parametrize("n_tokens", [1, 2, 3, 8])
def test_slot_mask_with_delay_1_is_exactly_causal_over_slots(n_tokens):
    for T in (1, 2, 7, 16):
        P = T * (n_tokens + 1)
        causal = torch.ones(P, P, dtype=torch.bool).tril()
        assert torch.equal(dense_reasoning_mask(T, n_tokens, 1, CPU), causal)


@pytest.mark.parametrize("n_tokens", [1, 3])
def test_slot_mask_with_a_longer_delay_is_not_causal_and_keeps_its_mask(n_tokens):
    T, P = 6, 6 * (n_tokens + 1)
    assert not torch.equal(dense_reasoning_mask(T, n_tokens, 2, CPU),
                           torch.ones(P, P, dtype=torch.bool).tril())
    config = GPTConfig(block_size=T, n_layer=1, n_head=2, n_embd=8,
                       reasoning={"n_tokens": n_tokens, "delay": 2})
    assert make_attention(config, "auto").mask(P, CPU, True) is not None


def test_auto_backend_with_delay_1_runs_unmasked_causal_sdpa():
    config = GPTConfig(block_size=6, n_layer=1, n_head=2, n_embd=8, reasoning={"n_tokens": 2})
    auto = make_attention(config, "auto")
    assert type(auto) is SDPA and auto.mask(18, CPU, True) is None
    assert isinstance(make_attention(config, "dense"), DenseMaskSDPA)


@pytest.mark.parametrize(
    "reasoning",
    [
        {"n_tokens": 1},
        {"n_tokens": 2, "input": "learned"},
        {"n_tokens": 3, "loss_on_reasoning": True},
    ],
    ids=str,
)
def test_delay_1_causal_attention_equals_the_dense_mask_path_in_float64(reasoning):
    """Logits, loss and every parameter gradient of the causal path and the dense-mask path."""
    fast = tiny_model(seed=3, reasoning={**reasoning, "delay": 1}).train()
    dense = tiny_model(seed=3, reasoning={**reasoning, "delay": 1}).train()
    dense.set_attention_backend("dense")
    x, y = tiny_batch(fast, B=3)
    logits_fast, loss_fast = fast(x, y)
    logits_dense, loss_dense = dense(x, y)
    loss_fast.backward()
    loss_dense.backward()
    torch.testing.assert_close(logits_fast, logits_dense, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss_fast, loss_dense, rtol=0, atol=1e-12)
    for (name, p_fast), p_dense in zip(fast.named_parameters(), dense.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_dense.grad, rtol=0, atol=1e-12, msg=name)


def test_slots_beyond_the_block_are_refused_without_a_mask_to_catch_them():
    model = tiny_model(block_size=4, reasoning={"n_tokens": 1, "delay": 1})
    E = torch.zeros(1, 2 * 5, model.config.n_embd, dtype=torch.float64)
    with pytest.raises(ValueError, match="block_size"):
        model(None, inputs_embeds=E)
