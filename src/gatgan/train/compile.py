"""torch.compile of the transformer blocks, with a fallback to eager that says why.

Blocks rather than whole networks: every block of a model has the same shapes, so one compiled
graph serves them all, the surrounding Python (MNG exits, DDP, gradient checkpointing) stays
eager, and a graph break costs one block rather than the step.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterable

import torch
from torch import nn


def compiler_missing(device: torch.device) -> str | None:
    """Why inductor cannot generate code for `device` here, or None when it can."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        return "no C++ compiler on PATH (inductor compiles CPU kernels with one)"
    return None


def compile_blocks(blocks: Iterable[nn.Module], device: torch.device, announce: bool = True) -> bool:
    """Compiles each block in place (lazily, at its first call); says whether it did. A block that
    fails to compile later runs eagerly with a warning (dynamo's suppress_errors) instead of
    stopping the run."""
    reason = compiler_missing(device)
    if reason is not None:
        if announce:
            print(f"train.compile: {reason}; training without compilation", file=sys.stderr)
        return False
    torch._dynamo.config.suppress_errors = True
    if device.type == "cpu":  # inductor's C++ toolchain probe warns "No CUDA runtime is found" on CPU-only runs
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for block in blocks:
        block.compile()
    if announce:  # otherwise the progress bar's first rate reads as a run of hours
        print("train.compile: the blocks compile during the first iterations (about a minute on a CPU)",
              file=sys.stderr)
    return True
