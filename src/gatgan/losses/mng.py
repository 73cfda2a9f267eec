"""Multi-level Noise-perturbed image Guidance (MNG): how the K generator exits and K copies of the
real latent are corrupted before the discriminator sees them (docs/method.md §4.5).

Three forms:
- "cumulative" (default, the authors' code): x_k = (1 - t_k) x_k + n_k with std(n_k) = t_k, where
  the noise is built from the cleanest level outwards, n_k = decay_k n_{k+1} + fresh noise, so that
  K copies of one real latent form one consistent forward-noising trajectory.
- "independent": the same interpolation with independent noise per level.
- "vp": the paper's variance-preserving alpha_k x + sqrt(1 - alpha_k^2) eps, with alpha_K = 1.
- "msg": the paper's negative control (docs/method.md §9.2), MSG-GAN-style multi-scale supervision
  without noise: level k is average-pooled by 2^(K-k) and scaled back up (nearest), so exit 1 is
  judged at the coarsest scale and the last exit at full resolution. D sees a pyramid of one real
  image, which it can check for cross-scale consistency: the shortcut MNG's noise removes.

Schedules give t_k for exits 1..K (most noisy first). The exponential schedule doubles the signal
coefficient per level: t_k = 1 - min_signal^(1 - k/(K-1)) + floor, i.e. [0.885, 0.76, 0.51, 0.01]
for K = 4; "linear" spaces the signal coefficient linearly between the same end points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MNG_FORMS = ("cumulative", "independent", "vp", "msg")
MNG_SCHEDULES = ("exponential", "linear")


def noise_levels(num_levels: int, schedule: str = "exponential", min_signal: float = 0.125,
                 floor: float = 0.01) -> torch.Tensor:
    """Noise scale t_k for levels 1..K (float64). With K = 1 (MNG off) only the final output is
    kept, perturbed by `floor` as the authors' final level is."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if schedule not in MNG_SCHEDULES:
        raise ValueError(f"unknown MNG schedule {schedule!r}; choose from {MNG_SCHEDULES}")
    progress = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64) if num_levels > 1 \
        else torch.ones(1, dtype=torch.float64)
    if schedule == "exponential":
        signal = min_signal ** (1.0 - progress)
    else:
        signal = min_signal + (1.0 - min_signal) * progress
    return 1.0 - signal + floor


@dataclass
class MNG:
    """Applies one MNG form to [K, B, C, H, W] stacks. Randomness comes in as `eps` (standard
    normal, same shape) so that a second pass (the approximated gradient penalty) can reuse
    exactly the same noise."""

    num_levels: int = 4  # K generator exits judged by D; 1 = MNG off (the final image only)
    schedule: str = "exponential"  # how t_k spreads over the levels: exponential or linear
    form: str = "cumulative"  # cumulative (the authors' code), independent, vp (the paper) or msg (no noise)
    min_signal: float = 0.125  # the signal coefficient of the noisiest level
    floor: float = 0.01  # noise added to every level, also the final image (t_K)

    def __post_init__(self) -> None:
        if self.form not in MNG_FORMS:
            raise ValueError(f"unknown MNG form {self.form!r}; choose from {MNG_FORMS}")
        self.t = noise_levels(self.num_levels, self.schedule, self.min_signal, self.floor)

    def noise_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal [K], mixing [K, K]) such that perturbed_k = signal_k x_k + sum_j mixing[k, j] eps_j.

        Written as a matrix so that the cumulative recursion, the independent and the VP form are
        one code path and the covariance of the noise is explicit (mixing @ mixing.T)."""
        K, t = self.num_levels, self.t
        if self.form == "msg":
            raise ValueError("the msg form resizes instead of adding noise; it has no noise coefficients")
        if self.form == "vp":
            alpha = 1.0 - t + self.floor  # alpha_K = 1: the paper keeps the last level clean
            return alpha, torch.diag((1.0 - alpha.square()).clamp_min(0).sqrt())
        if self.form == "independent":
            return 1.0 - t, torch.diag(t)
        mixing = torch.zeros(K, K, dtype=torch.float64)
        previous_t, previous_row = torch.tensor(0.0, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
        for k in reversed(range(K)):  # from the cleanest level (K) to the noisiest (1)
            decay = (1.0 - t[k]) / (1.0 - previous_t)
            row = decay * previous_row
            row[k] = (t[k].square() - (previous_t * decay).square()).clamp_min(0).sqrt()
            mixing[k] = row
            previous_t, previous_row = t[k], row
        return 1.0 - t, mixing

    def __call__(self, levels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        if levels.shape[0] != self.num_levels or eps.shape != levels.shape:
            raise ValueError(f"expected levels and eps of shape [{self.num_levels}, B, C, H, W], "
                             f"got {tuple(levels.shape)} and {tuple(eps.shape)}")
        if self.form == "msg":
            return multi_scale(levels)
        signal, mixing = (c.to(levels.dtype).to(levels.device) for c in self.noise_coefficients())
        noise = torch.einsum("kj,j...->k...", mixing, eps)
        return signal.view(-1, 1, 1, 1, 1) * levels + noise


def multi_scale(levels: torch.Tensor) -> torch.Tensor:
    """[K, B, C, H, W] -> level k seen at resolution H / 2^(K-k), at the original tensor size."""
    K, B, C, H, W = levels.shape
    factor = 2 ** (K - 1)
    if H % factor or W % factor:
        raise ValueError(f"the msg form needs latents divisible by 2^(K-1) = {factor}, got {H}x{W}")
    out = []
    for k in range(K):
        scale = 2 ** (K - 1 - k)
        out.append(F.interpolate(F.avg_pool2d(levels[k], scale), scale_factor=scale, mode="nearest"))
    return torch.stack(out)
