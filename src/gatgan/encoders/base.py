"""The small interface every REPA teacher implements: frozen vision encoders whose [cls] and
patch features are the targets the discriminator's tokens are aligned to (docs/method.md §5).

A teacher takes the data set's raw images (uint8 values, 1 or 3 channels, as stored by
`prepare`), does its own preprocessing (range, normalisation, resizing to its input size) and
returns its final-layer normalised [cls] feature and its patch features as a spatial map, so that
the REPA loss can resize the map to the discriminator's token grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class TeacherFeatures:
    cls: torch.Tensor  # [B, dim]
    patches: torch.Tensor  # [B, dim, h, w]: the patch features on their spatial grid


class Teacher(nn.Module):
    """Base class. Subclasses set `kind` and `dim`, and implement `preprocess` and `features`;
    `forward` (images -> TeacherFeatures) is the same for all and never tracks gradients."""

    kind: str = "base"
    dim: int

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-valued images [B, C, H, W] (any float or integer dtype) -> the network's input."""
        raise NotImplementedError

    def features(self, inputs: torch.Tensor) -> TeacherFeatures:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherFeatures:
        return self.features(self.preprocess(images))

    def config(self) -> dict:
        """JSON-serialisable arguments that rebuild this teacher (weights are saved separately)."""
        return {}

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "teacher.json").write_text(json.dumps({"kind": self.kind, **self.config()}, indent=2))
