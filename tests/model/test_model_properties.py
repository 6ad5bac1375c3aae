"""METHODS §4: the properties every training mode must satisfy, in float64 with dropout 0.

These are written independently of rtlab.model.audit (which runs similar checks at `rtlab check`
time) so that a bug shared by both would have to be made twice.
"""

import warnings

import pytest
import torch
from torch.nn import functional as F

from rtlab.model.gpt import dense_reasoning_mask, flex_block_mask
from tests.helpers.gpt import tiny_batch, tiny_model

REASONING_CASES = [(1, 1), (2, 1), (1, 2), (3, 3), (2, 4)]  # (n_tokens, delay)
MYOPIC_CASES = [
    ("strict", "explicit"),
    ("strict", "fused"),
    ("paper", "explicit"),
    ("paper", "fused"),
]


def loss_grad_per_slot(model, x, y, t):
    """|dL_t/dE| summed over batch and channels, as (T, n+1): the loss of step t alone."""
    E = model.embed(x).detach().requires_grad_(True)
    logits, _ = model(None, inputs_embeds=E)
    if model.config.head == "regression":
        loss = F.huber_loss(logits[:, t], y[:, t], reduction="sum")
    else:
        loss = F.cross_entropy(logits[:, t], y[:, t], reduction="sum")
    loss.backward()
    n1 = model.config.reasoning.n_tokens + 1
    return E.grad.view(x.size(0), x.size(1), n1, -1).abs().sum(dim=(0, 3))


# -- §4.1 myopic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["lm", "regression"])
@pytest.mark.parametrize("myopic,impl", MYOPIC_CASES)
def test_myopic_loss_at_j_sends_gradient_only_to_position_j(myopic, impl, head):
    model = tiny_model(myopic=myopic, myopic_impl=impl, head=head)
    x, y = tiny_batch(model)
    T = x.size(1)
    for j in range(T):
        g = loss_grad_per_slot(model, x, y, j)[:, 0]  # (T,)
        assert g[j] > 0, f"no gradient at own position {j}"
        others = torch.cat([g[:j], g[j + 1 :]])
        assert torch.all(others == 0), f"loss at {j} reaches other positions: {others}"


def test_baseline_loss_reaches_earlier_positions():
    model = tiny_model()
    x, y = tiny_batch(model)
    T = x.size(1)
    g = loss_grad_per_slot(model, x, y, T - 1)[:, 0]
    assert torch.all(g[: T - 1] > 0)


@pytest.mark.parametrize("myopic,impl", MYOPIC_CASES)
def test_myopic_logits_equal_baseline_logits(myopic, impl):
    baseline = tiny_model(seed=3)
    model = tiny_model(seed=3, myopic=myopic, myopic_impl=impl)
    x, y = tiny_batch(model)
    logits, loss = model(x, y)
    base_logits, base_loss = baseline(x, y)
    torch.testing.assert_close(logits, base_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, base_loss, rtol=0, atol=1e-12)


# -- §4.2 reasoning delay ------------------------------------------------------------------------


@pytest.mark.parametrize("input_kind", ["duplicate", "learned"])
@pytest.mark.parametrize("n_tokens,delay", REASONING_CASES)
def test_reasoning_slots_reach_loss_only_after_delay(n_tokens, delay, input_kind):
    model = tiny_model(reasoning={"n_tokens": n_tokens, "delay": delay, "input": input_kind})
    x, y = tiny_batch(model)
    T = x.size(1)
    for t in range(T):
        g = loss_grad_per_slot(model, x, y, t)[:, 1:]  # reasoning slots (T, n)
        too_recent = g[max(0, t - delay + 1) :]
        assert torch.all(too_recent == 0), f"step {t}: reasoning slot of a step > t-d is used"
        if t >= delay:
            assert g[: t - delay + 1].max() > 0, f"step {t}: no old reasoning slot is used"
        # the main slots of steps <= t always matter, later ones never do
        main = loss_grad_per_slot(model, x, y, t)[:, 0]
        assert torch.all(main[: t + 1] > 0) and torch.all(main[t + 1 :] == 0)


# -- §4.3 leak -----------------------------------------------------------------------------------

ALL_MODES = [
    {},
    {"reasoning": {"n_tokens": 2, "delay": 1}},
    {"reasoning": {"n_tokens": 3, "delay": 2, "input": "learned"}},
    {"reasoning": {"n_tokens": 1, "delay": 1, "loss_on_reasoning": True}},
    {"myopic": "strict", "myopic_impl": "explicit"},
    {"myopic": "strict", "myopic_impl": "fused"},
    {"myopic": "paper", "myopic_impl": "explicit"},
    {"myopic": "paper", "myopic_impl": "fused"},
    {"head": "regression"},
    {"head": "regression", "reasoning": {"n_tokens": 2, "delay": 2}},
    {"head": "regression", "myopic": "paper"},
]


@pytest.mark.parametrize("mode", ALL_MODES, ids=str)
def test_changing_future_inputs_leaves_earlier_logits_bit_identical(mode):
    model = tiny_model(**mode)
    x, _ = tiny_batch(model)
    logits, _ = model(x)
    g = torch.Generator().manual_seed(7)
    for t in range(x.size(1) - 1):
        x2 = x.clone()
        if model.config.head == "regression":
            x2[:, t + 1 :] = torch.randn(x2[:, t + 1 :].shape, generator=g, dtype=x.dtype)
        else:
            x2[:, t + 1 :] = (x2[:, t + 1 :] + 5) % model.config.vocab_size
        logits2, _ = model(x2)
        assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1]), f"leak into step <= {t}"
        assert not torch.equal(logits[:, t + 1 :], logits2[:, t + 1 :])  # the change is seen


# -- §4.4 no own loss ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_tokens,delay", REASONING_CASES)
def test_reasoning_slots_of_last_d_steps_get_no_gradient_from_total_loss(n_tokens, delay):
    model = tiny_model(reasoning={"n_tokens": n_tokens, "delay": delay})
    x, y = tiny_batch(model)
    E = model.embed(x).detach().requires_grad_(True)
    _, loss = model(None, y, inputs_embeds=E)
    loss.backward()
    T = x.size(1)
    grad = E.grad.view(x.size(0), T, n_tokens + 1, -1)
    assert torch.all(grad[:, T - delay :, 1:] == 0)
    assert grad[:, : T - delay, 1:].abs().amax(dim=(0, 2, 3)).min() > 0  # earlier ones do learn


def test_loss_on_reasoning_gives_last_reasoning_slots_a_gradient():
    model = tiny_model(reasoning={"n_tokens": 2, "delay": 1, "loss_on_reasoning": True})
    x, y = tiny_batch(model)
    E = model.embed(x).detach().requires_grad_(True)
    _, loss = model(None, y, inputs_embeds=E)
    loss.backward()
    assert E.grad.view(2, x.size(1), 3, -1)[:, -1, 1:].abs().max() > 0


def test_loss_on_reasoning_averages_main_and_reasoning_slot_losses():
    model = tiny_model(reasoning={"n_tokens": 2, "delay": 1, "loss_on_reasoning": True})
    x, y = tiny_batch(model)
    _, loss = model(x, y)
    # recompute from the hidden states of every slot by hand
    h = model.embed(x)
    mask = dense_reasoning_mask(x.size(1), 2, 1, h.device)
    for block in model.transformer.h:
        h = block(h, mask)
    logits_all = model.lm_head(model.transformer.ln_f(h)).view(2, x.size(1), 3, -1)
    expected = torch.stack(
        [F.cross_entropy(logits_all[:, :, s].flatten(0, 1), y.flatten()) for s in range(3)]
    ).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


# -- §4.5 zero reasoning + myopic off is the baseline --------------------------------------------


def test_zero_reasoning_tokens_and_myopic_off_is_the_baseline_bit_for_bit():
    baseline = tiny_model(seed=5).train()
    variant = tiny_model(
        seed=5,
        reasoning={"n_tokens": 0, "delay": 4, "input": "learned", "loss_on_reasoning": True},
        myopic="off",
        myopic_impl="explicit",
    ).train()
    assert baseline.state_dict().keys() == variant.state_dict().keys()
    x, y = tiny_batch(baseline)
    results = []
    for model in (baseline, variant):
        logits, loss = model(x, y)
        loss.backward()
        results.append((logits, loss, [p.grad for p in model.parameters()]))
    (l1, s1, g1), (l2, s2, g2) = results
    assert torch.equal(l1, l2) and torch.equal(s1, s2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


# -- §4.6 backends compute the same function -----------------------------------------------------


def test_dense_causal_mask_equals_sdpa_is_causal():
    model = tiny_model()
    x, y = tiny_batch(model)
    logits, _ = model(x, y)
    T = x.size(1)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    model._attention_mask = lambda P, device: causal  # route every block through the mask path
    masked_logits, _ = model(x, y)
    torch.testing.assert_close(masked_logits, logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_tokens,delay", [(0, 1), *REASONING_CASES])
def test_flex_block_mask_equals_dense_mask_on_cpu(n_tokens, delay):
    """The FlexAttention mask_mod (used on CUDA) against the dense mask, via eager flex on CPU;
    also checks that flex's log-sum-exp is natural-log like the CPU flash kernel's."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    T = 6
    P = T * (n_tokens + 1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, P, 4, generator=g, dtype=torch.float64) for _ in range(3))
    block_mask = flex_block_mask(P, n_tokens, delay, torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile": fine for a check
        out, aux = flex_attention(q, k, v, block_mask=block_mask, return_aux=AuxRequest(lse=True))
    mask = dense_reasoning_mask(T, n_tokens, delay, q.device)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    scores = (q @ k.transpose(-2, -1)) / 2.0
    expected_lse = scores.masked_fill(~mask, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(aux.lse, expected_lse, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "mode",
    [
        {"reasoning": {"n_tokens": 2, "delay": 1}},
        {"reasoning": {"n_tokens": 1, "delay": 3, "input": "learned"}},
    ],
    ids=str,
)
def test_whole_model_flex_backend_equals_dense_backend_on_cpu(mode):
    """The model's CUDA code path (FlexAttention block mask), run eagerly on CPU, against the
    dense path. Eager flex has no CPU backward, so gradients are checked in tests/gpu."""
    dense = tiny_model(seed=8, **mode).set_attention_backend("dense")
    flex = tiny_model(seed=8, **mode).set_attention_backend("flex")
    x, y = tiny_batch(dense)
    with torch.no_grad():
        logits_d, loss_d = dense(x, y)
        logits_f, loss_f = flex(x, y)
    torch.testing.assert_close(logits_f, logits_d, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss_f, loss_d, rtol=0, atol=1e-12)


def test_flex_lse_used_by_fused_myopic_on_cuda_equals_the_cpu_flash_kernel_lse():
    from rtlab.model.myopic import _attention_with_lse

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g, dtype=torch.float64) for _ in range(3))
    y_cpu, lse_cpu = _attention_with_lse(q, k, v)  # CPU flash kernel
    y_flex, lse_flex = _attention_with_lse(q, k, v, flex_block_mask(10, 0, 1, q.device))
    torch.testing.assert_close(y_flex, y_cpu, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse_flex.to(lse_cpu.dtype), lse_cpu, rtol=0, atol=1e-12)


# torch.compile's first use imports dynamo, whose import warns about torch.jit deprecations
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_each_flex_call_signature_gets_its_own_compiled_code_object():
    """Dynamo's recompile limit is per code object: one shared compiled flex_attention would fall
    back to eager after a few shapes, so every signature must compile its own wrapper copy."""
    from rtlab.model import attention

    first = attention._compiled_flex_for(("test-signature", 1))
    second = attention._compiled_flex_for(("test-signature", 2))
    assert attention._compiled_flex_for(("test-signature", 1)) is first
    codes = [f._torchdynamo_orig_callable.__code__ for f in (first, second)]
    assert codes[0] is not codes[1] and codes[0] is not attention._flex_call.__code__
    for key in [("test-signature", 1), ("test-signature", 2)]:
        del attention._compiled_flex_attention[key]
