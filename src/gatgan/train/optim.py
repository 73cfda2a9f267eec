"""Width-aware learning rate and the optimiser GAT trains with (docs/method.md §6)."""

from __future__ import annotations

import math

import torch
from torch import nn


def width_aware_lr(base_lr: float, width: int, base_width: int = 768, enabled: bool = True) -> float:
    """lr = base_lr * base_width / width: the update of a layer's output grows with the number of
    (unit-variance) input channels, so a wider model needs a proportionally smaller step."""
    return base_lr * base_width / width if enabled else base_lr


LR_DECAYS = ("none", "cosine", "linear")


def lr_factor(kimg: float, total_kimg: float, decay: str = "none", start: float = 0.5, final: float = 0.1) -> float:
    """The multiplier of the learning rate after `kimg` thousand images of a `total_kimg` run: 1
    until start x total, then down to `final` at total (cosine or linear), then `final`."""
    if decay == "none":
        return 1.0
    if decay not in LR_DECAYS:
        raise ValueError(f"lr decay must be one of {LR_DECAYS}, got {decay!r}")
    begin = start * total_kimg
    progress = min(max((kimg - begin) / max(total_kimg - begin, 1e-12), 0.0), 1.0)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return final + (1 - final) * shape


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for all parameters, the same update rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)
