"""REPA for the discriminator: align its last-block tokens of real images with a frozen teacher's
features (docs/method.md §5), so that D learns semantic features and gives G more useful feedback.

Geometry. D sees real latents after DiffAugment; the teacher must see the same picture, so the raw
image gets the same flip and the same translation, converted from latent pixels to image pixels
(x downsampling factor). The authors' code scales the translation by the inverse factor, which
rounds every shift to 0 or -1 image pixel: their teacher targets are not translated and do not
line up with D's tokens for translated samples. Here they do (tested). Colour jitter and cutout
are not applied to the teacher's input, as in the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..encoders.base import Teacher, TeacherFeatures
from .augment import AugmentParams, DiffAugment, translate


@dataclass
class REPASettings:
    # "" turns REPA off. "data": the teacher stored with the prepared data (`prepare --teacher`);
    # a directory holding a saved teacher; or "dinov2_vitb14:/path/dinov2_vitb14_pretrain.pth",
    # "timm:<model name>:<weights file>" (see gatgan.encoders.load_teacher).
    teacher: str = ""
    weight: float = 1.0  # lambda_REPA (docs/method.md §5)
    align_generator: bool = False  # also align G's last-block tokens (an open question, off in the paper)
    # Read the teacher features stored by `prepare --teacher-features` instead of running the
    # teacher (exact for flips; refused with DiffAugment's translation, which features cannot follow).
    precomputed: bool = False


def alignment_loss(projected: torch.Tensor, target: TeacherFeatures) -> torch.Tensor:
    """projected [B, 1 + N, dim] ([cls] first, N = grid²) -> per-sample loss [B]:
    (1 - cos) of the [cls] pair plus the mean over patches of (1 - cos). The teacher's patch map is
    resized bicubically to the projected tokens' grid when the two differ."""
    grid = round((projected.shape[1] - 1) ** 0.5)
    if grid * grid != projected.shape[1] - 1:
        raise ValueError(f"{projected.shape[1] - 1} patch tokens do not form a square grid")
    patches = target.patches.float()
    if patches.shape[-2:] != (grid, grid):
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    targets = torch.cat([target.cls.float()[:, None], patches.flatten(2).transpose(1, 2)], dim=1)
    cosine = F.cosine_similarity(projected.float(), targets, dim=-1)  # [B, 1 + N]
    return (1 - cosine[:, 0]) + (1 - cosine[:, 1:]).mean(dim=1)


def generator_alignment_loss(projected_tokens: torch.Tensor, target: TeacherFeatures) -> torch.Tensor:
    """G has no [cls] token: its mean projected token stands in for one."""
    summary = projected_tokens.mean(dim=1, keepdim=True)
    return alignment_loss(torch.cat([summary, projected_tokens], dim=1), target)


def augment_images_like_latents(images: torch.Tensor, params: AugmentParams, augment: DiffAugment,
                                latent_size: int) -> torch.Tensor:
    """The flip and translation that DiffAugment gave the latents, applied to raw images
    [B, C, H, W]: shifts are scaled from latent pixels to image pixels."""
    params = params.to(images.device)
    if "translation" in augment.ops:
        factor = images.shape[-1] // latent_size
        images = translate(images[None], params.shift * factor)[0]
    if "flip" in augment.ops:
        images = torch.where(params.flip.view(-1, 1, 1, 1), images.flip(-1), images)
    return images


# What the REPA targets are made from: raw images [B, C, H, W], or precomputed teacher features
# of the images as read and of their mirror images.
REPAInput = torch.Tensor | tuple[TeacherFeatures, TeacherFeatures]


class REPATargets:
    """Teacher features of the real batch as D sees it (augmented) or as G should produce it."""

    def __init__(self, teacher: Teacher | None, augment: DiffAugment, latent_size: int):
        self.teacher, self.augment, self.latent_size = teacher, augment, latent_size

    def __call__(self, source: REPAInput, params: AugmentParams | None = None) -> TeacherFeatures:
        if isinstance(source, tuple):
            return self._precomputed(*source, params)
        images = source.float()
        if params is not None:
            images = augment_images_like_latents(images, params, self.augment, self.latent_size)
        return self.teacher(images)

    def _precomputed(self, as_read: TeacherFeatures, mirrored: TeacherFeatures,
                     params: AugmentParams | None) -> TeacherFeatures:
        if params is not None and "translation" in self.augment.ops:
            raise ValueError("precomputed teacher features cannot follow DiffAugment's translation")
        if params is None or "flip" not in self.augment.ops:
            return as_read
        flip = params.flip.to(as_read.cls.device)
        return TeacherFeatures(torch.where(flip[:, None], mirrored.cls, as_read.cls),
                               torch.where(flip[:, None, None, None], mirrored.patches, as_read.patches))
