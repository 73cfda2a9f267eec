"""Converting decoded images to bytes and tiling them into grids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, C, H, W] in [-1, 1] -> uint8 NHWC."""
    return images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def tile(images: np.ndarray, columns: int, padding: int = 2) -> np.ndarray:
    """uint8 NHWC images, row-major, into one HWC array with `padding` white pixels between tiles."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = image
    return grid


def to_pil(image: np.ndarray) -> Image.Image:
    """One uint8 HWC image; a single channel becomes a greyscale ("L") image."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 HWC image as PNG file content."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_grid(images: np.ndarray, columns: int, path: str | Path, padding: int = 2) -> None:
    """uint8 NHWC images, row-major, into one PNG with `padding` pixels between tiles."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_pil(tile(images, columns, padding)).save(path)
