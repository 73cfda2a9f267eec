import socket
from pathlib import Path

import pytest
import torch
from tinyrun import write_tiny_data, write_tiny_data_with_teacher


def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _single_cpu_thread_for_shared_fixtures():
    """Session- and module-scoped fixtures are built before any test's own fixtures: without this
    they would compute with the default thread count and the tests with one, and results that
    should be equal (features of the same images) would differ in the last bits."""
    yield from _one_thread()


@pytest.fixture(autouse=True)
def _single_cpu_thread():
    """The tests use tiny tensors: with two intra-op threads on a shared 2-core machine, OpenMP
    hand-offs cost ~15 ms per matmul (far more than the work itself). Run single-threaded (and
    undo any test's own thread setting)."""
    yield from _one_thread()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_data_with_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data_with_teacher(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny run (6 steps, seconds), one per test module, which may add files to it."""
    from gatgan.train.trainer import train
    from tinyrun import tiny_config

    run_dir = tmp_path_factory.mktemp("runs")
    train(tiny_config(tiny_data, run_dir), progress=False)
    return run_dir / "tiny"


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers AutoencoderKL (SD-VAE's architecture, 4 latent channels, random weights) saved
    as a folder, standing in for the SD-VAE that cannot be downloaded here."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
                                  latent_channels=4)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path, safe_serialization=True)
    return path


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
