import socket
from pathlib import Path

import pytest
import torch
from tinyrun import write_tiny_data, write_tiny_data_with_teacher


@pytest.fixture(autouse=True)
def _single_cpu_thread():
    """The tests use tiny tensors: with two intra-op threads on a shared 2-core machine, OpenMP
    hand-offs cost ~15 ms per matmul (far more than the work itself). Run single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_data_with_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data_with_teacher(tmp_path_factory.mktemp("data"))


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Any attempt to resolve or connect fails and is recorded (for tests that must work offline)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts
