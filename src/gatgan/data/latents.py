"""Prepared training data: posterior moments + labels in memory-mapped shards, and a batch order
that depends only on (seed, step).

Layout of a prepared directory (written by `gatgan.data.prepare`):
    index.json      count, shard counts, latent shape, class names, latent scaling and statistics,
                    tokenizer identity, what was skipped and why
    shards/NNNNN.moments.npy       float [n, 2c, h, w]: posterior mean ‖ std in raw tokenizer units
    shards/NNNNN.moments_flip.npy  the same for the horizontally flipped image (optional)
    shards/NNNNN.labels.npy        int64 [n]
    shards/NNNNN.images.npy        uint8 [n, C, H, W]: source images after the crop (optional;
                                   the REPA teacher and evaluation read them)
    shards/NNNNN.teacher_{cls,patches}[_flip].npy  float16 REPA teacher features of each image
                                   and of its mirror image (optional, `--teacher-features`)
    tokenizer/      the tokenizer that produced the moments (`gatgan.tokenizers.load_tokenizer`)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..encoders.base import TeacherFeatures
from ..tokenizers.base import LatentScaling
from .shards import open_array

TEACHER_ARRAYS = ("teacher_cls", "teacher_patches", "teacher_cls_flip", "teacher_patches_flip")
INDEX_FILE = "index.json"
FORMAT = 2


class LatentDataset:
    """Random access to prepared examples without loading them: each shard array is memory-mapped
    on first use (in each process, so DataLoader workers share the page cache, not copies)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_file = self.path / INDEX_FILE
        if not index_file.is_file():
            hint = " (an interrupted prepare: re-run the same command to finish it)" if \
                self.path.with_name(self.path.name + ".partial").is_dir() else ""
            raise FileNotFoundError(f"{self.path} is not a prepared data set (no {INDEX_FILE}){hint}; "
                                    "create it with `gatgan prepare`")
        self.index = json.loads(index_file.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{self.path} was prepared in format {self.index.get('format')}, this gatgan reads "
                             f"format {FORMAT}; run `gatgan prepare` again")
        counts = [shard["count"] for shard in self.index["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.offsets[-1] != self.index["count"]:
            raise ValueError(f"{self.path}: the shards hold {self.offsets[-1]} examples, index.json says "
                             f"{self.index['count']}")
        self.scaling = LatentScaling(**self.index["scaling"])
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}  # workers re-map the files instead of pickling them

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
    def has_flipped(self) -> bool:
        return bool(self.index["arrays"].get("moments_flip"))

    @property
    def has_images(self) -> bool:
        return bool(self.index["arrays"].get("images"))

    @property
    def has_teacher_features(self) -> bool:
        return bool(self.index["arrays"].get("teacher_features"))

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.index["tokenizer"]["path"]

    def _array(self, shard: int, name: str) -> np.ndarray:
        key = (shard, name)
        if key not in self._arrays:
            self._arrays[key] = open_array(self.path, shard, name)
        return self._arrays[key]

    def gather(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Rows `indices` (global example numbers) of one stored array, in the order asked for.
        Each shard is read with sorted indices, which is what memory-mapped files like best."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"example indices must be in [0, {len(self)})")
        shards = np.searchsorted(self.offsets, indices, side="right") - 1
        parts, where = [], []
        for shard in np.unique(shards):
            positions = np.flatnonzero(shards == shard)
            local = indices[positions] - self.offsets[shard]
            order = np.argsort(local, kind="stable")
            parts.append(self._array(int(shard), name)[local[order]])
            where.append(positions[order])
        if not parts:
            return self._array(0, name)[:0]
        out = np.empty((len(indices), *parts[0].shape[1:]), dtype=parts[0].dtype)
        for rows, positions in zip(parts, where):
            out[positions] = rows
        return out

    def latents(self, indices: np.ndarray, noise: torch.Tensor, flip: np.ndarray | None = None) -> torch.Tensor:
        """Normalised posterior samples `scaling(mean + std * noise)` (docs/method.md §1.1), reading the
        flipped image's moments where `flip` is set."""
        moments = self.gather("moments", indices)
        if flip is not None and flip.any():
            moments[flip] = self.gather("moments_flip", np.asarray(indices)[flip])
        mean, std = torch.from_numpy(moments.astype(np.float32, copy=False)).chunk(2, dim=1)
        return self.scaling.normalize(mean + std * noise)

    def labels(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.gather("labels", indices).astype(np.int64))

    def teacher_features(self, indices: np.ndarray, flip: np.ndarray | None = None
                         ) -> tuple[TeacherFeatures, TeacherFeatures]:
        """The stored teacher features of the images as read (mirrored where `flip` is set) and of
        their mirror images, so that an augmentation flip can pick either without a teacher."""
        read = {name: torch.from_numpy(self.gather(name, indices)) for name in TEACHER_ARRAYS}
        if flip is not None and flip.any():
            mirrored = torch.from_numpy(flip)
            for name in ("teacher_cls", "teacher_patches"):
                view = mirrored.view(-1, *[1] * (read[name].dim() - 1))
                read[name], read[f"{name}_flip"] = (torch.where(view, read[f"{name}_flip"], read[name]),
                                                     torch.where(view, read[name], read[f"{name}_flip"]))
        return (TeacherFeatures(read["teacher_cls"], read["teacher_patches"]),
                TeacherFeatures(read["teacher_cls_flip"], read["teacher_patches_flip"]))

    def images(self, indices: np.ndarray, flip: np.ndarray | None = None) -> torch.Tensor:
        """uint8 [B, C, H, W] source images, mirrored where `flip` is set."""
        images = self.gather("images", indices)
        if flip is not None:
            images[flip] = images[flip][..., ::-1]
        return torch.from_numpy(images)


class BatchSchedule:
    """Which examples form global batch `step`, independent of the number of processes.

    Examples are consumed in a stream of epoch-wise permutations (epoch e is shuffled with seed
    (seed, e)); global batch s is stream positions [s*B, (s+1)*B). It is split into
    `world_size * accumulation` equal micro-batches (`gatgan.data.loader`), so that a run on 1 or on
    64 devices sees the same global batches and resuming needs nothing but the step number.
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
