"""Optional experiment loggers (`train.logger`): mirrors of `stats.jsonl` and the sample grids in
TensorBoard or Weights & Biases. They only observe the run, which stays complete without them: the
run directory is the record. Built on the main process only; the packages are imported lazily
(`pip install 'gatgan[logging]'`).

A resumed run redoes the steps after its checkpoint: TensorBoard shows both attempts' points for
those steps, and W&B (which continues the same run, its id being derived from the run directory)
drops the points at steps it has already seen.
"""

from __future__ import annotations

import hashlib
import math
import re
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

LOGGERS = ("none", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite values of a stats record, without its `step` (the x axis)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))}


def image_array(path_or_array: str | Path | np.ndarray) -> np.ndarray:
    """An HWC uint8 array: a PNG's pixels, or the array itself (HW or HWC)."""
    if isinstance(path_or_array, (str, Path)):
        from PIL import Image

        with Image.open(path_or_array) as image:
            array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(path_or_array)
    return array[..., None] if array.ndim == 2 else array


class Logger:
    """What the trainer calls; the base logs nothing (`train.logger=none`)."""

    def log(self, step: int, record: dict[str, Any]) -> None:
        pass

    def image(self, step: int, name: str, path_or_array: str | Path | np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class NoLogger(Logger):
    pass


class TensorBoardLogger(Logger):
    """Event files in <run>/tensorboard/; every numeric value of a record is a scalar."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer: Any = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, step: int, name: str, path_or_array: str | Path | np.ndarray) -> None:
        self.writer.add_image(name, image_array(path_or_array), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def wandb_run_id(run_dir: Path) -> str:
    """Stable for a run directory, so that a resumed run continues the same W&B run."""
    path = Path(run_dir).resolve()
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", path.name).strip("-")[:40] or "run"
    return f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"


class WandbLogger(Logger):
    """A W&B run in project "gatgan", files under <run>/wandb/. The mode comes from wandb's own
    settings (WANDB_MODE=offline for no network: `wandb sync` uploads it later)."""

    def __init__(self, config: Any, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.run: Any = wandb.init(project="gatgan", name=config.run.name, dir=str(run_dir),
                                   config=config.to_dict(), resume="allow", id=wandb_run_id(run_dir))

    def log(self, step: int, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=step)

    def image(self, step: int, name: str, path_or_array: str | Path | np.ndarray) -> None:
        image = str(path_or_array) if isinstance(path_or_array, (str, Path)) else image_array(path_or_array)
        self.run.log({name: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def check_logger(kind: str) -> None:
    """An ImportError saying what to install when the package of `train.logger` is missing; the
    trainer asks at start-up, before it touches the run directory."""
    if kind == "none":
        return
    if kind not in LOGGERS:
        raise ValueError(f"train.logger must be one of {', '.join(LOGGERS)}, got {kind!r}")
    try:
        __import__(PACKAGES[kind])
    except ImportError:
        raise ImportError(f"train.logger={kind} needs {PACKAGES[kind]}: pip install 'gatgan[logging]'") from None


def build_logger(config: Any, run_dir: Path) -> Logger:
    """The logger of `config.train.logger` (see `check_logger` for a missing package)."""
    kind = config.train.logger
    check_logger(kind)
    if kind == "none":
        return NoLogger()
    return TensorBoardLogger(run_dir) if kind == "tensorboard" else WandbLogger(config, run_dir)
