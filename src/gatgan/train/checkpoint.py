"""Checkpoints that survive pre-emption: `checkpoints/<step>/` holds one safetensors file per
network and `state.pt` (optimisers, counters, RNG states; loadable with weights_only=True).
Each checkpoint is written into a temporary folder, synced and renamed; `latest` is replaced
atomically last, so a crash at any moment leaves the previous checkpoint usable. Every folder also
holds `checksums.json` (sha256 and size of each file), so that a file damaged later (a full disk,
a bad copy, bit rot) is detected before loading and the run falls back to an older checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..faults import fault_point
from ..files import atomic_write_text, fsync_dir

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"  # checkpoints/best/: the networks at the best in-training metric, with best.json
MANIFEST = "checksums.json"  # file name -> {"sha256": hex digest, "bytes": size}
_HASH_CHUNK = 1 << 20


class DamagedCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or corrupt. `file` and `problem` are kept apart from
    the advice so that a fallback can report them in its own words."""

    def __init__(self, file: Path, problem: str,
                 advice: str = "delete that checkpoint folder to resume from an older one, "
                               "or pick an earlier one with --checkpoint") -> None:
        self.file, self.problem = Path(file), problem
        super().__init__(f"{self.file} {problem}; {advice}")


def _sha256(path: Path) -> str:
    """Streams the file: checkpoints can be far larger than memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    """Hashes what is on disk (not what was meant to be written) for every file of the folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _write_files(folder: Path, networks: dict[str, dict[str, torch.Tensor]], state: dict[str, Any] | None,
                 extra_files: dict[str, str] | None) -> None:
    for name, tensors in networks.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, folder / f"{name}.safetensors")
        fault_point("checkpoint.network")
    if state is not None:
        torch.save(state, folder / "state.pt")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
    _write_manifest(folder)
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def write_checkpoint_dir(final: Path, networks: dict[str, dict[str, torch.Tensor]],
                         state: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None,
                         unlisted: Callable[[Path], None] | None = None) -> Path:
    """Writes one checkpoint folder atomically: into a hidden staging folder (with `checksums.json`
    last), synced, renamed. On any failure (a full disk) the staging folder is removed, so neither
    debris nor a half checkpoint stays, and an existing `final` is kept. `unlisted(staging)` adds
    what the checksums should not cover (e.g. a model card meant to be edited)."""
    staging = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_files(staging, networks, state, extra_files)
        if unlisted is not None:
            unlisted(staging)
        fault_point("checkpoint.rename")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    return final


def save_checkpoint(run_dir: Path, step: int, networks: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], extra_files: dict[str, str] | None = None, keep: int = 0) -> Path:
    root = Path(run_dir) / CHECKPOINT_DIR
    final = write_checkpoint_dir(root / f"{step:08d}", networks, state, extra_files)
    atomic_write_text(root / LATEST, final.name + "\n", "checkpoint.latest")
    if keep > 0:
        fault_point("checkpoint.prune")
        for old in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())[:-keep]:
            shutil.rmtree(old)
    return final


def verify_checkpoint(path: Path) -> None:
    """Raises DamagedCheckpointError naming the first file of the checkpoint folder that is missing,
    truncated or differs from its checksum. A folder without `checksums.json` (written by an older
    gatgan) is accepted as-is: it only has to hold a safetensors file and no empty file."""
    path = Path(path)
    if not path.is_dir():
        raise DamagedCheckpointError(path, "does not exist")
    if (path / MANIFEST).is_file():
        for name, size, sha256 in _read_manifest(path / MANIFEST):
            _verify_file(path / name, size, sha256)
    else:
        _verify_unlisted(path)


def _read_manifest(manifest: Path) -> list[tuple[str, int, str]]:
    try:
        entries = json.loads(manifest.read_text())
        return [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in entries.items()]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DamagedCheckpointError(manifest, "is damaged (not a checksum list)") from None


def _verify_unlisted(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        raise DamagedCheckpointError(path, "holds no network (no .safetensors file)")
    for file in sorted(path.iterdir()):
        if file.is_file() and file.stat().st_size == 0:
            raise DamagedCheckpointError(file, "is damaged (empty)")


def _verify_file(file: Path, size: int, sha256: str) -> None:
    if not file.is_file():
        raise DamagedCheckpointError(file, "is missing")
    if (actual := file.stat().st_size) != size:
        raise DamagedCheckpointError(file, f"is damaged (truncated or extended: {actual} of {size} bytes)")
    if _sha256(file) != sha256:
        raise DamagedCheckpointError(file, "is damaged (sha256 mismatch)")


def _candidates(root: Path, latest: str) -> list[Path]:
    """The folder `latest` names, then the numbered folders older than it, newest first."""
    steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name),
                   reverse=True)
    older = [p for p in steps if not latest.isdigit() or int(p.name) < int(latest)]
    return [root / latest] + older


def latest_checkpoint(run_dir: Path, quiet: bool = False) -> Path | None:
    """The newest intact checkpoint of a run (None before its first): the one `latest` names, or,
    if that is damaged or gone, the next older one that verifies, so that one bad file costs some
    steps rather than the run. Each skipped checkpoint is reported on stderr unless `quiet` (for
    the other ranks of a distributed run). Raises the latest's DamagedCheckpointError if none is intact."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    skipped: list[DamagedCheckpointError] = []
    for candidate in _candidates(pointer.parent, pointer.read_text().strip()):
        try:
            verify_checkpoint(candidate)
        except DamagedCheckpointError as error:
            skipped.append(error)
            continue
        if not quiet:
            for error in skipped:
                print(f"{error.file} {error.problem}; falling back to {candidate}", file=sys.stderr)
        return candidate
    raise DamagedCheckpointError(skipped[0].file, skipped[0].problem, "no older checkpoint of the run is intact "
                                 "either: restore the file from a backup or start the run afresh")


def load_network(checkpoint: Path, name: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(checkpoint) / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} has no {name}.safetensors")
    return load_file(path, device=str(device))


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)
