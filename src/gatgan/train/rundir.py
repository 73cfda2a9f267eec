"""The files of a run directory besides its checkpoints: an exclusive lock, the start-up files
(`config.yaml`, the data card) and the `stats.jsonl` log, each written so that a kill at any
moment leaves a run that restarts.

Start-up files are rewritten only when their content changes, atomically; a damaged one (empty or
unparsable after a crash on an older version, or a disk error) is restored from the copy inside the
latest checkpoint. The log is appended a line at a time, so a kill can leave a torn last line:
reading skips it, and a restart rewrites the log (atomically) up to the step it resumes from, which
also drops the lines of attempts that were killed before their first checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..faults import fault_point
from ..files import atomic_write_text, write_if_changed

LOCK_FILE = ".lock"
T = TypeVar("T")


class RunDirectoryBusy(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive `flock` on <run>/.lock, held for the life of the training process. The OS
    releases it when the process dies, however it dies, so a crash never leaves a stale lock; the
    file records who holds it, for the second process's message."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = self._holder()
            os.close(self._fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunDirectoryBusy(f"{run_dir} is in use by another gatgan process ({holder}); wait for it to "
                                   "finish or stop it, or choose another run.name") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1


def read_or_restore(path: Path, parse: Callable[[str], T], backup: Path | None) -> T | None:
    """`parse` of the run's copy of a start-up file; a damaged copy is replaced by the checkpoint's
    (`backup`), saying so. None when the run has no such file yet. Raises, naming both files, when
    neither parses."""
    if not path.is_file():
        return None
    try:
        return parse(path.read_text())
    except Exception as damage:  # noqa: BLE001  (any parse error means a damaged file)
        if backup is None or not backup.is_file():
            raise ValueError(f"{path} is damaged ({damage}) and no checkpoint holds a copy; delete it to "
                             "start the run afresh") from None
        text = backup.read_text()
        try:
            value = parse(text)
        except Exception as backup_damage:  # noqa: BLE001
            raise ValueError(f"{path} is damaged ({damage}) and so is its copy {backup} ({backup_damage})") from None
        print(f"{path} was damaged ({damage}); restored it from {backup}")
        atomic_write_text(path, text)
        return value


def finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities become null: `json.dumps` would write bare NaN tokens, which are not JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def read_stats(path: Path) -> list[dict[str, Any]]:
    """The records of a stats log, without a torn (half-written) line a kill may leave."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_stats(path: Path, step: int) -> None:
    """Keeps the records up to `step` (the later ones will be redone), atomically."""
    if not path.is_file():
        return
    kept = [record for record in read_stats(path) if record.get("step", 0) <= step]
    write_if_changed(path, "".join(json.dumps(record) + "\n" for record in kept), "stats.truncate")


def append_stats(path: Path, record: dict[str, Any]) -> None:
    fault_point("stats.append")
    with open(path, "a") as f:
        f.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")
