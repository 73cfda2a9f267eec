"""Checkpoints that survive pre-emption: `checkpoints/<step>/` holds one safetensors file per
network and `state.pt` (optimisers, counters, RNG states; loadable with weights_only=True).
Each checkpoint is written into a temporary folder, synced and renamed; `latest` is replaced
atomically last, so a crash at any moment leaves the previous checkpoint usable."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"  # checkpoints/best/: the networks at the best in-training metric, with best.json


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def write_checkpoint_dir(final: Path, networks: dict[str, dict[str, torch.Tensor]],
                         state: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Writes one checkpoint folder atomically: into a hidden staging folder, synced, renamed."""
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, tensors in networks.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, staging / f"{name}.safetensors")
    if state is not None:
        torch.save(state, staging / "state.pt")
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text)
    for file in staging.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    _fsync_dir(final.parent)
    return final


def save_checkpoint(run_dir: Path, step: int, networks: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], extra_files: dict[str, str] | None = None, keep: int = 0) -> Path:
    root = Path(run_dir) / CHECKPOINT_DIR
    final = write_checkpoint_dir(root / f"{step:08d}", networks, state, extra_files)
    atomic_write_text(root / LATEST, final.name + "\n")
    if keep > 0:
        for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())[:-keep]:
            shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} points to {path}, which does not exist")
    return path


def load_network(checkpoint: Path, name: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(checkpoint) / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} has no {name}.safetensors")
    return load_file(path, device=str(device))


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)
