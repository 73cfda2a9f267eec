"""Two training-time diagnostics of the failure modes a GAN hides behind a good-looking grid.

- `DiversityMonitor` (z-sensitivity): how far the image moves when only z changes, at a fixed
  class, against how far it moves when only the class changes, at a fixed z, and against how far
  apart two real images of one class are. A generator that ignores z (accurate but not diverse
  samples) shows `diversity/z_spread_vs_real` well below 1.
- `OverfitMonitor` (StyleGAN2-ADA's r_t, adapted): the discriminator's verdict on training reals
  against held-out reals it never saw. The relativistic loss only sees logit *differences*, so a
  logit's sign means nothing on its own; the sign is taken relative to the mean fake logit, and
  `overfit/gap` = (D(train) - D(held-out)) / (D(train) - D(fake)) says how far held-out reals have
  moved towards fakes (0: D generalises, 1: D treats unseen reals as fakes).

Both use fixed inputs (z, classes, real images, MNG noise; no augmentation) so their values are
comparable across steps, and both run on the main process at logging steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.latents import LatentDataset
from ..eval.suite import separate_test_split
from ..losses.mng import MNG
from ..models.discriminator import stack_levels
from ..tokenizers.base import Tokenizer, to_signed_unit


def mean_pairwise_distance(images: torch.Tensor) -> torch.Tensor:
    """[G, N, C, H, W] -> [G]: per group, the mean RMS distance over pairs of distinct images."""
    n = images.shape[1]
    x = images.flatten(start_dim=2).float()
    distances = torch.cdist(x, x) / x.shape[-1] ** 0.5
    return distances.sum(dim=(1, 2)) / (n * (n - 1))


class DiversityMonitor:
    def __init__(self, tokenizer: Tokenizer, data: LatentDataset, z_dim: int, device: torch.device,
                 num_z: int = 16, max_classes: int = 10, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        count = min(max_classes, data.num_classes)
        self.classes = torch.linspace(0, data.num_classes - 1, count).round().long().to(device)
        self.z = torch.randn(num_z, z_dim, generator=generator).to(device)
        self.tokenizer, self.scaling = tokenizer, data.scaling
        # Real images of the same classes through the same decoder, so both spreads see its blur.
        labels = data.labels(np.arange(len(data))).numpy()
        rng = np.random.default_rng(seed)
        pools = [np.flatnonzero(labels == c) for c in self.classes.tolist()]
        indices = np.concatenate([rng.choice(pool, num_z, replace=len(pool) < num_z) for pool in pools])
        shape = (len(indices), data.latent_channels, data.latent_size, data.latent_size)
        real = self._decode(data.latents(indices, torch.zeros(shape)).to(device))
        self.real_spread = float(mean_pairwise_distance(real.unflatten(0, (count, num_z))).mean())

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(self.scaling.denormalize(latents)).clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, G: nn.Module) -> dict[str, float]:
        C, Z = len(self.classes), len(self.z)
        labels = self.classes.repeat_interleave(Z)
        images = self._decode(G(self.z.repeat(C, 1), labels)).unflatten(0, (C, Z))  # [class, z, ...]
        z_spread = float(mean_pairwise_distance(images).mean())
        class_spread = float(mean_pairwise_distance(images.transpose(0, 1)).mean())
        return {"diversity/z_spread": z_spread, "diversity/class_spread": class_spread,
                "diversity/z_over_class": z_spread / max(class_spread, 1e-12),
                "diversity/z_spread_vs_real": z_spread / max(self.real_spread, 1e-12)}


class OverfitMonitor:
    def __init__(self, tokenizer: Tokenizer, data: LatentDataset, held_out: tuple[np.ndarray, np.ndarray],
                 mng: MNG, z_dim: int, device: torch.device, count: int = 256, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(data), generator=generator)[:count].numpy()
        shape = (count, data.latent_channels, data.latent_size, data.latent_size)
        self.train_real = data.latents(indices, torch.zeros(shape)).to(device)  # posterior means
        self.train_labels = data.labels(indices).to(device)
        images, labels = held_out
        chosen = torch.randperm(len(images), generator=generator)[:count].numpy()
        with torch.no_grad():
            mean, _ = tokenizer.encode_moments(to_signed_unit(images[chosen]).to(device))
        self.held_out_real = data.scaling.normalize(mean)
        self.held_out_labels = torch.as_tensor(labels[chosen]).to(device)
        self.z = torch.randn(count, z_dim, generator=generator).to(device)
        self.noise = torch.randn((mng.num_levels, *shape), generator=generator).to(device)
        self.mng = mng

    def _logits(self, D: nn.Module, levels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return D(stack_levels(self.mng(levels, self.noise)), labels).float().flatten()

    def _real(self, D: nn.Module, latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._logits(D, latents.unsqueeze(0).expand(self.mng.num_levels, *latents.shape), labels)

    @torch.no_grad()
    def __call__(self, G: nn.Module, D: nn.Module) -> dict[str, float]:
        """G: the generator D is trained against (not the EMA)."""
        train = self._real(D, self.train_real, self.train_labels)
        held_out = self._real(D, self.held_out_real, self.held_out_labels)
        fake = self._logits(D, G(self.z, self.train_labels, all_exits=True), self.train_labels)
        centre = fake.mean()
        return {"overfit/r_train": float(torch.sign(train - centre).mean()),
                "overfit/r_held_out": float(torch.sign(held_out - centre).mean()),
                "overfit/gap": float((train.mean() - held_out.mean()) / (train.mean() - centre).clamp_min(1e-6))}
