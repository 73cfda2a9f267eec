"""Building blocks shared by the small auxiliary networks gatgan trains itself on the embedded
stack: the small VAE (tokenizer), the self-supervised REPA teacher and the evaluation classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def warmup_cosine_lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup then cosine decay to zero: a short run ends at a low lr, which buys most of
    its final quality."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def affine_resample(x: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
    """The crop of each image of x [B, C, H, W] at the same size (bilinear; zeros outside). crops
    [B, 4] is (scale_x, scale_y, shift_x, shift_y) in grid_sample's normalised coordinates: the
    output's point u in [-1, 1] samples the image at scale * u + shift; scale_x < 0 mirrors."""
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = crops[:, 0], crops[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = crops[:, 2], crops[:, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
