"""Relativistic pairing GAN loss (R3GAN style, docs/method.md §4.2): each real sample is paired with the
fake sample at the same batch index and D is asked to rank the pair, not to classify each alone."""

import torch
import torch.nn.functional as F


def discriminator_relativistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample softplus(-(D(real) - D(fake)))."""
    return F.softplus(fake_logits - real_logits)


def generator_relativistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample softplus(-(D(fake) - D(real))); pass real logits computed without gradient."""
    return F.softplus(real_logits - fake_logits)
