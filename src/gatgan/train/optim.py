"""Width-aware learning rate and the optimiser GAT trains with (docs/method.md §6)."""

from __future__ import annotations

import torch
from torch import nn


def width_aware_lr(base_lr: float, width: int, base_width: int = 768, enabled: bool = True) -> float:
    """lr = base_lr * base_width / width: the update of a layer's output grows with the number of
    (unit-variance) input channels, so a wider model needs a proportionally smaller step."""
    return base_lr * base_width / width if enabled else base_lr


def build_optimizer(model: nn.Module, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> torch.optim.AdamW:
    """AdamW; on CUDA the fused kernel (one launch for all parameters, the same update rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)
