"""`gatgan analyze`: the paper's generator analyses for one trained run, as files.

- contribution: LPIPS between each image and the same image with one generator block's residual
  output zeroed, averaged over fixed (z, y) — one value per block (the paper's Fig. 4a protocol,
  docs/method.md §9.1). Low values for early blocks are "failure mode 1": blocks that do nothing.
- pca: the first three principal components of every block's tokens as RGB (rows = samples,
  columns = blocks).
- truncation: the evaluation metric against truncation (1 = none, 0 = the class mean w).
- interpolation: w-space strips across seeds (one class) and across classes (one seed).

Everything lands in one folder: PNGs, plots and `analysis.json` with the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..images import save_grid, to_uint8
from ..sample import Sampler, class_balanced_labels, seeded_normal
from .analysis import (block_contributions, block_features, class_interpolation_w, feature_pca_images,
                       seed_interpolation_w)

ANALYSES = ("contribution", "pca", "truncation", "interpolation")
DEFAULT_TRUNCATIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PCA_SAMPLES = 8
STRIP_STEPS = 8


def render(sampler: Sampler, latents: torch.Tensor) -> torch.Tensor:
    """Generator latents -> decoded images in [-1, 1]."""
    return sampler.tokenizer.decode(sampler.scaling.denormalize(latents)).float().clamp(-1, 1)


def contribution(sampler: Sampler, num: int, seed: int = 0, lpips_net: str = "vgg16",
                 lpips_weights: str | Path | None = None, batch_size: int = 64) -> list[float]:
    """Mean LPIPS(original, block i skipped) for every block, over `num` class-balanced samples."""
    from .lpips import LPIPS

    lpips = LPIPS.from_package(lpips_net, lpips_weights).to(sampler.device)
    labels = class_balanced_labels(num, len(sampler.class_names))
    z = seeded_normal([seed + i for i in range(num)], sampler.generator.z_dim).to(sampler.device)
    y = torch.as_tensor(labels, device=sampler.device)
    return block_contributions(sampler.generator, z, y, lambda latents: render(sampler, latents), lpips,
                               batch_size=batch_size)


def _tile(strips: np.ndarray) -> np.ndarray:
    """[rows, columns, h, w, c] -> the row-major image list save_grid expects."""
    return strips.reshape(-1, *strips.shape[2:])


def pca_images(sampler: Sampler, seed: int = 0, num: int = PCA_SAMPLES) -> np.ndarray:
    """[num, blocks + 1, h, w, 3] uint8: each sample's block PCA images, then the sample itself."""
    G = sampler.generator
    labels = class_balanced_labels(num, len(sampler.class_names))
    with torch.no_grad():
        z = seeded_normal([seed + i for i in range(num)], G.z_dim).to(sampler.device)
        w = G.mapping(z, torch.as_tensor(labels, device=sampler.device))
        grid = G.input_size // G.patch_size
        pca = feature_pca_images(block_features(G, w), grid)  # [blocks, num, grid, grid, 3]
        images = to_uint8(render(sampler, G.synthesize(w)))
    size = images.shape[1]
    upscaled = torch.nn.functional.interpolate(torch.from_numpy(pca).flatten(0, 1).permute(0, 3, 1, 2).float(),
                                               size=(size, size), mode="nearest")
    upscaled = upscaled.to(torch.uint8).permute(0, 2, 3, 1).numpy().reshape(pca.shape[0], num, size, size, 3)
    samples = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    return np.concatenate([upscaled.transpose(1, 0, 2, 3, 4), samples[:, None]], axis=1)


def truncation_curve(sampler: Sampler, metric, truncations: tuple[float, ...], num: int,
                     seed: int = 0) -> list[dict[str, float]]:
    """The metric's scores at each truncation, on the same seeds and class-balanced labels."""
    labels = class_balanced_labels(num, len(sampler.class_names))
    seeds = [seed + i for i in range(num)]
    return [{"truncation": t, **metric.score(sampler.images(seeds, labels, t), np.asarray(labels))}
            for t in truncations]


def interpolation_strips(sampler: Sampler, seed: int = 0, steps: int = STRIP_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """(across seeds: one row per class, 4 seeds; across classes: one row per seed, every class)."""
    G, classes = sampler.generator, len(sampler.class_names)
    with torch.no_grad():
        seed_rows = [seed_interpolation_w(G, [seed + i for i in range(4)], c, steps) for c in range(min(classes, 10))]
        class_rows = [class_interpolation_w(G, seed + s, list(range(min(classes, 10))), steps // 2 + 1)
                      for s in range(4)]
        decode = lambda w: to_uint8(render(sampler, G.synthesize(w.to(sampler.device))))  # noqa: E731
        return (np.stack([decode(w) for w in seed_rows]), np.stack([decode(w) for w in class_rows]))


def _plot(path: Path, curves: dict[str, list[float]], x: list, xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, values in curves.items():
        axis.plot(x[:len(values)], values, marker="o", label=label)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title, xticks=x)
    axis.grid(alpha=0.3)
    if len(curves) > 1:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_contributions(path: Path, curves: dict[str, list[float]], title: str = "block contribution") -> None:
    depth = max(len(v) for v in curves.values())
    _plot(path, curves, list(range(1, depth + 1)), "generator block (skipped)", "LPIPS to the original", title)


def plot_curves(path: Path, curves: dict[str, list[float]], x: list, xlabel: str, ylabel: str, title: str) -> None:
    _plot(path, curves, x, xlabel, ylabel, title)


def analyze(sampler: Sampler, out: str | Path, analyses: tuple[str, ...] = ANALYSES, *, num: int = 256,
            seed: int = 0, lpips_net: str = "vgg16", lpips_weights: str | Path | None = None,
            metric=None, truncations: tuple[float, ...] = DEFAULT_TRUNCATIONS, truncation_samples: int = 2000,
            ) -> dict:
    """Runs the chosen analyses and writes their files to `out`; returns the numbers."""
    unknown = set(analyses) - set(ANALYSES)
    if unknown:
        raise ValueError(f"unknown analyses {sorted(unknown)}; choose from {ANALYSES}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"seed": seed}
    if "contribution" in analyses:
        values = contribution(sampler, num, seed, lpips_net, lpips_weights)
        results["contribution"] = {"lpips": lpips_net, "samples": num, "per_block": values}
        plot_contributions(out / "contribution.png", {"this run": values})
    if "pca" in analyses:
        grid = pca_images(sampler, seed)
        save_grid(_tile(grid), grid.shape[1], out / "pca.png")
        results["pca"] = {"file": "pca.png", "columns": "blocks 1..depth, then the image"}
    if "truncation" in analyses:
        if metric is None:
            raise ValueError("the truncation curve needs a metric (see gatgan.eval.suite.build_metric)")
        curve = truncation_curve(sampler, metric, truncations, truncation_samples, seed)
        results["truncation"] = {"metric": metric.name, "samples": truncation_samples, "curve": curve}
        key = metric.primary
        plot_curves(out / "truncation.png", {key: [c[key] for c in curve]}, list(truncations),
                    "truncation (1 = none)", key, f"{metric.name} metric vs truncation")
    if "interpolation" in analyses:
        seeds, classes = interpolation_strips(sampler, seed)
        save_grid(_tile(seeds), seeds.shape[1], out / "interpolation_seeds.png")
        save_grid(_tile(classes), classes.shape[1], out / "interpolation_classes.png")
        results["interpolation"] = {"files": ["interpolation_seeds.png", "interpolation_classes.png"]}
    (out / "analysis.json").write_text(json.dumps(results, indent=2))
    return results
