"""Differentiable augmentation on latents, the variant GAT trains with (docs/method.md §4.4).

Parameters are drawn once per sample (`sample`) and applied separately (`__call__`), because the
same draw must be reused: across the K MNG levels of a sample, and by the perturbed copy of the
approximated gradient penalty. Every operation is differentiable in x.

The colour operation has two forms (`color`):
- "fixed" (the default): DiffAugment's colour jitter, each step on the current image: brightness
  b is added, the saturation s scales around the per-pixel channel mean of the brightened image,
  the contrast c around its global mean. The effective brightness offset is b.
- "authors": the authors' code as it runs (docs/method.md §8). Both means are taken from a reference
  image *before* brightness and stored with the parameters: x1 = x + b,
  x2 = (x1 - m_px) s + m_px, x3 = (x2 - m) c + m, so b ends up multiplied by s·c (offset std 0.346
  instead of 0.290). The reference is the last level of the stack (for fakes the final image, whose
  channel-mean map therefore enters the noisy levels), and the gradient penalty's perturbed copy
  replays the clean input's means (`means_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

AUGMENTATIONS = ("color", "translation", "cutout", "flip")
COLOR_FORMS = ("fixed", "authors")


@dataclass
class AugmentParams:
    color: torch.Tensor  # [B] bool: colour jitter applies to this sample
    brightness: torch.Tensor  # [B] added offset in [-0.5, 0.5)
    saturation: torch.Tensor  # [B] factor in [0, 2)
    contrast: torch.Tensor  # [B] factor in [0.5, 1.5)
    shift: torch.Tensor  # [B, 2] integer (dy, dx) in latent pixels
    cutout_center: torch.Tensor  # [B, 2] integer (row, column)
    cutout_size: int
    flip: torch.Tensor  # [B] bool: horizontal flip

    def to(self, device: torch.device) -> "AugmentParams":
        return AugmentParams(**{f.name: v.to(device) if torch.is_tensor(v) else v
                                for f in fields(self) for v in [getattr(self, f.name)]})


@dataclass
class DiffAugment:
    policy: str = "color,translation,cutout,flip"  # comma-separated operations; "" = no augmentation
    color_prob: float = 0.5  # fraction of samples whose colour is jittered
    translation_ratio: float = 0.125  # largest shift, as a fraction of the latent size (4 of 32)
    cutout_ratio: float = 0.5  # side of the zeroed square, as a fraction of the latent size
    flip_prob: float = 0.4  # fraction of samples mirrored left-right (the authors' 0.4, not 0.5)
    color: str = "fixed"  # "fixed" or "authors" (see the module docstring)

    def __post_init__(self) -> None:
        self.ops = [op for op in self.policy.split(",") if op]
        unknown = set(self.ops) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from {AUGMENTATIONS}")
        if self.color not in COLOR_FORMS:
            raise ValueError(f"loss.augment.color must be one of {COLOR_FORMS}, got {self.color!r}")

    def sample(self, batch: int, size: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draws every operation's parameters (also those of disabled operations, so that the
        random stream does not depend on the policy)."""
        device = generator.device if generator is not None else None

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        max_shift = int(size * self.translation_ratio + 0.5)
        cutout = int(size * self.cutout_ratio + 0.5)
        return AugmentParams(
            color=uniform(batch) < self.color_prob,
            brightness=uniform(batch) - 0.5,
            saturation=uniform(batch) * 2.0,
            contrast=uniform(batch) + 0.5,
            shift=torch.randint(-max_shift, max_shift + 1, (batch, 2), generator=generator, device=device),
            cutout_center=torch.randint(0, size + (1 - cutout % 2), (batch, 2), generator=generator, device=device),
            cutout_size=cutout,
            flip=uniform(batch) < self.flip_prob,
        )

    def __call__(self, x: torch.Tensor, params: AugmentParams, means_from: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., B, C, H, W]: leading dimensions (the K levels) share each sample's parameters.
        `means_from` [B, C, H, W]: the image whose means the "authors" colour form uses (default:
        the last level of x); ignored by the "fixed" form."""
        lead = x.shape[:-4]
        x = x.reshape(-1, *x.shape[-4:])  # [L, B, C, H, W]
        params = params.to(x.device)
        if "color" in self.ops:
            if self.color == "authors":
                x = _color_with_stored_means(x, params, x[-1] if means_from is None else means_from)
            else:
                x = _color(x, params)
        if "translation" in self.ops:
            x = translate(x, params.shift)
        if "cutout" in self.ops:
            x = x * _cutout_mask(x.shape[-2:], params.cutout_center, params.cutout_size, x.dtype)
        if "flip" in self.ops:
            x = torch.where(params.flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x.reshape(*lead, *x.shape[-4:])


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(1, -1, 1, 1, 1)


def _color(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    jittered = x + _per_sample(p.brightness, x)
    mean = jittered.mean(dim=2, keepdim=True)
    jittered = (jittered - mean) * _per_sample(p.saturation, x) + mean
    mean = jittered.mean(dim=(2, 3, 4), keepdim=True)
    jittered = (jittered - mean) * _per_sample(p.contrast, x) + mean
    return torch.where(p.color.view(1, -1, 1, 1, 1), jittered, x)


def _color_with_stored_means(x: torch.Tensor, p: AugmentParams, reference: torch.Tensor) -> torch.Tensor:
    """The authors' colour op: both means from `reference` [B, C, H, W], before brightness."""
    pixel_mean = reference.mean(dim=1, keepdim=True)[None]  # [1, B, 1, H, W]
    global_mean = reference.mean(dim=(1, 2, 3)).view(1, -1, 1, 1, 1)
    jittered = x + _per_sample(p.brightness, x)
    jittered = (jittered - pixel_mean) * _per_sample(p.saturation, x) + pixel_mean
    jittered = (jittered - global_mean) * _per_sample(p.contrast, x) + global_mean
    return torch.where(p.color.view(1, -1, 1, 1, 1), jittered, x)


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shifts each sample by (dy, dx) whole pixels, filling with zeros."""
    H, W = x.shape[-2:]
    rows = torch.arange(H, device=x.device)[None, :] - shift[:, :1]  # [B, H] source row
    cols = torch.arange(W, device=x.device)[None, :] - shift[:, 1:]  # [B, W]
    valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    batch = torch.arange(x.shape[1], device=x.device)[:, None, None]
    per_pixel = x.permute(1, 3, 4, 0, 2)  # [B, H, W, L, C]: index the three leading axes at once
    gathered = per_pixel[batch, rows.clamp(0, H - 1)[:, :, None], cols.clamp(0, W - 1)[:, None, :]]
    return gathered.permute(3, 0, 4, 1, 2) * valid[None, :, None].to(x.dtype)


def _cutout_mask(shape: torch.Size, center: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    H, W = shape
    start = center - size // 2  # [B, 2]
    rows = torch.arange(H, device=center.device)[None, :]
    cols = torch.arange(W, device=center.device)[None, :]
    inside_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size)
    inside_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + size)
    inside = inside_rows[:, :, None] & inside_cols[:, None, :]
    return (~inside).to(dtype)[None, :, None]
