"""A tiny synthetic prepared data set and a matching tiny run config, so that trainer, sampler and
CLI tests run end to end in seconds without Fashion-MNIST. The fixture is registered in conftest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gatgan.data.inputs import prepare_arrays
from gatgan.data.prepare import PrepareOptions, prepare
from gatgan.data.sources import ArraySource
from gatgan.encoders.ssl import SSLEncoder
from gatgan.tokenizers.identity import IdentityTokenizer
from gatgan.train.config import Config, load_config
from gatgan.train.trainer import Trainer

TINY_CLASSES = ["dark", "grey", "bright"]
TINY_LEVELS = (30, 128, 225)  # pixel intensity of each class


def make_tiny_images(count: int, seed: int = 0, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class c is a blob of intensity TINY_LEVELS[c] on a noisy background: easy to learn, and
    whether a generator honours the label is measurable from the mean intensity."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(TINY_CLASSES)
    images = rng.normal(0, 8, (count, 1, size, size)) + np.asarray(TINY_LEVELS)[labels][:, None, None, None]
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_tiny_data(root: Path) -> Path:
    images, labels = make_tiny_images(96)
    return prepare_arrays(root / "tiny", images, labels, TINY_CLASSES, IdentityTokenizer(1), "synthetic",
                          PrepareOptions(progress=False))


def random_teacher() -> tuple[SSLEncoder, dict]:
    torch.manual_seed(0)
    return SSLEncoder(image_channels=1, dim=16, width=8, hidden=16, blocks=1), {"note": "random weights"}


def write_tiny_data_with_teacher(root: Path) -> Path:
    """The tiny data with a (random, untrained) REPA teacher stored beside it, and its features."""
    images, labels = make_tiny_images(96)
    return prepare(ArraySource(images, labels, TINY_CLASSES, "synthetic"), root / "tiny-teacher",
                   lambda: (IdentityTokenizer(1), {}), "identity",
                   PrepareOptions(progress=False, flip=True, teacher_features=True), random_teacher, "random")


def tiny_overrides(data: Path, run_dir: Path, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "run.dir": str(run_dir), "run.name": "tiny", "data.path": str(data),
        "model.generator": "GAT-Nano/2", "model.discriminator": "GAT-Nano/2",
        "train.global_batch": 12, "train.kimg": 0.072, "train.log_every": 1,
        "train.sample_every": 3, "train.checkpoint_every": 3, "train.keep_checkpoints": 0,
        "train.device": "cpu", "eval.every": 0,
        "train.compile": False,  # compiling (the fmnist preset's setting) costs each tiny run ~half a minute
        "train.processes": 1,  # the fmnist preset's two would start subprocesses, whose output capsys cannot see
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def tiny_config(data: Path, run_dir: Path, **extra: object) -> Config:
    return load_config(None, tiny_overrides(data, run_dir, **extra))


def poison(trainer: Trainer, steps: set[int], branch: str = "discriminator_loss") -> list[int]:
    """Makes the loss of the D (or G) step NaN the first time each of `steps` is trained; returns the
    list of steps at which it did."""
    original, fired = getattr(trainer.objective, branch), []

    def loss(*args, **kwargs):
        value, stats = original(*args, **kwargs)
        step = trainer.step + 1
        if step in steps and step not in fired:
            fired.append(step)
            value = value * float("nan")
        return value, stats

    setattr(trainer.objective, branch, loss)
    return fired
