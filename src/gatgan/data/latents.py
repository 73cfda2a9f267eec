"""Prepared training data: posterior moments + labels on disk, and a deterministic batch order.

Layout of a prepared directory (written by `gatgan.data.prepare`):
    index.json      count, latent shape, class names, latent scaling, tokenizer sub-directory
    moments.npy     float32 [N, 2c, h, w]: posterior mean ‖ std in raw tokenizer units
    labels.npy      int64 [N]
    images.npy      uint8 [N, C, H, W]: the source images (REPA targets and evaluation use them)
    tokenizer/      the tokenizer that produced the moments (`gatgan.tokenizers.load_tokenizer`)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..tokenizers.base import LatentScaling

INDEX_FILE = "index.json"


class LatentDataset:
    """Random access to prepared latents. A fresh posterior sample mean + std * eps is drawn on
    every read (REFERENCE §2a), then normalised to unit scale with the stored `LatentScaling`."""

    def __init__(self, path: str | Path, in_memory: bool = True):
        self.path = Path(path)
        index_file = self.path / INDEX_FILE
        if not index_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a prepared data set (no {INDEX_FILE}); "
                                    "create it with `gatgan prepare`")
        self.index = json.loads(index_file.read_text())
        mode = None if in_memory else "r"
        self.moments = np.load(self.path / "moments.npy", mmap_mode=mode)
        self.labels = np.load(self.path / "labels.npy", mmap_mode=mode)
        if len(self.moments) != self.index["count"] or len(self.labels) != self.index["count"]:
            raise ValueError(f"{self.path}: index.json says {self.index['count']} examples but the arrays "
                             f"hold {len(self.moments)} moments and {len(self.labels)} labels")
        self.scaling = LatentScaling(**self.index["scaling"])

    def __len__(self) -> int:
        return int(self.index["count"])

    @property
    def class_names(self) -> list[str]:
        return list(self.index["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.index["class_names"])

    @property
    def latent_channels(self) -> int:
        return int(self.index["latent_shape"][0])

    @property
    def latent_size(self) -> int:
        return int(self.index["latent_shape"][1])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.index["tokenizer"]

    def read(self, indices: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (normalised latents [B, c, h, w] float32, labels [B] int64), on the CPU."""
        order = np.sort(indices.numpy())  # sorted reads are friendlier to memory-mapped files
        position = np.searchsorted(order, indices.numpy())
        moments = torch.from_numpy(np.ascontiguousarray(self.moments[order][position], dtype=np.float32))
        labels = torch.from_numpy(np.asarray(self.labels[order][position], dtype=np.int64))
        mean, std = moments.chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=generator)
        return self.scaling.normalize(mean + std * eps), labels


class BatchSchedule:
    """Which examples form global batch `step`, independent of the number of processes.

    Examples are consumed in a stream of epoch-wise permutations (epoch e is shuffled with seed
    (seed, e)); global batch s is stream positions [s*B, (s+1)*B). It is split into
    `world_size * accumulation` equal micro-batches, so that a run on 1 or on 64 devices sees the
    same global batches and resuming needs nothing but the step number.
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int):
        self.num_examples, self.global_batch, self.seed = num_examples, global_batch, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.num_examples, generator=generator)}
        return self._cache[epoch]

    def global_indices(self, step: int) -> torch.Tensor:
        positions = torch.arange(step * self.global_batch, (step + 1) * self.global_batch)
        epochs, offsets = positions // self.num_examples, positions % self.num_examples
        return torch.cat([self._permutation(int(e))[offsets[epochs == e]] for e in epochs.unique()])

    def micro_batch(self, step: int, rank: int, world_size: int, micro: int, accumulation: int) -> torch.Tensor:
        parts = self.global_indices(step).chunk(world_size * accumulation)
        return parts[micro * world_size + rank]
