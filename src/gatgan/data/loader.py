"""Training batches: every random choice of a step is a function of (seed, step) alone.

Global batch `step` is fixed by `BatchSchedule`; its posterior noise and flips are drawn from a
generator seeded with (seed, step) for the whole global batch, and each process keeps its slice.
So a run sees the same latents on 1 or 64 devices, resuming needs nothing but the step number,
and DataLoader workers only add speed: which worker builds a batch never changes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..encoders.base import TeacherFeatures
from ..hardware import usable_cores
from .latents import BatchSchedule, LatentDataset


@dataclass
class Batch:
    latents: torch.Tensor  # float32 [B, c, h, w], normalised
    labels: torch.Tensor  # int64 [B]
    images: torch.Tensor | None = None  # uint8 [B, C, H, W] with the same flips, when asked for
    # Precomputed teacher features of the images as read, and of their mirror images
    teacher: tuple[TeacherFeatures, TeacherFeatures] | None = None

    def pin_memory(self) -> "Batch":
        def pin(t):
            return None if t is None else t.pin_memory()
        teacher = None if self.teacher is None else tuple(
            TeacherFeatures(pin(f.cls), pin(f.patches)) for f in self.teacher)
        return Batch(pin(self.latents), pin(self.labels), pin(self.images), teacher)


class StepBatches(Dataset):
    """Item k is micro-batch k % accumulation of step start_step + k // accumulation, for one rank."""

    def __init__(self, data: LatentDataset, schedule: BatchSchedule, *, rank: int, world_size: int,
                 accumulation: int, start_step: int, total_steps: int, seed: int, xflip: bool = True,
                 with_images: bool = False, with_teacher_features: bool = False):
        if with_images and not data.has_images:
            raise ValueError(f"{data.path} was prepared without images (--no-images), but this run needs them")
        if with_teacher_features and not data.has_teacher_features:
            raise ValueError(f"{data.path} holds no teacher features (prepare with --teacher-features)")
        self.data, self.schedule = data, schedule
        self.rank, self.world_size, self.accumulation = rank, world_size, accumulation
        self.start_step, self.total_steps, self.seed = start_step, total_steps, seed
        self.xflip = xflip and data.has_flipped
        self.with_images, self.with_teacher_features = with_images, with_teacher_features
        self.parts = world_size * accumulation

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step) * self.accumulation

    def step_noise(self, step: int) -> tuple[torch.Tensor, np.ndarray]:
        """(noise [global_batch, c, h, w], flip [global_batch]) of one step, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        shape = (self.schedule.global_batch, self.data.latent_channels, self.data.latent_size, self.data.latent_size)
        noise = torch.randn(shape, generator=generator)
        flip = torch.rand(self.schedule.global_batch, generator=generator) < 0.5
        return noise, (flip.numpy() & self.xflip)

    def __getitem__(self, item: int) -> Batch:
        step, micro = divmod(item, self.accumulation)
        step += self.start_step
        part = micro * self.world_size + self.rank
        size = self.schedule.global_batch // self.parts
        rows = slice(part * size, (part + 1) * size)
        indices = self.schedule.global_indices(step)[rows].numpy()
        noise, flip = self.step_noise(step)
        flip = flip[rows] if self.xflip else None
        images = self.data.images(indices, flip) if self.with_images else None
        teacher = self.data.teacher_features(indices, flip) if self.with_teacher_features else None
        return Batch(self.data.latents(indices, noise[rows], flip), self.data.labels(indices), images, teacher)


def default_workers() -> int:
    """Loader processes per training process: the cores left after one per process, at most 8.
    With few cores (a laptop, CI) reading in the training process itself is faster."""
    per_process = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(8, per_process - 1)) if per_process > 2 else 0


def step_loader(batches: StepBatches, workers: int, pin_memory: bool = False) -> DataLoader:
    workers = default_workers() if workers < 0 else workers
    return DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, persistent_workers=False)
