"""Generator analyses from the paper: which blocks are active (block ablation and per-block
feature PCA, the evidence for "failure mode 1": without MNG the early blocks do almost nothing),
plus truncation and w-space interpolation paths.

Everything works on a plain `Generator` through forward hooks, so the model code stays untouched
and any checkpoint can be analysed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..models import Generator
from ..sample import seeded_normal

Render = Callable[[torch.Tensor], torch.Tensor]
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def skip_block(generator: Generator, index: int) -> Iterator[None]:
    """While active, block `index` passes its input tokens through unchanged, i.e. both residual
    branches contribute zero. A hook rather than a model flag, so any trained generator can be
    ablated; it is removed on exit even when the body raises."""
    if not 0 <= index < len(generator.blocks):
        raise IndexError(f"block index {index} out of range [0, {len(generator.blocks)})")
    handle = generator.blocks[index].register_forward_hook(lambda module, args, output: args[0])
    try:
        yield
    finally:
        handle.remove()


def _device(generator: Generator) -> torch.device:
    return generator.w_avg.device


def _styles(generator: Generator, z: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
    """w for each (z, y), truncated towards the class average; the one place every analysis maps
    latents, so ablations and interpolations see the same w as `gatgan sample`."""
    if z.ndim != 2 or z.shape[1] != generator.z_dim:
        raise ValueError(f"z must be [N, {generator.z_dim}], got {tuple(z.shape)}")
    if y.shape != (z.shape[0],):
        raise ValueError(f"y must be [{z.shape[0]}] (one label per z), got {tuple(y.shape)}")
    if y.numel() and not (0 <= int(y.min()) and int(y.max()) < generator.num_classes):
        raise ValueError(f"labels must lie in [0, {generator.num_classes}), got {y.tolist()}")
    device = _device(generator)
    z, y = z.to(device), y.to(device=device, dtype=torch.long)
    w = generator.mapping(z, y)
    return w if truncation == 1.0 else generator.truncate(w, y, truncation)


@torch.no_grad()
def block_contributions(generator: Generator, z: torch.Tensor, y: torch.Tensor, render: Render,
                        distance: Distance, truncation: float = 1.0, batch_size: int = 64) -> list[float]:
    """Mean distance(render(G(w)), render(G(w) with block i skipped)) for every block i.

    `render` maps generator latents [B, C, H, W] to what `distance` compares (e.g. a VAE decode to
    [-1, 1] for LPIPS); `distance(a, b)` returns one value per pair [B]. The same w serve the
    original and every ablation, so the only difference is the skipped block. A near-zero value
    means the block is inactive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(z) == 0:
        raise ValueError("need at least one (z, y) sample")
    w = _styles(generator, z, y, truncation)
    totals = torch.zeros(len(generator.blocks), dtype=torch.float64)
    for batch in w.split(batch_size):
        original = render(generator.synthesize(batch))
        for index in range(len(generator.blocks)):
            with skip_block(generator, index):
                ablated = render(generator.synthesize(batch))
            d = distance(original, ablated)
            if d.shape != (len(batch),):
                raise ValueError(f"distance must return one value per pair [{len(batch)}], got {tuple(d.shape)}")
            totals[index] += d.double().sum().cpu()
    return (totals / len(w)).tolist()


@torch.no_grad()
def block_features(generator: Generator, w: torch.Tensor) -> list[torch.Tensor]:
    """The output tokens [B, T, width] of every block, in order, from one `synthesize(w)` pass."""
    features: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda module, args, output: features.append(output.detach()))
               for block in generator.blocks]
    try:
        generator.synthesize(w.to(_device(generator)))
    finally:
        for handle in handles:
            handle.remove()
    return features


def feature_pca_images(features: Sequence[torch.Tensor], grid: int,
                       percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Per-block PCA visualisation: uint8 [num_blocks, B, grid, grid, 3], RGB = the block's first
    three principal components.

    The PCA is fitted on all tokens of all samples of a block, so colours are comparable across the
    samples of one block (not across blocks). Each component's sign is fixed (largest-magnitude
    loading positive) so the same features always give the same image, and it is stretched to
    [0, 255] between robust percentiles so a few outlier tokens do not wash the image out. A
    component without spread (every token equal, or features of rank < 3) has nothing to show and
    comes out flat mid-grey instead of NaN or amplified round-off.
    """
    if not features:
        raise ValueError("need the features of at least one block")
    shape = tuple(features[0].shape)
    if not all(f.is_floating_point() for f in features):
        raise ValueError("features must be floating point")
    if len(shape) != 3 or shape[1] != grid * grid or shape[2] < 3:
        raise ValueError(f"features must be [B, {grid * grid}, width >= 3] for a {grid}x{grid} grid, got {shape}")
    if any(tuple(f.shape) != shape for f in features):
        raise ValueError(f"all blocks' features must share one shape, got {[tuple(f.shape) for f in features]}")
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    images = []
    for block in features:
        # Rounding the features to their dtype adds variance of order eps^2 relative to the first
        # component; a component below eps of it is round-off (e.g. rank-deficient features), shown
        # flat rather than stretched into noise. float32's eps also covers float64's Gram round-off.
        eps = max(torch.finfo(block.dtype).eps, torch.finfo(torch.float32).eps)
        tokens = block.detach().double().cpu().numpy().reshape(-1, shape[2])
        centred = tokens - tokens.mean(axis=0)
        variances, vectors = np.linalg.eigh(centred.T @ centred)  # ascending
        variances, components = variances[:-4:-1], vectors[:, :-4:-1]  # the top three, largest first
        largest = np.abs(components).argmax(axis=0)
        components = components * np.sign(components[largest, np.arange(3)])
        projected = centred @ components
        lo, hi = np.percentile(projected, [low, high], axis=0)
        varies = (variances > eps * variances[0]) & (hi > lo)
        scaled = np.where(varies, (projected - lo) / np.where(varies, hi - lo, 1.0), 0.5)
        pixels = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
        images.append(pixels.reshape(shape[0], grid, grid, 3))
    return np.stack(images)


def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points on the straight line from a to b, both ends included: [steps, *a.shape]."""
    if a.shape != b.shape:
        raise ValueError(f"endpoints must share a shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if steps < 2:
        raise ValueError(f"need at least 2 steps (the two endpoints), got {steps}")
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device).reshape(-1, *[1] * a.ndim)
    return torch.lerp(a, b, t)  # lerp is exact at t = 0 and t = 1


def _check_keyframes(count: int) -> None:
    if count < 2:
        raise ValueError(f"need at least 2 keyframes to interpolate, got {count}")


def keyframe_path(keys: torch.Tensor, steps: int,
                  segment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = interpolate) -> torch.Tensor:
    """Consecutive keys joined by `segment`s (straight lines by default), each shared key kept once:
    [(K - 1) * (steps - 1) + 1, width], key k at frame k * (steps - 1)."""
    segments = [segment(a, b, steps)[:-1] for a, b in zip(keys[:-1], keys[1:])]
    return torch.cat([*segments, keys[-1:]])


@torch.no_grad()
def seed_interpolation_w(generator: Generator, seeds: Sequence[int], label: int, steps: int,
                         truncation: float = 1.0) -> torch.Tensor:
    """w walking through the seeds' latents for one class, for `generator.synthesize`. Seeds give
    the same z as `gatgan sample`, so the keyframes are exactly its images."""
    _check_keyframes(len(seeds))
    z = seeded_normal(list(seeds), generator.z_dim)
    y = torch.full((len(seeds),), label, dtype=torch.long)
    return keyframe_path(_styles(generator, z, y, truncation), steps)


@torch.no_grad()
def class_interpolation_w(generator: Generator, seed: int, labels: Sequence[int], steps: int,
                          truncation: float = 1.0) -> torch.Tensor:
    """w walking through the classes for one fixed z: what the class embedding alone changes."""
    _check_keyframes(len(labels))
    z = seeded_normal([seed], generator.z_dim).expand(len(labels), -1)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    return keyframe_path(_styles(generator, z, y, truncation), steps)


@torch.no_grad()
def truncation_sweep_w(generator: Generator, seed: int, label: int, truncations: Sequence[float]) -> torch.Tensor:
    """w of one (seed, class) at each truncation [len(truncations), width]: the fidelity/diversity
    trade-off shown on a single sample."""
    if not truncations:
        raise ValueError("need at least one truncation value")
    y = torch.tensor([label])
    w = _styles(generator, seeded_normal([seed], generator.z_dim), y, 1.0)
    y = y.to(w.device)
    return torch.cat([generator.truncate(w, y, float(psi)) for psi in truncations])
