"""Exponential moving average of the generator.

Two ways to set its speed: the authors' fixed decay per step (docs/method.md §6: 0.999, no warm-up),
or StyleGAN2's half-life in images with a ramp-up (`ema_kimg`, `ema_rampup`), which does not
depend on the batch size and, early in a short run, forgets the untrained start quickly.
Buffers (the per-class w average) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, batch: int, fixed_decay: float, half_life_kimg: float = 0.0, rampup: float = 0.0) -> float:
    """The decay applied after `step` optimiser steps of `batch` images (step counts from 1).
    With a half-life of h images, one step of b images decays by 0.5 ** (b / h)."""
    if half_life_kimg <= 0:
        return fixed_decay
    half_life = half_life_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, step * batch * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        decay = self.decay if decay is None else decay
        for ema_param, param in zip(self.model.parameters(), model.parameters()):
            ema_param.lerp_(param.detach(), 1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
