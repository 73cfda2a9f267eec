"""One code path for 1 or N processes: always a process group, even for a plain `gatgan train`.

Under `torchrun` the usual environment variables select rank and world size; without them a
single-process group is created on an in-memory store, so DDP and collectives behave the same.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def process_ranks(environ: dict[str, str] | os._Environ = os.environ) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables or, for `srun` with one task per
    device (and MASTER_ADDR set by the batch script), from SLURM's; (0, 1, 0) for a plain process."""
    if "RANK" in environ or "SLURM_PROCID" not in environ:
        return int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0))
    return int(environ["SLURM_PROCID"]), int(environ.get("SLURM_NTASKS", 1)), int(environ.get("SLURM_LOCALID", 0))


def init_distributed(device_preference: str = "auto", timeout_minutes: float = 90.0) -> DistributedEnv:
    rank, world_size, local_rank = process_ranks()
    device = pick_device(device_preference, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if world_size > 1 or "MASTER_ADDR" in os.environ:
            if "MASTER_ADDR" not in os.environ:
                raise ValueError(f"{world_size} processes but MASTER_ADDR is not set: launch with torchrun, or set it "
                                 "to the first node's hostname in the batch script (scripts/slurm-train.sbatch)")
            os.environ.setdefault("MASTER_PORT", "29500")  # torchrun sets it; an srun batch script may not
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(minutes=timeout_minutes))
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistributedEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def launched_group(device: str) -> Iterator[torch.device]:
    """This process's device, inside the launch's process group when torchrun (or srun) started
    several processes (each then takes cuda:LOCAL_RANK for a CUDA `device`, else the CPU). Unlike
    training, one process creates no group and keeps `device` as given: sampling and evaluation
    need collectives only to assemble the ranks' images."""
    if process_ranks()[1] == 1:
        yield torch.device(device)
        return
    env = init_distributed(torch.device(device).type)
    try:
        yield env.device
    finally:
        shutdown_distributed()


def mean_across_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not values:
        return {}
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    packed /= dist.get_world_size()
    return dict(zip(keys, packed.tolist()))
