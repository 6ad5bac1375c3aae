"""The fast paths of a CPU training step against the paths they replace (METHODS §4.6: every
backend computes the same function).

- reasoning tokens with delay 1: unmasked causal SDPA instead of the dense slot mask;
- the blocks' linear layers on oneDNN (rtlab.model.linear) instead of F.linear.
"""

from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from rtlab.model import GPT, GPTConfig, linear
from rtlab.model.attention import SDPA, DenseMaskSDPA, make_attention
from rtlab.model.masks import dense_reasoning_mask
from tests.helpers.gpt import tiny_batch, tiny_model

CPU = torch.device("cpu")

onednn = pytest.mark.skipif(
    not linear.onednn_linear_available(), reason="this PyTorch build or CPU has no oneDNN linear"
)


@pytest.fixture
def restore_cpu_matmul() -> Iterator[None]:
    before = linear.cpu_matmul()
    yield
    linear.set_cpu_matmul(before)


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


# -- linear layers on oneDNN ---------------------------------------------------------------------


@onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_equals_f_linear_with_every_gradient(bias, restore_cpu_matmul):
    linear.set_cpu_matmul("onednn")
    torch.manual_seed(0)
    layer = linear.Linear(48, 96, bias=bias)
    x = torch.randn(4, 160, 48, requires_grad=True)  # 640 rows >= MIN_ROWS
    assert linear.uses_onednn(x, layer.weight)
    out = layer(x)
    assert "OneDNN" in type(out.grad_fn).__name__  # the fast path really ran
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True) if bias else None
    out_ref = F.linear(x_ref, w_ref, b_ref)
    out_ref.backward(grad_out)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=1e-5, atol=1e-5)


@onednn
def test_onednn_linear_is_deterministic(restore_cpu_matmul):
    linear.set_cpu_matmul("onednn")
    torch.manual_seed(0)
    layer = linear.Linear(64, 192)
    x = torch.randn(1024, 64, requires_grad=True)
    results = []
    for _ in range(2):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out = layer(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for first, second in zip(*results, strict=True):
        assert torch.equal(first, second)


def test_linear_falls_back_to_f_linear_where_onednn_does_not_apply(restore_cpu_matmul):
    linear.set_cpu_matmul("onednn")
    layer = linear.Linear(16, 16)
    big = torch.randn(linear.MIN_ROWS, 16)
    assert not linear.uses_onednn(big.double(), layer.weight.double())  # float64 (tests, audit)
    assert not linear.uses_onednn(big[: linear.MIN_ROWS - 1], layer.weight)  # too few rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear.uses_onednn(big, layer.weight)
        assert layer(big).dtype == torch.bfloat16  # autocast still applies, through F.linear
    linear.set_cpu_matmul("mkl")
    assert linear.cpu_matmul() == "mkl" and not linear.uses_onednn(big, layer.weight)
    torch.testing.assert_close(layer(big), F.linear(big, layer.weight, layer.bias), rtol=0, atol=0)


def test_set_cpu_matmul_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="onednn"):
        linear.set_cpu_matmul("blas")  # type: ignore[arg-type]


MODES = [{}, {"reasoning": {"n_tokens": 2}}, {"myopic": "strict"}, {"myopic": "paper"}]


@onednn
@pytest.mark.parametrize("mode", MODES, ids=str)
def test_model_step_on_onednn_matches_f_linear_in_float32(mode, restore_cpu_matmul):
    """A whole float32 training step (loss and every gradient) with the blocks' linears on
    oneDNN against the same step on F.linear."""
    fields = dict(vocab_size=37, block_size=64, n_layer=2, n_head=2, n_embd=32, **mode)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict(fields)).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 37, (8, 64), generator=g)  # 512 rows (and more with slots)
    y = torch.randint(0, 37, (8, 64), generator=g)
    results = {}
    for kind in ("mkl", "onednn"):
        linear.set_cpu_matmul(kind)
        model.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        results[kind] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(results["onednn"][0], results["mkl"][0], rtol=1e-5, atol=1e-6)
    for name, grad in results["mkl"][1].items():
        torch.testing.assert_close(results["onednn"][1][name], grad, rtol=1e-4, atol=1e-6,
                                   msg=name)
