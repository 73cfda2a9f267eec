"""Sampling under torchrun: each rank generates a contiguous share of the samples on its own device
and rank 0 receives every image in the original order, so N processes write what one process
writes (each sample has its own seed, so an image does not depend on which rank draws it).

Contiguous shares rather than every world_size-th sample: a share is one slice of the seeds and
labels, and a received block is one contiguous copy into rank 0's output (no strided scatter of
gigabytes)."""

from __future__ import annotations

import numpy as np
import torch.distributed as dist

from .sample import Sampler

GATHER_ROWS = 256  # images each rank sends to rank 0 per round: bounds the memory in flight


def shard(num: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s contiguous share of `num` items; shares differ in size by at most one."""
    return slice(num * rank // world_size, num * (rank + 1) // world_size)


def sharded_images(sampler: Sampler, seeds: list[int], labels: list[int], truncation: float = 1.0,
                   guidance: float = 1.0, batch_size: int = 256, progress: bool = False) -> np.ndarray | None:
    """`Sampler.images` split over the processes of a multi-process group: all images on rank 0,
    None on the other ranks. Without such a group, `Sampler.images` itself."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return sampler.images(seeds, labels, truncation, guidance, batch_size, progress)
    rank = dist.get_rank()
    mine = shard(len(seeds), rank, dist.get_world_size())
    if mine.stop > mine.start:
        part = sampler.images(seeds[mine], labels[mine], truncation, guidance, batch_size, progress and rank == 0)
    else:  # fewer samples than ranks; an empty share has no image shape to give
        part = np.empty(0, np.uint8)
    return gather_shares(part, len(seeds), GATHER_ROWS)


def gather_shares(part: np.ndarray, total: int, rows: int) -> np.ndarray | None:
    """Every rank's `shard` of `total` rows, concatenated in rank order on rank 0 (None on the
    others). Sent in rounds of `rows` per rank: one all_gather_object would put every image on every
    rank at once (50K samples at 256x256x3 are 10 GB)."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    shares = [shard(total, r, world_size) for r in range(world_size)]
    out = None
    for start in range(0, max(s.stop - s.start for s in shares), rows):
        received = [None] * world_size if rank == 0 else None
        dist.gather_object(part[start:start + rows], received, dst=0)
        for share, block in zip(shares, received or []):
            if len(block):
                if out is None:  # the first round brings the largest share's first block
                    out = np.empty((total, *block.shape[1:]), block.dtype)
                out[share.start + start:share.start + start + len(block)] = block
    return out
