"""Device helpers: device resolution, autocast and the peak-FLOP/s table."""

import pytest
import torch

from rtlab.model.device import autocast_context, peak_flops, resolve_device


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_asking_for_cuda_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


def test_autocast_float32_is_a_no_op_and_bfloat16_casts_matmuls():
    a = torch.randn(4, 4)
    with autocast_context(torch.device("cpu"), "float32"):
        assert (a @ a).dtype == torch.float32
    with autocast_context(torch.device("cpu"), "bfloat16"):
        assert (a @ a).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        autocast_context(torch.device("cpu"), "float16")


def test_peak_flops_is_unknown_on_cpu():
    assert peak_flops(torch.device("cpu")) is None


@pytest.mark.parametrize(
    "mode",
    [
        {},
        {"reasoning": {"n_tokens": 2, "delay": 1}},
        {"myopic": "strict"},
        {"myopic": "paper"},
        {"myopic": "paper", "myopic_impl": "explicit"},
    ],
    ids=str,
)
def test_bfloat16_autocast_training_step_runs_in_every_mode(mode):
    from rtlab.model import GPT, GPTConfig

    torch.manual_seed(0)
    config = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, **mode)
    model = GPT(GPTConfig.from_dict(config))
    x = torch.randint(0, 64, (2, 16))
    _, loss32 = model(x, x)
    with autocast_context(torch.device("cpu"), "bfloat16"):
        logits, loss = model(x, x)
    assert logits.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(loss32.item(), rel=2e-2)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and g.isfinite().all() for g in grads)
