"""Pictures of a run: its training curves from `stats.jsonl` (`gatgan plot`) and walks through its
latent space between seeds (`gatgan interpolate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .eval.analysis import interpolate, keyframe_path, seed_interpolation_w
from .images import save_grid, to_pil
from .sample import Sampler, seeded_normal
from .train.config import read_config
from .train.rundir import read_stats

Record = dict[str, Any]
THROUGHPUT = "images/s"  # derived from sec_per_step and the run's global batch
MARKERS_BELOW = 50  # sparse series (in-training evaluation) get point markers, or a single point is invisible


@dataclass(frozen=True)
class Panel:
    """One axis of a figure: every logged key matching one of `patterns` (fnmatch), against kimg."""
    title: str
    patterns: tuple[str, ...]

    def keys(self, present: set[str]) -> list[str]:
        return sorted(k for k in present if any(fnmatchcase(k, p) for p in self.patterns))


FIGURES: dict[str, tuple[Panel, ...]] = {
    "losses": (Panel("discriminator losses", ("loss/D*", "loss/R1", "loss/R2", "loss/REPA")),
               Panel("generator losses", ("loss/G*", "loss/REPA_G")),
               Panel("gradient norms", ("grad_norm/*",)),
               Panel("D logits", ("D/*",))),
    "metric": (Panel("Fréchet distance", ("eval/fd", "eval/fid")),
               Panel("precision / recall / coverage", ("eval/precision", "eval/recall", "eval/coverage"))),
    "alignment": (Panel("D-teacher alignment", ("align/*",)),),
    "diagnostics": (Panel("diversity", ("diversity/*",)), Panel("overfitting", ("overfit/*",))),
    "throughput": (Panel("throughput (images/s)", (THROUGHPUT,)),),
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'gatgan[eval]'") from error
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def _number(value: Any) -> bool:
    """Logged values may be null (a non-finite value) or missing on a record: those points are left out."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def with_throughput(records: list[Record], global_batch: int) -> list[Record]:
    """Each record plus images/s = global batch / sec_per_step, where the step time is known."""
    return [{**r, THROUGHPUT: global_batch / r["sec_per_step"]}
            if _number(r.get("sec_per_step")) and r["sec_per_step"] > 0 else r for r in records]


def series(records: list[Record], key: str) -> tuple[list[float], list[float]]:
    """(kimg, value) of every record holding a number for `key`, unsmoothed."""
    points = [(r["kimg"], r[key]) for r in records if _number(r.get("kimg")) and _number(r.get(key))]
    return [x for x, _ in points], [y for _, y in points]


def draw_figure(path: Path, records: list[Record], panels: Sequence[tuple[str, list[str]]]) -> None:
    """One row of axes, one per (title, keys), every key a line against kimg."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for axis, (title, keys) in zip(axes[0], panels):
        for key in keys:
            x, y = series(records, key)
            axis.plot(x, y, label=key, linewidth=1, marker="o" if len(x) < MARKERS_BELOW else None, markersize=3)
        axis.set(title=title, xlabel="kimg")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Writes one PNG per figure of FIGURES whose keys the run logged (in `out`, default <run>/plots);
    returns the files written. Figures without data are skipped, so the same call serves a run with
    or without alignment, diagnostics or in-training evaluation."""
    run = Path(run)
    records = read_stats(run / "stats.jsonl")
    if not records:
        raise FileNotFoundError(f"{run / 'stats.jsonl'} is missing or empty: nothing to plot (train first "
                                "with `gatgan train`, which logs every train.log_every steps)")
    if any(_number(r.get("sec_per_step")) for r in records):
        records = with_throughput(records, read_config(run / "config.yaml").train.global_batch)
    present = {key for r in records for key, value in r.items() if _number(value)}
    out = Path(out) if out is not None else run / "plots"
    written = []
    for name, panels in FIGURES.items():
        drawn = [(panel.title, keys) for panel in panels if (keys := panel.keys(present))]
        if drawn:
            out.mkdir(parents=True, exist_ok=True)
            draw_figure(out / f"{name}.png", records, drawn)
            written.append(out / f"{name}.png")
    return written


# ------------------------------------------------------------------------------ interpolation
SPACES = ("z", "w")


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points on the great-circle arc from a to b, both ends included and exact: [steps, dim].

    Unlike a straight line, the arc keeps the norm of Gaussian z near sqrt(dim), where the mapping
    was trained: two such z are nearly orthogonal, so the middle of the line between them is about
    1/sqrt(2) as long. Nearly parallel or opposite vectors have no well-defined arc and fall back
    to the line."""
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"endpoints must be vectors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if steps < 2:
        raise ValueError(f"need at least 2 steps (the two endpoints), got {steps}")
    angle = torch.arccos((torch.dot(a, b) / (a.norm() * b.norm())).clamp(-1, 1))
    if torch.sin(angle) < 1e-6:
        return interpolate(a, b, steps)
    t = torch.linspace(0, 1, steps, dtype=a.dtype, device=a.device)[:, None]
    # weights first: at t = 0 and 1 they are exactly 1 and 0 (x / x), so the ends are a and b bit for bit
    weight_a, weight_b = torch.sin((1 - t) * angle) / torch.sin(angle), torch.sin(t * angle) / torch.sin(angle)
    return weight_a * a + weight_b * b


def interpolation_frames(sampler: Sampler, label: int, seeds: Sequence[int], steps: int = 8, space: str = "z",
                         truncation: float = 1.0, batch_size: int = 64) -> np.ndarray:
    """uint8 NHWC frames walking from seed to seed for one class, `steps` per segment including its
    ends (shared ends once). In z the keyframes are exactly `sampler.images` of the seeds; in w the
    path is a line between the seeds' (truncated) mapping outputs."""
    if len(seeds) < 2:
        raise ValueError(f"need at least 2 seeds to interpolate between, got {len(seeds)}")
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    G = sampler.generator
    if space == "z":
        z = keyframe_path(seeded_normal(list(seeds), G.z_dim), steps, slerp)
        latents = [sampler.latents_from_z(chunk, [label] * len(chunk), truncation) for chunk in z.split(batch_size)]
    else:
        with torch.no_grad():
            w = seed_interpolation_w(G, seeds, label, steps, truncation)
            latents = [G.synthesize(chunk) for chunk in w.split(batch_size)]
    return np.concatenate([sampler.decode(chunk) for chunk in latents])


def write_interpolation(frames: np.ndarray, prefix: str | Path, gif: bool = False,
                        frame_ms: int = 80) -> list[Path]:
    """PREFIX.png (the frames in one row, no padding) and optionally PREFIX.gif (looping); returns
    the files. Pillow stores a GIF frame identical to the one before it by lengthening that one, so
    a walk that pauses keeps its timing with fewer frames."""
    prefix = Path(prefix)
    strip = prefix.with_name(prefix.name + ".png")
    save_grid(frames, len(frames), strip, padding=0)
    written = [strip]
    if gif:
        images = [to_pil(frame) for frame in frames]
        animation = prefix.with_name(prefix.name + ".gif")
        images[0].save(animation, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
        written.append(animation)
    return written
