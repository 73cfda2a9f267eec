"""The training diagnostics: z-sensitivity and discriminator overfitting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from gatgan.data.latents import LatentDataset
from gatgan.losses.mng import MNG
from gatgan.tokenizers.identity import IdentityTokenizer
from gatgan.eval.suite import separate_test_split
from gatgan.train.diagnostics import DiversityMonitor, OverfitMonitor, mean_pairwise_distance


def test_mean_pairwise_distance_matches_a_loop():
    images = torch.randn(3, 5, 2, 4, 4)
    expected = []
    for group in images:
        pairs = [(a - b).pow(2).mean().sqrt() for a, b in itertools.permutations(group, 2)]
        expected.append(torch.stack(pairs).mean())
    torch.testing.assert_close(mean_pairwise_distance(images), torch.stack(expected), rtol=1e-5, atol=1e-6)


class StubGenerator(nn.Module):
    """Its image depends on z only, on the class only, or on both (through `mode`)."""

    def __init__(self, mode: str, shape: tuple[int, int, int]):
        super().__init__()
        self.mode, self.shape = mode, shape

    def forward(self, z, y, all_exits=False):
        size = int(np.prod(self.shape))
        from_z = z[:, :1].repeat(1, size) * torch.linspace(0.1, 1, size)
        from_y = y[:, None].float().repeat(1, size) * 0.5
        image = {"z": from_z, "class": from_y, "both": from_z + from_y}[self.mode].view(-1, *self.shape)
        return image.unsqueeze(0).repeat(4, 1, 1, 1, 1) if all_exits else image


@pytest.fixture
def dataset(tiny_data):
    return LatentDataset(tiny_data)


def _shape(data: LatentDataset) -> tuple[int, int, int]:
    return data.latent_channels, data.latent_size, data.latent_size


def test_a_generator_that_ignores_z_has_no_z_spread(dataset):
    monitor = DiversityMonitor(IdentityTokenizer(1), dataset, z_dim=4, device=torch.device("cpu"), num_z=6)
    ignores_z = monitor(StubGenerator("class", _shape(dataset)))
    assert ignores_z["diversity/z_spread"] == pytest.approx(0, abs=1e-6)
    assert ignores_z["diversity/class_spread"] > 0
    ignores_class = monitor(StubGenerator("z", _shape(dataset)))
    assert ignores_class["diversity/class_spread"] == pytest.approx(0, abs=1e-6)
    assert ignores_class["diversity/z_spread"] > 0
    both = monitor(StubGenerator("both", _shape(dataset)))
    assert both["diversity/z_spread_vs_real"] == pytest.approx(both["diversity/z_spread"] / monitor.real_spread)
    assert monitor.real_spread > 0


class EnergyDiscriminator(nn.Module):
    """A fixed 'discriminator': the mean square of its input (real latents carry more energy than
    the stub's all-zero fakes)."""

    def forward(self, x, y):
        return x.pow(2).mean(dim=(1, 2, 3))[:, None]


def _fake_zero(z, y, all_exits=True):
    return torch.zeros(4, len(z), 1, 8, 8)


def test_overfit_gap_is_zero_for_unseen_reals_like_training_ones_and_one_for_reals_like_fakes(dataset):
    cpu, mng = torch.device("cpu"), MNG()
    everything = np.arange(len(dataset))
    images, labels = dataset.images(everything).numpy(), dataset.labels(everything).numpy()
    like_training = OverfitMonitor(IdentityTokenizer(1), dataset, (images, labels), mng, 4, cpu, count=64)
    same = like_training(_fake_zero, EnergyDiscriminator())
    assert abs(same["overfit/gap"]) < 0.2
    assert same["overfit/r_train"] == pytest.approx(same["overfit/r_held_out"], abs=0.2)
    # held-out images that normalise to a zero latent look exactly like the stub's fakes
    raw_zero = round((dataset.scaling.shift[0] + 1) * 127.5)
    like_fakes = np.full_like(images, raw_zero)
    memorised = OverfitMonitor(IdentityTokenizer(1), dataset, (like_fakes, labels), mng, 4, cpu, count=64)(
        _fake_zero, EnergyDiscriminator())
    assert memorised["overfit/gap"] == pytest.approx(1.0, abs=0.05)
    assert memorised["overfit/r_train"] > memorised["overfit/r_held_out"]


def test_only_data_with_a_separate_test_split_has_held_out_reals_for_the_overfit_monitor(dataset):
    assert separate_test_split(dataset) is None
