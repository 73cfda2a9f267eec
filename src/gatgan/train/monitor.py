"""How well the discriminator's features agree with the teacher's, measured during training.

REPA's premise is that a discriminator aligned with a vision foundation model learns better
features; the seed's break condition is an alignment that does not grow. This monitor measures it
on a fixed set of real images and on images of the EMA generator for fixed (z, y): D's last-block
[cls] token against the teacher's [cls] feature, by CKNNA (mutual-k-NN CKA) and linear CKA. It is
computed with or without the REPA loss (`loss.repa.weight=0` keeps the teacher for this alone),
so the REPA-off arm of an ablation is measured the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.latents import LatentDataset
from ..encoders.base import Teacher
from ..eval.alignment import cknna, linear_cka
from ..images import to_uint8
from ..losses.mng import MNG
from ..models.discriminator import stack_levels
from ..tokenizers.base import Tokenizer


class AlignmentMonitor:
    def __init__(self, teacher: Teacher, tokenizer: Tokenizer, data: LatentDataset, mng: MNG, z_dim: int,
                 device: torch.device, count: int = 256, k: int = 10, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(data), generator=generator)[:count].numpy()
        shape = (len(indices), data.latent_channels, data.latent_size, data.latent_size)
        self.real = data.latents(indices, torch.zeros(shape)).to(device)  # posterior means
        self.labels = data.labels(indices).to(device)
        self.z = torch.randn(len(indices), z_dim, generator=generator).to(device)
        self.noise = torch.randn((mng.num_levels, *shape), generator=generator).to(device)
        self.teacher, self.tokenizer, self.scaling, self.mng = teacher, tokenizer, data.scaling, mng
        self.k = min(k, len(indices) - 1)
        self.teacher_real = (teacher(data.images(indices).to(device)).cls if data.has_images
                             else data.teacher_features(indices)[0].cls.float().to(device))

    def _d_cls(self, D: nn.Module, levels: torch.Tensor) -> torch.Tensor:
        """D's last-block [cls] token (before its head) for MNG-perturbed levels, without augmentation."""
        captured = {}
        hook = D.blocks[-1].register_forward_hook(lambda module, args, out: captured.setdefault("h", out))
        try:
            D(stack_levels(self.mng(levels, self.noise)), self.labels)
        finally:
            hook.remove()
        return captured["h"][:, 0]

    @torch.no_grad()
    def __call__(self, G: nn.Module, D: nn.Module) -> dict[str, float]:
        real_levels = self.real.unsqueeze(0).expand(self.mng.num_levels, *self.real.shape)
        d_real = self._d_cls(D, real_levels)
        fake_levels = G(self.z, self.labels, all_exits=True)
        d_fake = self._d_cls(D, fake_levels)
        images = to_uint8(self.tokenizer.decode(self.scaling.denormalize(fake_levels[-1])))  # NHWC uint8
        teacher_fake = self.teacher(torch.from_numpy(images).permute(0, 3, 1, 2).to(d_fake.device)).cls
        return {"align/cknna_real": cknna(d_real, self.teacher_real, self.k),
                "align/cknna_fake": cknna(d_fake, teacher_fake, self.k),
                "align/cka_real": linear_cka(d_real, self.teacher_real),
                "align/cka_fake": linear_cka(d_fake, teacher_fake)}
