"""Pixel space as a tokenizer, so the same trainer can run without a learned latent space.

The posterior is a point mass (std = 0): sampling `mean + std * eps` then returns the image itself,
which keeps pixel-space runs on exactly the code path of latent-space runs.
"""

from __future__ import annotations

import torch

from .base import Tokenizer


class IdentityTokenizer(Tokenizer):
    kind = "identity"

    def __init__(self, image_channels: int) -> None:
        super().__init__()
        self.image_channels = image_channels
        self.latent_channels = image_channels
        self.downsample = 1

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, torch.zeros_like(images)

    def decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return raw_latents

    def config(self) -> dict:
        return {"image_channels": self.image_channels}
