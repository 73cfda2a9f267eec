"""The on-disk format of prepared data: numbered shards of .npy arrays, each finished by a record.

A shard `shards/00042` is a handful of arrays (`00042.moments.npy`, `00042.labels.npy`, ...) and
the record `00042.json`, written last. Every file is written under a temporary name, synced and
renamed, so a shard either has its record and is complete, or is redone; this is what makes an
interrupted `prepare` resumable and lets many processes write disjoint shards of one directory.
Plain .npy files are memory-mappable, so readers touch only the rows they need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SHARDS_DIR = "shards"


def shard_name(index: int) -> str:
    return f"{index:05d}"


def array_path(root: Path, shard: int, array: str) -> Path:
    return Path(root) / SHARDS_DIR / f"{shard_name(shard)}.{array}.npy"


def record_path(root: Path, shard: int) -> Path:
    return Path(root) / SHARDS_DIR / f"{shard_name(shard)}.json"


def _write_synced(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_shard(root: Path, shard: int, arrays: dict[str, np.ndarray], record: dict) -> None:
    """Writes the arrays, then the record that marks the shard complete."""
    (Path(root) / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    for name, values in arrays.items():
        _write_synced(array_path(root, shard, name), lambda f, v=values: np.save(f, v))
    _write_synced(record_path(root, shard), lambda f: f.write(json.dumps(record).encode()))


def read_record(root: Path, shard: int) -> dict | None:
    path = record_path(root, shard)
    return json.loads(path.read_text()) if path.is_file() else None


def open_array(root: Path, shard: int, array: str) -> np.ndarray:
    path = array_path(root, shard, array)
    if not path.is_file():
        raise FileNotFoundError(f"prepared data {root} is missing {path.relative_to(root)}; prepare it again")
    return np.load(path, mmap_mode="r")
