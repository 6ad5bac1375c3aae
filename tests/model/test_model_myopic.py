"""Myopic training (METHODS §3): the fused implementation against the explicit one, and what
separates `strict` from `paper`."""

import pytest
import torch

from rtlab.model.gpt import myopic_attention_explicit, myopic_attention_fused
from tests.helpers.gpt import tiny_batch, tiny_model


def parameter_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("head", ["lm", "regression"])
@pytest.mark.parametrize("myopic", ["strict", "paper"])
def test_fused_and_explicit_myopic_give_the_same_parameter_gradients(myopic, head):
    explicit = tiny_model(seed=2, myopic=myopic, myopic_impl="explicit", head=head)
    fused = tiny_model(seed=2, myopic=myopic, myopic_impl="fused", head=head)
    x, y = tiny_batch(explicit)
    g_explicit, g_fused = parameter_grads(explicit, x, y), parameter_grads(fused, x, y)
    for name, g in g_explicit.items():
        torch.testing.assert_close(g_fused[name], g, rtol=1e-10, atol=1e-13, msg=name)


@pytest.mark.parametrize("myopic", ["strict", "paper"])
def test_fused_and_explicit_attention_agree_on_output_and_qkv_gradients_in_float32(myopic):
    """On raw (q, k, v): strict reads past keys/values detached; paper reads them through a
    parameter path, played here by k~ = k_leaf * 1 with its own leaf, whose gradient (the W_K,
    W_V share) both implementations must also agree on."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 33, 8, generator=g, requires_grad=True) for _ in range(3))
    upstream = torch.randn(2, 3, 33, 8, generator=g)
    weight_path = torch.ones(8, requires_grad=True)  # stands in for paper's W_K, W_V path
    results = []
    for attention in (myopic_attention_explicit, myopic_attention_fused):
        for t in (q, k, v, weight_path):
            t.grad = None
        if myopic == "strict":
            k_cut, v_cut = k.detach(), v.detach()
        else:
            k_cut, v_cut = k.detach() * weight_path, v.detach() * weight_path
        out = attention(q, k, v, k_cut, v_cut)
        (out * upstream).sum().backward()
        grads = [q.grad.clone(), k.grad.clone(), v.grad.clone()]
        if myopic == "paper":
            grads.append(weight_path.grad.clone())
        else:
            assert weight_path.grad is None
        results.append((out.detach(), *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_strict_and_paper_differ_only_in_key_and_value_weight_gradients():
    """`paper` lets W_K, W_V learn from off-diagonal pairs; every other gradient (and every
    activation gradient) is the same as `strict`."""
    strict = tiny_model(seed=4, myopic="strict")
    paper = tiny_model(seed=4, myopic="paper")
    x, y = tiny_batch(strict)
    g_strict, g_paper = parameter_grads(strict, x, y), parameter_grads(paper, x, y)
    C = strict.config.n_embd
    for name, g in g_strict.items():
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            torch.testing.assert_close(g_paper[name][:C], g[:C], rtol=1e-10, atol=1e-13)  # W_Q
            assert (g_paper[name][C:] - g[C:]).abs().max() > 1e-6, f"{name}: K/V rows equal"
        else:
            torch.testing.assert_close(g_paper[name], g, rtol=1e-10, atol=1e-13, msg=name)


def test_paper_key_value_gradient_equals_autograd_through_detached_inputs():
    """Independent construction of `paper` for one layer: k~ = W_K sg(h) computed directly."""
    model = tiny_model(seed=6, myopic="paper", myopic_impl="explicit", n_layer=1)
    attn = model.transformer.h[0].attn
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    upstream = torch.randn(2, 8, 16, generator=g, dtype=torch.float64)
    (attn(h) * upstream).sum().backward()
    grad_model = attn.c_attn.weight.grad.clone()

    attn.zero_grad()
    W, b = attn.c_attn.weight, attn.c_attn.bias
    heads = lambda t: t.view(2, 8, 2, 8).transpose(1, 2)  # noqa: E731
    q, k, v = (heads(t) for t in (h @ W.T + b).split(16, dim=2))
    k_cut, v_cut = (heads(t) for t in (h.detach() @ W[16:].T + b[16:]).split(16, dim=2))
    y = myopic_attention_explicit(q, k, v, k_cut, v_cut)
    y = y.transpose(1, 2).reshape(2, 8, 16)
    (attn.c_proj(y) * upstream).sum().backward()
    torch.testing.assert_close(grad_model, attn.c_attn.weight.grad, rtol=1e-10, atol=1e-13)


def test_auto_uses_explicit_when_attention_dropout_is_on(monkeypatch):
    import rtlab.model.gpt as gpt

    calls = {"explicit": 0, "fused": 0}

    def spy(name, real):
        def counted(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return counted

    real_explicit = gpt.myopic_attention_explicit
    monkeypatch.setattr(gpt, "myopic_attention_explicit", spy("explicit", real_explicit))
    monkeypatch.setattr(gpt, "myopic_attention_fused", spy("fused", gpt.myopic_attention_fused))
    model = tiny_model(myopic="strict", dropout=0.2).train()
    x, y = tiny_batch(model)
    torch.manual_seed(0)
    logits_a, loss = model(x, y)
    loss.backward()
    assert calls == {"explicit": model.config.n_layer, "fused": 0}
    torch.manual_seed(1)
    logits_b, _ = model(x, y)
    assert not torch.equal(logits_a, logits_b)  # dropout is really applied
    # without dropout, auto picks the fused kernel (available on this CPU build)
    calls.update(explicit=0, fused=0)
    tiny_model(myopic="strict", dropout=0.0).train()(x, y)
    assert calls == {"explicit": 0, "fused": model.config.n_layer}


@pytest.mark.slow  # torch.compile: seconds per case
@pytest.mark.parametrize("myopic", ["strict", "paper"])
def test_torch_compile_traces_the_fused_myopic_backward(myopic):
    """Dynamo + AOTAutograd (the part of torch.compile that must understand the custom autograd
    Functions) give the eager gradients; inductor codegen itself is exercised in tests/gpu."""
    eager = tiny_model(seed=9, myopic=myopic, myopic_impl="fused")
    compiled_twin = tiny_model(seed=9, myopic=myopic, myopic_impl="fused")
    compiled = torch.compile(compiled_twin, backend="aot_eager", fullgraph=False)
    x, y = tiny_batch(eager)
    g_eager = parameter_grads(eager, x, y)
    compiled_twin.zero_grad(set_to_none=True)
    _, loss = compiled(x, y)
    loss.backward()
    for name, p in compiled_twin.named_parameters():
        torch.testing.assert_close(p.grad, g_eager[name], rtol=1e-10, atol=1e-13, msg=name)
