"""audit_config passes on correct models of every mode and catches broken ones."""

import pytest
import torch

from rtlab.model import GPTConfig
from rtlab.model.audit import audit_config, audit_model, tiny_config
from tests.helpers.gpt import tiny_model

MODES = [
    {},
    {"reasoning": {"n_tokens": 1, "delay": 1}},
    {"reasoning": {"n_tokens": 4, "delay": 3, "input": "learned"}},
    {"reasoning": {"n_tokens": 2, "delay": 2, "loss_on_reasoning": True}},
    {"myopic": "strict"},
    {"myopic": "paper", "myopic_impl": "explicit", "dropout": 0.1},
    {"head": "regression", "n_features": 2, "myopic": "paper"},
    {"head": "regression", "n_features": 2, "reasoning": {"n_tokens": 2, "delay": 1}},
]


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_audit_passes_for_every_mode(mode):
    results = audit_config(GPTConfig.from_dict({"n_layer": 12, "n_embd": 768, **mode}))
    assert len(results) >= 2
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_tiny_config_keeps_mode_fields_and_shrinks_shape():
    config = GPTConfig.from_dict(
        {"n_layer": 12, "myopic": "paper", "myopic_impl": "explicit", "dropout": 0.1}
    )
    tiny = tiny_config(config)
    assert (tiny.myopic, tiny.myopic_impl, tiny.dropout) == ("paper", "explicit", 0.0)
    assert tiny.n_layer == 2 and tiny.n_embd == 16


def test_audit_catches_a_reasoning_mask_that_ignores_the_delay():
    model = tiny_model(block_size=6, reasoning={"n_tokens": 2, "delay": 2})
    P = 18
    model._dense_mask_cache["cpu"] = torch.ones(P, P, dtype=torch.bool).tril()
    failed = {r.name for r in audit_model(model) if not r.passed}
    assert {"reasoning_delay", "no_own_loss"} <= failed  # step T-1 now reads step T-2


def test_audit_catches_a_leaky_mask():
    # delay 1 runs unmasked causal attention by default: force the mask path to corrupt it
    model = tiny_model(block_size=6, reasoning={"n_tokens": 1, "delay": 1})
    model.set_attention_backend("dense")
    model._dense_mask_cache["cpu"] = torch.ones(12, 12, dtype=torch.bool)
    failed = {r.name for r in audit_model(model) if not r.passed}
    assert "leak" in failed


def test_audit_catches_myopic_attention_that_is_not_myopic():
    model = tiny_model(block_size=6, myopic="strict")
    for block in model.transformer.h:
        block.attn._cut_kv = lambda x, qkv, k, v: (k, v)  # forget the stop-gradients
    failed = {r.name for r in audit_model(model) if not r.passed}
    assert "myopic_gradient" in failed
