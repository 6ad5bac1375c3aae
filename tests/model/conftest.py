import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI box has 2 cores shared with other suites; tiny float64 models gain nothing from more.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
