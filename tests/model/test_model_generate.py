"""generate in every mode: greedy samples are what the training-time forward predicts."""

import pytest
import torch

from tests.helpers.gpt import tiny_batch, tiny_model

MODES = [
    {},
    {"reasoning": {"n_tokens": 1, "delay": 1}},
    {"reasoning": {"n_tokens": 3, "delay": 2, "input": "learned"}},
    {"myopic": "strict"},
    {"myopic": "paper", "myopic_impl": "explicit"},
]


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_greedy_generation_matches_full_sequence_forward(mode):
    model = tiny_model(block_size=12, **mode)
    prompt, _ = tiny_batch(model, T=3)
    out = model.generate(prompt, 9, top_k=1)
    assert out.shape == (2, 12) and torch.equal(out[:, :3], prompt)
    # each sampled token must be the argmax at its step when the whole sequence (with all its
    # reasoning slots) is run through the training-time forward
    logits, _ = model(out)
    assert torch.equal(logits[:, 2:-1].argmax(-1), out[:, 3:])


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_sampling_is_reproducible_and_in_vocab_past_block_size(mode):
    model = tiny_model(block_size=6, **mode)
    prompt, _ = tiny_batch(model, T=2)
    torch.manual_seed(0)
    a = model.generate(prompt, 10, temperature=0.8, top_k=5)
    torch.manual_seed(0)
    b = model.generate(prompt, 10, temperature=0.8, top_k=5)
    assert torch.equal(a, b) and a.shape == (2, 12)  # slides past block_size=6
    assert a.min() >= 0 and a.max() < model.config.vocab_size


def test_generate_refuses_the_regression_head():
    model = tiny_model(head="regression")
    with pytest.raises(ValueError, match="head"):
        model.generate(torch.zeros(1, 2, 2, dtype=torch.float64), 1)


def test_generation_keeps_one_dense_mask_whatever_the_context_lengths():
    """Every context length slices one block_size-sized mask; none is cached per length."""
    model = tiny_model(block_size=12, reasoning={"n_tokens": 2, "delay": 2})
    prompt, _ = tiny_batch(model, T=2)
    model.generate(prompt, 20, top_k=1)  # lengths 2..12, then sliding at 12
    assert len(model._dense_mask_cache) == 1
    (mask,) = model._dense_mask_cache.values()
    assert mask.shape == (12 * 3, 12 * 3)


def test_generation_with_delay_1_builds_no_mask():
    """With delay 1 the slot mask is causal: generation, like training, runs unmasked SDPA."""
    model = tiny_model(block_size=12, reasoning={"n_tokens": 2, "delay": 1})
    prompt, _ = tiny_batch(model, T=2)
    model.generate(prompt, 20, top_k=1)
    assert model._dense_mask_cache == {}


def test_sliced_dense_mask_equals_the_mask_built_for_that_length():
    from rtlab.model.gpt import dense_reasoning_mask

    model = tiny_model(block_size=12, reasoning={"n_tokens": 2, "delay": 2})
    for T in (1, 5, 12):
        sliced = model._attention_mask(T * 3, torch.device("cpu"))
        assert torch.equal(sliced, dense_reasoning_mask(T, 2, 2, torch.device("cpu")))


def test_inputs_embeds_longer_than_the_block_are_refused_by_name():
    model = tiny_model(block_size=4, reasoning={"n_tokens": 1, "delay": 1})
    E = torch.zeros(1, 2 * 5, model.config.n_embd, dtype=torch.float64)  # 5 steps > block_size 4
    with pytest.raises(ValueError, match="block_size"):
        model(None, inputs_embeds=E)
