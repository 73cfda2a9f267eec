import pytest
import torch


@pytest.fixture(autouse=True)
def _single_cpu_thread():
    """These tests use tiny tensors: with two intra-op threads on a shared 2-core machine, OpenMP
    hand-offs cost ~15 ms per matmul (200x the work itself). Run single-threaded, then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
