"""Generator analyses (gatgan.eval.analysis) on a tiny generator: block skipping, the block-ablation
curve against a per-sample reference that ablates by zeroing gates instead of hooking, per-block
features, PCA images on synthetic features with a known structure, and w-space paths."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from gatgan.eval.analysis import (
    block_contributions,
    block_features,
    class_interpolation_w,
    feature_pca_images,
    interpolate,
    seed_interpolation_w,
    skip_block,
    truncation_sweep_w,
)
from gatgan.models import Generator, build_generator
from gatgan.models.layers import unpatchify
from gatgan.sample import seeded_normal

GRID = 4  # GAT-Nano/2 on 8x8 latents


@pytest.fixture
def generator() -> Generator:
    torch.manual_seed(0)
    G = build_generator("GAT-Nano/2", input_size=8, channels=4, num_classes=3).eval().requires_grad_(False)
    G.w_avg.normal_()  # a non-trivial truncation centre per class
    return G


def _inputs(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return seeded_normal(list(range(n)), 64), torch.arange(n) % 3


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


def _silence_gates(G: Generator, index: int) -> None:
    """Zero gate_attn and gate_mlp (chunks 1 and 3 of scale_attn, gate_attn, scale_mlp, gate_mlp):
    the block then adds exactly nothing to its input."""
    linear, width = G.blocks[index].modulation[-1], G.width
    for chunk in (1, 3):
        linear.weight[chunk * width:(chunk + 1) * width] = 0
        linear.bias[chunk * width:(chunk + 1) * width] = 0


def _reference_contributions(G: Generator, z, y, render, truncation: float = 1.0) -> list[float]:
    """One sample at a time; block i ablated in a copy whose gates are zeroed (no hooks)."""
    out = []
    for index in range(G.depth):
        ablated_G = copy.deepcopy(G)
        _silence_gates(ablated_G, index)
        total = 0.0
        for zi, yi in zip(z, y):
            w = G.truncate(G.mapping(zi[None], yi[None]), yi[None], truncation)
            total += float(_l2(render(G.synthesize(w)), render(ablated_G.synthesize(w)))[0])
        out.append(total / len(z))
    return out


# ---------------------------------------------------------------- skip_block


def test_skip_block_returns_input_and_is_removed(generator):
    w = generator.mapping(*_inputs(2))
    x = torch.randn(2, GRID * GRID, generator.width)
    baseline = generator.synthesize(w)
    with skip_block(generator, 2):
        assert torch.equal(generator.blocks[2](x, w, generator.rope), x)
        assert not torch.equal(generator.blocks[1](x, w, generator.rope), x)
        assert not torch.equal(generator.synthesize(w), baseline)
    assert torch.equal(generator.synthesize(w), baseline)
    assert all(not block._forward_hooks for block in generator.blocks)


def test_skip_block_removed_after_error(generator):
    w = generator.mapping(*_inputs(2))
    baseline = generator.synthesize(w)
    with pytest.raises(RuntimeError, match="boom"):
        with skip_block(generator, 0):
            raise RuntimeError("boom")
    assert torch.equal(generator.synthesize(w), baseline)
    assert not generator.blocks[0]._forward_hooks


@pytest.mark.parametrize("index", [-1, 4])
def test_skip_block_rejects_bad_index(generator, index):
    with pytest.raises(IndexError, match="out of range"):
        with skip_block(generator, index):
            pass


# ---------------------------------------------------------------- block_contributions


def test_contributions_zero_for_gated_off_block(generator):
    _silence_gates(generator, 1)
    scores = block_contributions(generator, *_inputs(), render=lambda x: x, distance=_l2)
    assert len(scores) == generator.depth
    assert scores[1] == 0.0
    assert all(s > 0 for i, s in enumerate(scores) if i != 1)


@pytest.mark.parametrize("truncation", [1.0, 0.5])
def test_contributions_match_per_sample_reference(generator, truncation):
    z, y = _inputs()
    render = torch.tanh
    scores = block_contributions(generator, z, y, render, _l2, truncation=truncation, batch_size=2)
    expected = _reference_contributions(generator, z, y, render, truncation)
    np.testing.assert_allclose(scores, expected, rtol=1e-4)


def test_contributions_batch_size_independent_and_batched(generator):
    z, y = _inputs()
    seen = []

    def render(x):
        seen.append(len(x))
        return x

    results = [block_contributions(generator, z, y, render, _l2, batch_size=b) for b in (1, 2, 5, 64)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-5)
    assert max(seen) == 5 and set(seen) == {1, 2, 5}


def test_contributions_truncation_zero_uses_class_average(generator):
    """At truncation 0 every sample of a class has w = w_avg[class]: the score equals that of the
    averages themselves, whatever z is."""
    z, y = _inputs(3)
    scores = block_contributions(generator, z, y, torch.tanh, _l2, truncation=0.0)
    other_z = seeded_normal([10, 11, 12], 64)
    np.testing.assert_allclose(block_contributions(generator, other_z, y, torch.tanh, _l2, truncation=0.0),
                               scores, rtol=1e-5)
    assert not np.allclose(block_contributions(generator, z, y, torch.tanh, _l2), scores)


def test_contributions_reject_bad_input(generator):
    z, y = _inputs(2)
    with pytest.raises(ValueError, match="one value per pair"):
        block_contributions(generator, z, y, lambda x: x, lambda a, b: (a - b).abs().sum())
    with pytest.raises(ValueError, match="labels"):
        block_contributions(generator, z, torch.tensor([0, 3]), lambda x: x, _l2)
    with pytest.raises(ValueError, match="one label per z"):
        block_contributions(generator, z, y[:1], lambda x: x, _l2)
    with pytest.raises(ValueError, match="z must be"):
        block_contributions(generator, z[:, :10], y, lambda x: x, _l2)
    with pytest.raises(ValueError, match="batch_size"):
        block_contributions(generator, z, y, lambda x: x, _l2, batch_size=0)


# ---------------------------------------------------------------- block_features


def test_block_features_match_manual_pass(generator):
    w = generator.mapping(*_inputs(3))
    features = block_features(generator, w)
    assert len(features) == generator.depth
    assert all(f.shape == (3, GRID * GRID, generator.width) for f in features)
    x = generator.pos_embed.expand(3, -1, -1)
    for block, feature in zip(generator.blocks, features):
        x = block(x, w, generator.rope)
        torch.testing.assert_close(feature, x, rtol=0, atol=0)
    # The exits read exactly these tokens: summing their heads rebuilds the image.
    heads = [unpatchify(head(features[(k + 1) * generator.exit_every - 1], w), generator.patch_size,
                        generator.channels) for k, head in enumerate(generator.exits)]
    torch.testing.assert_close(sum(heads), generator.synthesize(w))
    assert all(not block._forward_hooks for block in generator.blocks)


# ---------------------------------------------------------------- feature_pca_images


def _structured_features() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens = 3 * column * u + row * v (u, v orthonormal, u's largest loading positive): the first
    principal component is the column, the second the row."""
    basis, _ = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    u, v = basis.T
    u = u * u[u.abs().argmax()].sign()
    rows, cols = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    tokens = 3 * cols.reshape(-1, 1) * u + rows.reshape(-1, 1) * v
    return tokens.expand(2, -1, -1).float(), u, v


def test_pca_images_shape_and_dtype(generator):
    images = feature_pca_images(block_features(generator, generator.mapping(*_inputs(3))), GRID)
    assert images.shape == (generator.depth, 3, GRID, GRID, 3) and images.dtype == np.uint8
    assert all(images[i].std() > 0 for i in range(generator.depth))


def test_pca_first_channel_follows_known_direction():
    features, _, _ = _structured_features()
    image = feature_pca_images([features], GRID)[0].astype(int)
    red, green = image[..., 0], image[..., 1]
    assert (np.diff(red, axis=2) >= 0).all() and (red[:, :, -1] > red[:, :, 0]).all()
    assert (np.ptp(red, axis=1) <= 1).all()  # constant down each column
    assert (np.ptp(green, axis=2) <= 1).all()  # the row component does not leak into columns
    assert (image[..., 2] == 128).all()  # rank 2: no third component to show


def test_pca_robust_percentiles_clip_outliers():
    features, u, _ = _structured_features()
    features = features.clone()
    features[0, 0] += 1000 * u.float()  # one extreme token
    image = feature_pca_images([features], GRID, percentiles=(0, 90))[0]
    assert (image[..., 0] == 255).sum() > 1  # the outlier saturates, the others still spread out
    assert len(np.unique(image[..., 0])) >= GRID


def test_pca_constant_features_are_flat():
    features, _, _ = _structured_features()
    constant = torch.full_like(features, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images = feature_pca_images([constant, features], GRID)
    assert (images[0] == 128).all()
    assert images[1, ..., 0].std() > 0


def test_pca_deterministic(generator):
    features = block_features(generator, generator.mapping(*_inputs(3)))
    np.testing.assert_array_equal(feature_pca_images(features, GRID), feature_pca_images(features, GRID))


def test_pca_rejects_bad_input():
    features, _, _ = _structured_features()
    with pytest.raises(ValueError, match="grid"):
        feature_pca_images([features], GRID + 1)
    with pytest.raises(ValueError, match="share one shape"):
        feature_pca_images([features, features[:1]], GRID)
    with pytest.raises(ValueError, match="at least one"):
        feature_pca_images([], GRID)
    with pytest.raises(ValueError, match="percentiles"):
        feature_pca_images([features], GRID, percentiles=(50, 50))


# ---------------------------------------------------------------- interpolation and truncation


def test_interpolate_endpoints_and_midpoint():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    path = interpolate(a, b, 5)
    assert path.shape == (5, 3, 5)
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path[2], (a + b) / 2)
    with pytest.raises(ValueError, match="at least 2 steps"):
        interpolate(a, b, 1)
    with pytest.raises(ValueError, match="share a shape"):
        interpolate(a, b[:2], 3)


def test_seed_interpolation(generator):
    seeds = [3, 7, 11]
    w = seed_interpolation_w(generator, seeds, label=1, steps=5)
    keys = generator.mapping(seeded_normal(seeds, 64), torch.ones(3, dtype=torch.long))
    assert w.shape == (9, generator.width)
    for k in range(3):
        assert torch.equal(w[4 * k], keys[k])
    torch.testing.assert_close(w[2], (keys[0] + keys[1]) / 2)
    assert generator.synthesize(w).shape == (9, 4, 8, 8)
    truncated = seed_interpolation_w(generator, seeds, label=1, steps=5, truncation=0.0)
    torch.testing.assert_close(truncated, generator.w_avg[1].expand(9, -1))
    for too_few in ([], [3]):
        with pytest.raises(ValueError, match="at least 2 keyframes"):
            seed_interpolation_w(generator, too_few, label=1, steps=5)
    with pytest.raises(ValueError, match="labels"):
        seed_interpolation_w(generator, seeds, label=3, steps=5)


def test_class_interpolation(generator):
    labels = [0, 2, 1]
    w = class_interpolation_w(generator, seed=4, labels=labels, steps=3)
    keys = generator.mapping(seeded_normal([4] * 3, 64), torch.tensor(labels))
    assert w.shape == (5, generator.width)
    for k in range(3):
        assert torch.equal(w[2 * k], keys[k])
    torch.testing.assert_close(w[3], (keys[1] + keys[2]) / 2)
    truncated = class_interpolation_w(generator, seed=4, labels=labels, steps=3, truncation=0.0)
    torch.testing.assert_close(truncated[::2], generator.w_avg[labels])
    with pytest.raises(ValueError, match="at least 2 keyframes"):
        class_interpolation_w(generator, seed=4, labels=[], steps=3)


def test_truncation_sweep(generator):
    w = truncation_sweep_w(generator, seed=5, label=2, truncations=[1.0, 0.5, 0.0])
    full = generator.mapping(seeded_normal([5], 64), torch.tensor([2]))[0]
    assert torch.equal(w[0], full)
    torch.testing.assert_close(w[1], (full + generator.w_avg[2]) / 2)
    torch.testing.assert_close(w[2], generator.w_avg[2])
    with pytest.raises(ValueError, match="at least one"):
        truncation_sweep_w(generator, seed=5, label=2, truncations=[])
