"""REPA on the discriminator (docs/method.md §5): the loss, the geometry of its targets, and where its
gradients go."""

import dataclasses
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatgan.encoders.base import Teacher, TeacherFeatures
from gatgan.losses.augment import DiffAugment
from gatgan.losses.mng import MNG
from gatgan.losses.objective import GATObjective, PenaltySettings
from gatgan.losses.repa import (REPATargets, alignment_loss, augment_images_like_latents,
                                generator_alignment_loss)
from gatgan.models.discriminator import Discriminator
from gatgan.models.generator import Generator

LATENT, FACTOR, CHANNELS, CLASSES, K, TEACHER_DIM = 8, 4, 4, 5, 4, 6


class PoolingTeacher(Teacher):
    """A tiny frozen 'vision model': a fixed 1x1 projection of 4x4-pooled pixels (patch map) and
    of the image mean ([cls]). Enough to check shapes, gradients and geometry."""

    kind = "test"
    dim = TEACHER_DIM

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(1, TEACHER_DIM, 1)
        self.requires_grad_(False)

    def preprocess(self, images):
        return images.float() / 255

    def features(self, x):
        patches = self.mix(F.avg_pool2d(x, FACTOR))
        return TeacherFeatures(cls=patches.mean(dim=(2, 3)) + 1.0, patches=patches)


def reference_alignment(projected, cls, patches):
    """Loops over samples and tokens; patches already on the projected grid."""
    losses = []
    for b in range(projected.shape[0]):
        cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
        total = 1 - cos(projected[b, 0], cls[b])
        grid = patches.shape[-1]
        per_patch = [1 - cos(projected[b, 1 + i * grid + j], patches[b, :, i, j])
                     for i in range(grid) for j in range(grid)]
        losses.append(total + sum(per_patch) / len(per_patch))
    return torch.tensor(losses)


def test_alignment_loss_matches_a_token_by_token_reference():
    g = torch.Generator().manual_seed(0)
    projected = torch.randn(3, 1 + 16, 5, generator=g)
    target = TeacherFeatures(torch.randn(3, 5, generator=g), torch.randn(3, 5, 4, 4, generator=g))
    torch.testing.assert_close(alignment_loss(projected, target),
                               reference_alignment(projected, target.cls, target.patches), rtol=1e-5, atol=1e-6)


def test_teacher_patches_are_resized_bicubically_to_the_token_grid():
    g = torch.Generator().manual_seed(1)
    projected = torch.randn(2, 1 + 4, 5, generator=g)
    target = TeacherFeatures(torch.randn(2, 5, generator=g), torch.randn(2, 5, 16, 16, generator=g))
    resized = F.interpolate(target.patches, size=(2, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(alignment_loss(projected, target),
                               reference_alignment(projected, target.cls, resized), rtol=1e-5, atol=1e-6)


def test_perfectly_aligned_tokens_cost_nothing_and_opposite_ones_cost_four():
    g = torch.Generator().manual_seed(2)
    target = TeacherFeatures(torch.randn(2, 5, generator=g), torch.randn(2, 5, 3, 3, generator=g))
    aligned = torch.cat([target.cls[:, None], target.patches.flatten(2).transpose(1, 2)], dim=1) * 3.0
    torch.testing.assert_close(alignment_loss(aligned, target), torch.zeros(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(alignment_loss(-aligned, target), torch.full((2,), 4.0), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        alignment_loss(torch.randn(2, 1 + 5, 5), target)


def test_the_generator_uses_its_mean_token_as_the_cls_token():
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 9, 5, generator=g)
    target = TeacherFeatures(torch.randn(2, 5, generator=g), torch.randn(2, 5, 3, 3, generator=g))
    expected = alignment_loss(torch.cat([tokens.mean(1, keepdim=True), tokens], 1), target)
    torch.testing.assert_close(generator_alignment_loss(tokens, target), expected)


def test_translated_and_flipped_images_line_up_with_the_augmented_latents():
    """Stand-in latents = images pooled by the downsampling factor. Augmenting the latents with
    DiffAugment and the images with the same parameters (shift x factor) must give images whose
    pooling equals the augmented latents: the teacher's patches sit under D's tokens."""
    g = torch.Generator().manual_seed(4)
    images = torch.rand(6, 1, LATENT * FACTOR, LATENT * FACTOR, generator=g) * 255
    latents = F.avg_pool2d(images, FACTOR)
    augment = DiffAugment(policy="translation,flip", flip_prob=0.5)
    params = augment.sample(6, LATENT, g)
    assert params.shift.abs().sum() > 0 and params.flip.any() and not params.flip.all()
    expected = augment(latents[None], params)[0]
    moved = augment_images_like_latents(images, params, augment, LATENT)
    torch.testing.assert_close(F.avg_pool2d(moved, FACTOR), expected, rtol=1e-5, atol=1e-4)
    # The authors' scaling (shift * latent // image pixels: 0 or -1) leaves the targets misaligned.
    authors = dataclasses.replace(params, shift=params.shift * LATENT // (LATENT * FACTOR))
    wrong = augment_images_like_latents(images, authors, augment, LATENT * FACTOR)  # factor 1: shift as given
    assert not torch.allclose(F.avg_pool2d(wrong, FACTOR), expected, atol=1.0)


def test_colour_and_cutout_do_not_touch_the_teacher_input():
    g = torch.Generator().manual_seed(5)
    images = torch.rand(3, 1, 32, 32, generator=g) * 255
    augment = DiffAugment(policy="color,cutout")
    params = augment.sample(3, LATENT, g)
    torch.testing.assert_close(augment_images_like_latents(images, params, augment, LATENT), images)


def _models(align_generator=False):
    torch.manual_seed(0)
    G = Generator(input_size=LATENT, channels=CHANNELS, patch_size=2, width=32, depth=4, num_heads=2,
                  num_classes=CLASSES, z_dim=16, num_exits=K, projector_dim=24,
                  teacher_dim=TEACHER_DIM if align_generator else None)
    D = Discriminator(input_size=LATENT, channels=CHANNELS, patch_size=2, width=32, depth=2, num_heads=2,
                      num_classes=CLASSES, num_levels=K, cmap_dim=32, projector_dim=24, teacher_dim=TEACHER_DIM)
    return G, D


def _objective(teacher, weight=1.0):
    augment = DiffAugment()
    return GATObjective(augment, MNG(num_levels=K), PenaltySettings(), REPATargets(teacher, augment, LATENT), weight)


def _batch(G):
    g = torch.Generator().manual_seed(6)
    real = torch.randn(4, CHANNELS, LATENT, LATENT, generator=g)
    images = torch.randint(0, 256, (4, 1, LATENT * FACTOR, LATENT * FACTOR), generator=g, dtype=torch.uint8)
    y = torch.randint(0, CLASSES, (4,), generator=g)
    z = torch.randn(4, 16, generator=g)
    return real, images, y, z


def test_repa_gradients_reach_the_discriminator_only():
    G, D = _models()
    teacher = PoolingTeacher()
    real, images, y, z = _batch(G)
    fake = G(z, y, all_exits=True).detach()
    loss, stats = _objective(teacher).discriminator_loss(D, real, fake, y, torch.Generator().manual_seed(7), images)
    loss.backward()
    assert "loss/REPA" in stats and 0 < stats["loss/REPA"] < 4
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in D.projector.parameters())
    assert all(p.grad is None for p in G.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_the_repa_term_is_the_alignment_of_the_real_branch_with_augmented_targets():
    G, D = _models()
    teacher = PoolingTeacher()
    real, images, y, z = _batch(G)
    fake = G(z, y, all_exits=True).detach()
    with_repa = _objective(teacher, weight=1.0)
    without = _objective(teacher, weight=0.0)
    loss_on, stats = with_repa.discriminator_loss(D, real, fake, y, torch.Generator().manual_seed(8), images)
    loss_off, _ = without.discriminator_loss(D, real, fake, y, torch.Generator().manual_seed(8), images)
    torch.testing.assert_close(loss_on - loss_off, stats["loss/REPA"], rtol=1e-4, atol=1e-5)
    # Recompute the term by hand: same augmentation parameters (first draw of the generator).
    g = torch.Generator().manual_seed(8)
    params = with_repa.augment.sample(4, LATENT, g)
    eps = torch.randn((K, 4, CHANNELS, LATENT, LATENT), generator=g)
    inputs = with_repa.perturb(with_repa.real_levels(real), params, eps)
    _, projected = D(inputs, y, project_first=4)
    target = teacher(augment_images_like_latents(images.float(), params, with_repa.augment, LATENT))
    torch.testing.assert_close(alignment_loss(projected, target).mean(), stats["loss/REPA"], rtol=1e-4, atol=1e-5)


def test_generator_alignment_trains_the_generator_not_the_discriminator():
    G, D = _models(align_generator=True)
    teacher = PoolingTeacher()
    real, images, y, z = _batch(G)
    D.requires_grad_(False)
    fake, projected = G(z, y, all_exits=True, project=True)
    assert projected.shape == (4, (LATENT // 2) ** 2, TEACHER_DIM)
    loss, stats = _objective(teacher).generator_loss(D, real, fake, y, torch.Generator().manual_seed(9),
                                                     projected, images)
    loss.backward()
    assert "loss/REPA_G" in stats
    assert all(p.grad is not None for p in G.projector.parameters())
    assert all(p.grad is None for p in D.parameters())
    with pytest.raises(ValueError, match="projector"):
        _models()[0](z, y, project=True)
