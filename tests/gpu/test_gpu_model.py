"""CUDA-only checks of the model's GPU paths (run by scripts/gpu_check.sh).

FlexAttention (block mask for reasoning slots, lse for fused myopic) against the dense SDPA path,
exact zero gradients where METHODS §4 requires them, and a bf16 + torch.compile smoke run.
"""

import math

import pytest
import torch

from rtlab.model import GPT, GPTConfig
from rtlab.model.device import autocast_context

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SHAPE = dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)


@pytest.fixture(autouse=True)
def _exact_float32():
    # TF32 matmuls would hide real differences behind 1e-3 noise
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def cuda_model(seed: int = 0, **mode) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_dict({**SHAPE, **mode})).cuda()


def batch(B: int = 2, T: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, SHAPE["vocab_size"], (B, T), generator=g)
    y = torch.randint(0, SHAPE["vocab_size"], (B, T), generator=g)
    return x.cuda(), y.cuda()


def logits_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    logits, loss = model(x, y)
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_same_function(a: GPT, b: GPT, x, y):
    logits_a, loss_a, grads_a = logits_and_grads(a, x, y)
    logits_b, loss_b, grads_b = logits_and_grads(b, x, y)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("n_tokens,delay,input_kind", [(1, 1, "duplicate"), (3, 2, "learned")])
def test_flex_reasoning_path_equals_dense_path(n_tokens, delay, input_kind):
    mode = {"reasoning": {"n_tokens": n_tokens, "delay": delay, "input": input_kind}}
    flex = cuda_model(**mode).set_attention_backend("flex")  # FlexAttention block mask
    dense = cuda_model(**mode).set_attention_backend("dense")
    x, y = batch()
    assert_same_function(dense, flex, x, y)


@pytest.mark.parametrize("n_tokens", [1, 3])
def test_delay_1_causal_reasoning_path_equals_dense_path(n_tokens):
    """auto with delay 1 = unmasked causal SDPA (the slot mask is causal), on CUDA too."""
    mode = {"reasoning": {"n_tokens": n_tokens, "delay": 1}}
    causal = cuda_model(**mode)
    assert causal._attention_mask(32 * (n_tokens + 1), torch.device("cuda")) is None
    dense = cuda_model(**mode).set_attention_backend("dense")
    x, y = batch()
    assert_same_function(dense, causal, x, y)


@pytest.mark.parametrize("myopic", ["strict", "paper"])
def test_fused_myopic_equals_explicit_on_cuda(myopic):
    fused = cuda_model(myopic=myopic, myopic_impl="fused")
    explicit = cuda_model(myopic=myopic, myopic_impl="explicit")
    x, y = batch()
    assert_same_function(explicit, fused, x, y)


def test_flex_reasoning_gradients_respect_the_delay_exactly():
    n, d = 2, 2
    model = cuda_model(reasoning={"n_tokens": n, "delay": d})
    x, y = batch(T=12)
    for t in (3, 11):
        E = model.embed(x).detach().requires_grad_(True)
        logits, _ = model(None, inputs_embeds=E)
        torch.nn.functional.cross_entropy(logits[:, t], y[:, t], reduction="sum").backward()
        g = E.grad.view(2, 12, n + 1, -1).abs().sum(dim=(0, 3))[:, 1:]
        assert torch.all(g[t - d + 1 :] == 0)
        assert g[: t - d + 1].max() > 0


def test_fused_myopic_gradients_are_exactly_local_on_cuda():
    model = cuda_model(myopic="strict", myopic_impl="fused")
    x, y = batch(T=12)
    E = model.embed(x).detach().requires_grad_(True)
    logits, _ = model(None, inputs_embeds=E)
    torch.nn.functional.cross_entropy(logits[:, 7], y[:, 7], reduction="sum").backward()
    per_pos = E.grad.abs().sum(dim=(0, 2))
    assert per_pos[7] > 0 and per_pos[:7].max() == 0 and per_pos[8:].max() == 0


@pytest.mark.parametrize(
    "mode",
    [{}, {"reasoning": {"n_tokens": 1, "delay": 1}}, {"myopic": "strict"}],
    ids=["baseline", "reasoning", "myopic"],
)
def test_bf16_compiled_training_steps_match_eager(mode):
    model = cuda_model(seed=3, **mode)
    compiled = torch.compile(model)
    x, y = batch(B=4)
    device = torch.device("cuda")
    with autocast_context(device, "bfloat16"):
        _, eager_loss = model(x, y)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cuda")
    assert optimizer.defaults.get("fused") is True
    losses = []
    for _ in range(5):
        with autocast_context(device, "bfloat16"):
            _, loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(eager_loss.item(), rel=2e-2)
    assert losses[-1] < losses[0]  # the same batch five times: the loss must fall


def test_reasoning_with_attention_dropout_uses_the_dense_path_on_cuda():
    """FlexAttention has no attention dropout, so training with dropout > 0 takes SDPA + mask."""
    model = cuda_model(reasoning={"n_tokens": 1}, dropout=0.1).train()
    assert isinstance(model._attention_mask(64, torch.device("cuda")), torch.Tensor)
    model.eval()
    assert not isinstance(model._attention_mask(64, torch.device("cuda")), torch.Tensor)


# ---- shapes spanning several FlexAttention blocks (128 slots each) ------------------------------
# The small shapes above fit in one block, where a wrong block-level mask or a wrong lse across
# blocks cannot show. These helpers take the device so they can be sanity-run on CPU through
# the eager flex backend; the tests run them on CUDA.


def multi_block_model(device: torch.device, backend: str, seed: int = 0, **mode) -> GPT:
    torch.manual_seed(seed)
    fields = {**SHAPE, "n_embd": 32, **mode}
    return GPT(GPTConfig.from_dict(fields)).to(device).set_attention_backend(backend)


def device_batch(device: torch.device, B: int, T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, SHAPE["vocab_size"], (B, T), generator=g)
    y = torch.randint(0, SHAPE["vocab_size"], (B, T), generator=g)
    return x.to(device), y.to(device)


def check_flex_equals_dense_across_blocks(device: torch.device) -> None:
    mode = {"block_size": 200, "reasoning": {"n_tokens": 1, "delay": 2}}  # P = 400 slots
    dense = multi_block_model(device, "dense", **mode)
    flex = multi_block_model(device, "flex", **mode)
    x, y = device_batch(device, B=2, T=200)
    assert_same_function(dense, flex, x, y)


def check_fused_equals_explicit_across_blocks(device: torch.device, myopic: str) -> None:
    mode = {"block_size": 300, "myopic": myopic}
    explicit = multi_block_model(device, "flex", myopic_impl="explicit", **mode)
    fused = multi_block_model(device, "flex", myopic_impl="fused", **mode)
    x, y = device_batch(device, B=2, T=300)
    assert_same_function(explicit, fused, x, y)


def relative_grad_error(grads: dict, reference: dict) -> float:
    return max(
        ((grads[n].float() - g.float()).norm() / g.float().norm().clamp_min(1e-30)).item()
        for n, g in reference.items()
    )


def check_bf16_fused_close_to_explicit(device: torch.device, myopic: str) -> float:
    """Under bf16 autocast both implementations round differently; the fused one must stay as
    close to the float32 gradients as bf16 explicit does (within a small margin)."""
    mode = {"block_size": 300, "myopic": myopic}
    x, y = device_batch(device, B=2, T=300)
    reference = multi_block_model(device, "flex", myopic_impl="explicit", **mode)
    _, _, g_ref = logits_and_grads(reference, x, y)
    errors = {}
    for impl in ("explicit", "fused"):
        model = multi_block_model(device, "flex", myopic_impl=impl, **mode)
        with autocast_context(device, "bfloat16"):
            _, _, grads = logits_and_grads(model, x, y)
        errors[impl] = relative_grad_error(grads, g_ref)
    assert errors["fused"] < 0.05, errors
    assert errors["fused"] <= 2 * errors["explicit"] + 0.01, errors
    return errors["fused"]


def test_flex_reasoning_equals_dense_over_several_blocks():
    check_flex_equals_dense_across_blocks(torch.device("cuda"))


@pytest.mark.parametrize("myopic", ["strict", "paper"])
def test_fused_myopic_equals_explicit_over_several_blocks(myopic):
    check_fused_equals_explicit_across_blocks(torch.device("cuda"), myopic)


@pytest.mark.parametrize("myopic", ["strict", "paper"])
def test_fused_myopic_stays_close_to_explicit_in_bf16(myopic):
    check_bf16_fused_close_to_explicit(torch.device("cuda"), myopic)
