"""Reader for Fashion-MNIST as Debian's `dataset-fashion-mnist` package installs it (IDX files, gzip).

Images are zero-padded from 28x28 to 32x32 so that a power-of-two grid suits patch sizes 1, 2, 4
and 8 and the f=4 tokenizer yields 8x8 latents.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
PAD = 2  # 28 + 2 * 2 = 32


class FashionMNISTMissing(FileNotFoundError):
    pass


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    dims = magic & 0xFF
    if magic >> 8 != 0x08 or dims != expected_dims:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes with {expected_dims} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 1, 32, 32], labels int64 [N])."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = Path(root)
    image_file, label_file = (root / name for name in _FILES[split])
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise FashionMNISTMissing(
            f"Fashion-MNIST files not found: {', '.join(missing)}. On Debian/Ubuntu install them with "
            f"`sudo apt-get install dataset-fashion-mnist` (files land in {DEFAULT_ROOT}), or download the "
            "four *-ubyte.gz files of Fashion-MNIST into a folder and pass it as data.root / --root."
        )
    images = _read_idx(image_file, 3)
    labels = _read_idx(label_file, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    return padded[:, None], labels
