import inspect

import numpy as np
import pytest
import torch

from gatgan.encoders.base import TeacherFeatures
from gatgan.encoders.ssl import (
    WEIGHTS_FILE,
    SSLEncoder,
    _nt_xent,
    linear_probe_accuracy,
    train_ssl_encoder,
)

TINY = {"dim": 64, "width": 8, "hidden": 16, "blocks": 1}


def shapes(count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Four classes of outline shapes (square, ring, plus, diagonal cross) at random positions,
    sizes, stroke widths and brightness on a noisy dark background. The class is only in the shape:
    what the augmentations vary (position, scale, brightness, noise) carries no label information."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = rng.normal(15, 6, (count, 1, size, size))
    for image, label in zip(images, labels):
        radius = rng.uniform(6, 11)
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        stroke = rng.uniform(1.2, 2.5)
        dy, dx = yy - cy, xx - cx
        if label == 0:
            dist = np.abs(np.maximum(np.abs(dy), np.abs(dx)) - radius)
        elif label == 1:
            dist = np.abs(np.hypot(dy, dx) - radius)
        elif label == 2:
            dist = np.where(np.maximum(np.abs(dy), np.abs(dx)) <= radius, np.minimum(np.abs(dy), np.abs(dx)), 99)
        else:
            dist = np.where(np.maximum(np.abs(dy), np.abs(dx)) <= radius,
                            np.minimum(np.abs(dy - dx), np.abs(dy + dx)) / np.sqrt(2), 99)
        image[0][dist <= stroke] = rng.uniform(120, 255)
    return np.clip(images, 0, 255).astype(np.uint8), labels
