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
