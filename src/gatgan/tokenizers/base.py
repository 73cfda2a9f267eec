"""The small interface every latent space implements, so the trainer never knows which one it has.

A tokenizer maps images in [-1, 1] to the *moments* of a diagonal Gaussian posterior (mean, std)
and maps latents back to images. Moments rather than samples are stored by `prepare`, so training
draws a fresh `mean + std * eps` each time it reads an example (docs/method.md §1.1). The affine
normalisation that brings latents to unit scale (SD-VAE's 0.18215, or per-channel statistics) is
kept beside the data as a `LatentScaling`, not inside the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


def to_signed_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], the range every tokenizer encodes from."""
    return torch.as_tensor(np.asarray(images)).float().div(127.5).sub(1.0)


@dataclass
class LatentScaling:
    """latent = (raw - shift) * scale, per channel (lists of one value broadcast to all channels)."""

    shift: list[float] = field(default_factory=lambda: [0.0])
    scale: list[float] = field(default_factory=lambda: [1.0])

    def _view(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self._view(self.shift, raw)) * self._view(self.scale, raw)

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self._view(self.scale, latent) + self._view(self.shift, latent)

    def to_dict(self) -> dict:
        return asdict(self)


class Tokenizer(nn.Module):
    """Base class: subclasses set the four shape attributes and implement the two maps."""

    kind: str = "base"
    image_channels: int
    latent_channels: int
    downsample: int

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, C, H, W] in [-1, 1] -> (mean, std), each [B, c, H/f, W/f] in raw latent units."""
        raise NotImplementedError

    def decode(self, raw_latents: torch.Tensor) -> torch.Tensor:
        """raw latents [B, c, h, w] -> images [B, C, h*f, w*f], roughly in [-1, 1]."""
        raise NotImplementedError

    def fixed_scaling(self) -> LatentScaling | None:
        """The normalisation this latent space is published with (e.g. SD-VAE's 0.18215), or None
        when `prepare` should measure per-channel statistics on the data instead."""
        return None

    def config(self) -> dict:
        """JSON-serialisable arguments that rebuild this tokenizer (weights are saved separately)."""
        return {}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(json.dumps({"kind": self.kind, **self.config()}, indent=2))
