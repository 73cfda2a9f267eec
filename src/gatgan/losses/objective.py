"""The GAT objectives: what one discriminator step and one generator step minimise, combining
DiffAugment, MNG, the relativistic pairing loss, R1/R2 and REPA (docs/method.md §4, §5).

Randomness is always drawn from the `torch.Generator` passed in, never from shared mutable
state: the z that the D and G steps share is an explicit argument of the trainer, not a side
effect of this module (unlike the authors' code, where sharing it was an accident).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.discriminator import stack_levels
from .adversarial import discriminator_relativistic_loss, generator_relativistic_loss
from .augment import AugmentParams, DiffAugment
from .mng import MNG
from .penalty import PENALTY_MODES, exact_gradient_penalty, finite_difference_penalty
from .repa import REPAInput, REPATargets, alignment_loss, generator_alignment_loss


@dataclass
class PenaltySettings:
    mode: str = "approx"  # "approx" (the authors' default), "exact" (autograd R1/R2) or "none"
    sigma: float = 0.01  # the approximated penalty's input perturbation (finite difference step)
    gamma_r1: float = 0.1  # weighted by gamma / 2, as in the code
    gamma_r2: float = 0.1
    # Lazy regularisation (StyleGAN2; the authors' R1_every): the penalty on one D step in `every`,
    # weighted `every` times, so its average strength is unchanged. 1 = every step, as the authors run.
    every: int = 1

    def __post_init__(self) -> None:
        if self.mode not in PENALTY_MODES:
            raise ValueError(f"unknown penalty mode {self.mode!r}; choose from {PENALTY_MODES}")
        if self.every < 1:
            raise ValueError(f"loss.penalty.every must be >= 1, got {self.every}")


class GATObjective:
    def __init__(self, augment: DiffAugment, mng: MNG, penalty: PenaltySettings,
                 repa: REPATargets | None = None, repa_weight: float = 1.0):
        self.augment, self.mng, self.penalty = augment, mng, penalty
        self.repa, self.repa_weight = repa, repa_weight

    @property
    def num_levels(self) -> int:
        return self.mng.num_levels

    def _draw(self, like: torch.Tensor, generator: torch.Generator) -> tuple[AugmentParams, torch.Tensor]:
        """One sample's augmentation parameters and MNG noise; `like` is a [K, B, C, H, W] stack."""
        params = self.augment.sample(like.shape[1], like.shape[-1], generator)
        eps = torch.randn(like.shape, generator=generator, device=generator.device).to(like)
        return params, eps

    def perturb(self, levels: torch.Tensor, params: AugmentParams, eps: torch.Tensor,
                means_from: torch.Tensor | None = None) -> torch.Tensor:
        """[K, B, C, H, W] -> D's input [B, K*C, H, W]: augment, then MNG noise, then stack.
        `means_from`: the clean image whose colour means a perturbed copy replays (authors' form)."""
        return stack_levels(self.mng(self.augment(levels, params, means_from), eps))

    def real_levels(self, real: torch.Tensor) -> torch.Tensor:
        return real.unsqueeze(0).expand(self.num_levels, *real.shape)

    def discriminator_loss(
        self, D: nn.Module, real: torch.Tensor, fake_levels: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator, repa_input: REPAInput | None = None, penalize: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """real [B, C, H, W] clean latents; fake_levels [K, B, C, H, W] detached generator exits;
        repa_input: the raw images of `real` (or their precomputed teacher features), for REPA;
        penalize: whether this step carries the (lazy) R1/R2 penalty.

        All of D's inputs go through ONE forward call (real, fake and, for the approximated
        penalty, their perturbed copies), which is both faster and what DDP expects."""
        real_params, real_eps = self._draw(fake_levels, generator)
        fake_params, fake_eps = self._draw(fake_levels, generator)
        settings = self.penalty
        mode = settings.mode if penalize else "none"
        inputs = [self.perturb(self.real_levels(real), real_params, real_eps),
                  self.perturb(fake_levels, fake_params, fake_eps)]
        if mode == "approx":
            # R1 perturbs the clean real latent once (then repeats it to K levels); R2 perturbs each
            # fake level independently. Same augmentation and MNG noise as the main pass.
            real_delta = torch.randn(real.shape, generator=generator, device=generator.device).to(real) * settings.sigma
            fake_delta = torch.randn(fake_levels.shape, generator=generator, device=generator.device)
            fake_delta = fake_delta.to(fake_levels) * settings.sigma
            inputs += [self.perturb(self.real_levels(real + real_delta), real_params, real_eps, means_from=real),
                       self.perturb(fake_levels + fake_delta, fake_params, fake_eps, means_from=fake_levels[-1])]
        elif mode == "exact":
            real = real.detach().requires_grad_(True)
            fake_levels = fake_levels.detach().requires_grad_(True)
            inputs = [self.perturb(self.real_levels(real), real_params, real_eps),
                      self.perturb(fake_levels, fake_params, fake_eps)]
        # The exact penalty backpropagates through a gradient: only the math attention kernel has
        # the second derivative (the fused CPU/flash kernels do not).
        kernel = sdpa_kernel(SDPBackend.MATH) if mode == "exact" else contextlib.nullcontext()
        with kernel:
            if self.repa is None:
                logits = D(torch.cat(inputs), y.repeat(len(inputs)))
            else:  # REPA aligns the real branch only (the first B samples of the batched call)
                logits, projected = D(torch.cat(inputs), y.repeat(len(inputs)), project_first=real.shape[0])
            logits = logits.float().chunk(len(inputs))
        real_logits, fake_logits = logits[0], logits[1]
        adversarial = discriminator_relativistic_loss(real_logits, fake_logits)
        stats = {"loss/D_adv": adversarial.mean().detach(),
                 "D/real_logit": real_logits.mean().detach(), "D/fake_logit": fake_logits.mean().detach()}
        loss = adversarial.mean()
        if mode != "none":
            if mode == "approx":
                r1 = finite_difference_penalty(real_logits, logits[2], settings.sigma)
                r2 = finite_difference_penalty(fake_logits, logits[3], settings.sigma)
            else:
                r1 = exact_gradient_penalty(real_logits, real)
                r2 = exact_gradient_penalty(fake_logits, fake_levels, batch_dim=1)
            weight = settings.every / 2
            loss = loss + weight * settings.gamma_r1 * r1.mean() + weight * settings.gamma_r2 * r2.mean()
            stats |= {"loss/R1": r1.mean().detach(), "loss/R2": r2.mean().detach()}
        if self.repa is not None:
            if repa_input is None:
                raise ValueError("REPA is on but the batch has neither real images nor teacher features")
            alignment = alignment_loss(projected, self.repa(repa_input, real_params)).mean()
            loss = loss + self.repa_weight * alignment
            stats["loss/REPA"] = alignment.detach()
        stats["loss/D"] = loss.detach()
        return loss, stats

    def generator_loss(
        self, D: nn.Module, real: torch.Tensor, fake_levels: torch.Tensor, y: torch.Tensor,
        generator: torch.Generator, projected_tokens: torch.Tensor | None = None,
        repa_input: REPAInput | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """fake_levels carry gradient to G; D's own parameters should be frozen by the caller.
        With `projected_tokens` (G's REPA projections, when G is aligned too) G's tokens are
        pulled towards the teacher's features of the paired real image, which has the same class
        (the un-augmented image: G's output is not augmented)."""
        real_params, real_eps = self._draw(fake_levels, generator)
        fake_params, fake_eps = self._draw(fake_levels, generator)
        with torch.no_grad():
            real_logits = D(self.perturb(self.real_levels(real), real_params, real_eps), y).float()
        fake_logits = D(self.perturb(fake_levels, fake_params, fake_eps), y).float()
        loss = generator_relativistic_loss(real_logits, fake_logits).mean()
        stats = {"loss/G_adv": loss.detach()}
        if projected_tokens is not None:
            alignment = generator_alignment_loss(projected_tokens, self.repa(repa_input)).mean()
            loss = loss + self.repa_weight * alignment
            stats["loss/REPA_G"] = alignment.detach()
        stats["loss/G"] = loss.detach()
        return loss, stats
