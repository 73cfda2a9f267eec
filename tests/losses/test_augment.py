"""Differentiable augmentation on latents (docs/method.md §4.4)."""

import dataclasses

import pytest
import torch

from gatgan.losses.augment import AugmentParams, DiffAugment


def sample(augment: DiffAugment, batch: int, size: int, seed: int = 0) -> AugmentParams:
    return augment.sample(batch, size, torch.Generator().manual_seed(seed))


def reference_translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W]: out[b, :, i, j] = x[b, :, i - dy, j - dx], zero where that is outside."""
    out = torch.zeros_like(x)
    B, _, H, W = x.shape
    for b in range(B):
        dy, dx = shift[b].tolist()
        for i in range(H):
            for j in range(W):
                if 0 <= i - dy < H and 0 <= j - dx < W:
                    out[b, :, i, j] = x[b, :, i - dy, j - dx]
    return out


def reference_cutout_mask(B: int, H: int, W: int, center: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(B, 1, H, W)
    for b in range(B):
        cy, cx = center[b].tolist()
        for i in range(cy - size // 2, cy - size // 2 + size):
            for j in range(cx - size // 2, cx - size // 2 + size):
                if 0 <= i < H and 0 <= j < W:
                    mask[b, :, i, j] = 0
    return mask


# ---------------------------------------------------------------------------------------------
# Sharing parameters across levels
# ---------------------------------------------------------------------------------------------

def test_levels_of_a_sample_share_its_parameters():
    torch.manual_seed(0)
    augment = DiffAugment()
    K, B, C, S = 4, 16, 4, 8
    x = torch.randn(K, B, C, S, S)
    params = sample(augment, B, S)
    assert params.flip.any() and not params.flip.all() and params.color.any() and not params.color.all()
    out = augment(x, params)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    for k in range(K):
        torch.testing.assert_close(out[k], augment(x[k], params), rtol=0, atol=1e-6)


def test_identical_levels_stay_identical():
    torch.manual_seed(0)
    augment = DiffAugment()
    one = torch.randn(1, 8, 4, 8, 8)
    out = augment(one.expand(4, -1, -1, -1, -1), sample(augment, 8, 8, seed=3))
    for k in range(1, 4):
        assert torch.equal(out[k], out[0])


def test_sampling_is_deterministic_and_independent_of_the_policy():
    a = sample(DiffAugment(), 32, 16, seed=7)
    b = sample(DiffAugment(), 32, 16, seed=7)
    c = sample(DiffAugment(policy="flip"), 32, 16, seed=7)
    d = sample(DiffAugment(), 32, 16, seed=8)
    for field in dataclasses.fields(AugmentParams):
        va, vb, vc = getattr(a, field.name), getattr(b, field.name), getattr(c, field.name)
        assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)), field.name
        assert torch.equal(torch.as_tensor(va), torch.as_tensor(vc)), field.name
    assert not torch.equal(a.brightness, d.brightness)


# ---------------------------------------------------------------------------------------------
# Individual operations
# ---------------------------------------------------------------------------------------------

def test_translation_moves_content_by_the_sampled_shift_with_zero_fill():
    torch.manual_seed(0)
    augment = DiffAugment(policy="translation")
    x = torch.randn(12, 3, 8, 8)
    params = sample(augment, 12, 8)
    params.shift = torch.randint(-3, 4, (12, 2), generator=torch.Generator().manual_seed(1))
    params.shift[0] = torch.tensor([2, -1])  # a known case: down 2, left 1
    out = augment(x, params)
    torch.testing.assert_close(out, reference_translate(x, params.shift), rtol=0, atol=0)
    assert torch.equal(out[0, :, 2:, :7], x[0, :, :6, 1:])
    assert torch.equal(out[0, :, :2], torch.zeros(3, 2, 8))
    assert torch.equal(out[0, :, :, 7], torch.zeros(3, 8))


@pytest.mark.parametrize("size, max_shift", [(4, 1), (8, 1), (12, 2), (20, 3), (32, 4)])
def test_translation_range_is_plus_minus_size_times_0125_rounded(size, max_shift):
    assert int(size * 0.125 + 0.5) == max_shift
    shift = sample(DiffAugment(), 4000, size).shift
    assert shift.dtype in (torch.int64, torch.int32)
    assert shift.min().item() == -max_shift and shift.max().item() == max_shift


def test_cutout_zeroes_a_size_by_size_square():
    augment = DiffAugment(policy="cutout")
    x = torch.ones(3, 2, 8, 8)
    params = sample(augment, 3, 8)
    assert params.cutout_size == 4  # ratio 0.5 of 8
    params.cutout_center = torch.tensor([[4, 4], [2, 5], [6, 3]])  # squares fully inside
    out = augment(x, params)
    for b, (cy, cx) in enumerate(params.cutout_center.tolist()):
        zeroed = out[b] == 0
        assert zeroed.sum().item() == 2 * 16
        assert zeroed[:, cy - 2:cy + 2, cx - 2:cx + 2].all()


def test_cutout_with_sampled_centres_matches_reference_mask():
    augment = DiffAugment(policy="cutout")
    x = torch.randn(64, 2, 8, 8)
    params = sample(augment, 64, 8, seed=2)
    assert params.cutout_center.min() >= 0 and params.cutout_center.max() <= 8
    out = augment(x, params)
    expected = x * reference_cutout_mask(64, 8, 8, params.cutout_center, params.cutout_size)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_cutout_size_for_32x32_latent_is_16():
    assert sample(DiffAugment(), 2, 32).cutout_size == 16


def test_flip_mirrors_columns_of_selected_samples_only():
    torch.manual_seed(0)
    augment = DiffAugment(policy="flip")
    x = torch.randn(16, 3, 6, 6)
    params = sample(augment, 16, 6)
    out = augment(x, params)
    for b in range(16):
        expected = x[b].flip(-1) if params.flip[b] else x[b]
        assert torch.equal(out[b], expected)


def test_color_jitter_applies_brightness_saturation_contrast_to_selected_samples():
    torch.manual_seed(0)
    augment = DiffAugment(policy="color")
    x = torch.randn(16, 4, 5, 5)
    params = sample(augment, 16, 5)
    out = augment(x, params)
    for b in range(16):
        if not params.color[b]:
            assert torch.equal(out[b], x[b])
            continue
        v = x[b] + params.brightness[b]
        channel_mean = v.mean(0, keepdim=True)
        v = (v - channel_mean) * params.saturation[b] + channel_mean
        mean = v.mean()
        v = (v - mean) * params.contrast[b] + mean
        torch.testing.assert_close(out[b], v, rtol=1e-5, atol=1e-5)


def authors_colour_reference(levels: torch.Tensor, params: AugmentParams, reference: torch.Tensor) -> torch.Tensor:
    """The authors' colour op written out per level and sample from their closed form: both means are
    the reference image's, taken before brightness."""
    out = levels.clone()
    for k in range(levels.shape[0]):
        for b in range(levels.shape[1]):
            if not params.color[b]:
                continue
            pixel_mean = reference[b].mean(0, keepdim=True)
            mean = reference[b].mean()
            v = levels[k, b] + params.brightness[b]
            v = (v - pixel_mean) * params.saturation[b] + pixel_mean
            out[k, b] = (v - mean) * params.contrast[b] + mean
    return out


def test_authors_colour_uses_the_last_levels_means_from_before_brightness_on_every_level():
    torch.manual_seed(1)
    augment = DiffAugment(policy="color", color="authors")
    levels = torch.randn(3, 8, 4, 5, 5)
    params = sample(augment, 8, 5)
    torch.testing.assert_close(augment(levels, params), authors_colour_reference(levels, params, levels[-1]))
    # the fixed form differs wherever the colour op applies
    changed = params.color.nonzero().flatten()
    fixed = DiffAugment(policy="color")(levels, params)
    assert not torch.allclose(fixed[:, changed], augment(levels, params)[:, changed])


def test_authors_colour_replays_the_clean_means_on_a_perturbed_copy():
    torch.manual_seed(2)
    augment = DiffAugment(policy="color", color="authors")
    clean = torch.randn(6, 4, 5, 5)
    perturbed = clean + 0.01 * torch.randn_like(clean)
    params = sample(augment, 6, 5)
    out = augment(perturbed[None], params, means_from=clean)
    torch.testing.assert_close(out, authors_colour_reference(perturbed[None], params, clean))


def test_authors_colour_scales_the_brightness_offset_by_saturation_and_contrast():
    """On a blank image the fixed form adds b (std 1/sqrt(12) = 0.289); the authors' form adds b·s·c
    (std sqrt(1/12 · 4/3 · 13/12) = 0.347)."""
    blank = torch.zeros(1, 1000, 1, 2, 2)
    for form, offset in (("fixed", lambda p: p.brightness), ("authors", lambda p: p.brightness * p.saturation * p.contrast)):
        augment = DiffAugment(policy="color", color_prob=1.0, color=form)
        params = sample(augment, 1000, 2)
        out = augment(blank, params)
        torch.testing.assert_close(out, offset(params).view(1, -1, 1, 1, 1).expand_as(out))


def test_unknown_colour_form_raises():
    with pytest.raises(ValueError, match="loss.augment.color"):
        DiffAugment(color="mine")


def test_colour_parameter_ranges():
    p = sample(DiffAugment(), 20_000, 8)
    assert -0.5 <= p.brightness.min() < -0.49 and 0.49 < p.brightness.max() < 0.5
    assert 0.0 <= p.saturation.min() < 0.01 and 1.99 < p.saturation.max() < 2.0
    assert 0.5 <= p.contrast.min() < 0.51 and 1.49 < p.contrast.max() < 1.5


def test_flip_fraction_is_04_and_colour_fraction_is_05():
    p = sample(DiffAugment(), 40_000, 8, seed=11)
    assert p.flip.float().mean().item() == pytest.approx(0.4, abs=0.01)
    assert p.color.float().mean().item() == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------------------------
# Policy handling and differentiability
# ---------------------------------------------------------------------------------------------

def test_empty_policy_is_identity():
    augment = DiffAugment(policy="")
    assert augment.ops == []
    x = torch.randn(4, 3, 2, 8, 8)
    assert torch.equal(augment(x, sample(augment, 3, 8)), x)


def test_unknown_operation_raises():
    with pytest.raises(ValueError, match="rotate"):
        DiffAugment(policy="color,rotate")


def test_augmentation_is_differentiable():
    augment = DiffAugment()
    params = sample(augment, 3, 6, seed=4)
    x = torch.randn(2, 3, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: augment(t, params), (x,), eps=1e-6, atol=1e-6)
    augment(x, params).square().sum().backward()
    assert x.grad.abs().sum() > 0
