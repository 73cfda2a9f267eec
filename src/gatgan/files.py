"""Writes that a crash cannot tear: a file is written beside its destination, synced, and renamed
over it, so a reader sees the old content or the new, never a mix or an empty file."""

from __future__ import annotations

import os
from pathlib import Path

from .faults import fault_point


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, fault: str | None = None) -> None:
    """`fault` names the crash point inside the write, between the new copy and the rename (see
    `gatgan.faults`)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if fault:
            fault_point(fault)
    except BaseException:
        temporary.unlink(missing_ok=True)  # e.g. a full disk: leave no debris
        raise
    os.replace(temporary, path)
    fsync_dir(path.parent)


def write_if_changed(path: Path, text: str, fault: str | None = None) -> None:
    """Atomic replacement, skipped when the file already holds `text`, so that a restart rewrites
    nothing."""
    try:
        if path.read_text() == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text, fault)
