"""What the machine gives this process: cores for thread pools and worker processes, and the
GPU math modes."""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which schedulers such as Slurm restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def allow_tf32(device: torch.device, enabled: bool) -> None:
    """fp32 matmuls and convolutions in TF32 on CUDA (Ampere and later): several times faster for a
    10-bit mantissa in the products, the authors' setting; bf16 autocast is not affected."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
