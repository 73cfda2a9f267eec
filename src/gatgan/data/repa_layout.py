"""Data already prepared for the authors' code and REPA, read as a source so `prepare` can import it.

That layout (made by REPA's edm2-derived `dataset_tools.py`) is
    images/00000/img00000000.png ...          the centre-cropped images
    vae-sd/00000/img-mean-std-00000000.npy    float32 [8, 32, 32]: SD-VAE posterior mean ‖ std
    vae-sd/dataset.json                       {"labels": [["00000/img-mean-std-00000000.npy", y], ...]}
and REPA pairs image i with moments file i in sorted order. Importing copies the moments as they
are (no re-encoding, so the latents are bit-identical) and the images if they are there.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .imaging import IMAGE_EXTENSIONS, BadImage
from .sources import DATASET_JSON, UNCONDITIONAL_CLASS, Example, ExampleSource, Problem

IMAGES_DIR = "images"
MOMENTS_DIR = "vae-sd"


def is_repa_layout(path: str | Path) -> bool:
    return (Path(path) / MOMENTS_DIR / DATASET_JSON).is_file()


def _files(root: Path, suffixes: frozenset[str]) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in suffixes)


def _first_readable(names: list[str], read):
    """(read(name), name) for the first name that can be read, else (None, None)."""
    for name in names:
        try:
            return read(name), name
        except (OSError, ValueError, EOFError, SyntaxError):
            continue
    return None, None


class RepaLayoutSource(ExampleSource):
    provides_moments = True

    def __init__(self, path: str | Path, class_names: list[str] | None = None, with_images: bool = True):
        self.path = Path(path)
        if not is_repa_layout(self.path):
            raise FileNotFoundError(f"{self.path} is not in the REPA layout: {MOMENTS_DIR}/{DATASET_JSON} is missing")
        self.moment_files = _files(self.path / MOMENTS_DIR, frozenset({".npy"}))
        self.image_files = _files(self.path / IMAGES_DIR, IMAGE_EXTENSIONS) if with_images else []
        if with_images and len(self.image_files) != len(self.moment_files):
            raise ValueError(f"{self.path}: {len(self.image_files)} images in {IMAGES_DIR}/ but "
                             f"{len(self.moment_files)} moment files in {MOMENTS_DIR}/; REPA pairs them by sorted "
                             "position, so they must match (import with --no-images to use the moments alone)")
        labels = json.loads((self.path / MOMENTS_DIR / DATASET_JSON).read_text())["labels"]
        self.problems, self.warnings = [], []
        if labels is None:
            self.class_names = list(class_names or [UNCONDITIONAL_CLASS])
            self.labels = [0] * len(self.moment_files)
            self.rows = list(range(len(self.moment_files)))
        else:
            # A malformed entry simply labels nothing: its file is then reported as unlabelled.
            self._label({e[0]: e[1] for e in labels if isinstance(e, (list, tuple)) and len(e) == 2}, class_names)
        self.description = f"repa:{self.path.resolve()}"
        # Every example must match the first readable one, or the shards could not be stacked; an
        # unreadable file is skipped in `load`, with its name, like any other.
        self.moments_shape, first = _first_readable(
            self.moment_files, lambda name: np.load(self.path / MOMENTS_DIR / name, mmap_mode="r").shape)
        if self.moments_shape is not None and (len(self.moments_shape) != 3 or self.moments_shape[0] % 2):
            raise ValueError(f"{first} holds shape {list(self.moments_shape)}, not moments [2c, h, w]")
        self.image_size, _ = _first_readable(self.image_files, self._image_width)

    def _image_width(self, name: str) -> int:
        with Image.open(self.path / IMAGES_DIR / name) as image:
            return image.size[0]

    def _label(self, by_file: dict, class_names: list[str] | None) -> None:
        def is_index(value) -> bool:  # not `in valid`: True == 1 and 1.0 == 1 would pass that
            return isinstance(value, int) and not isinstance(value, bool) and value >= 0

        num_classes = len(class_names) if class_names else max(filter(is_index, by_file.values()), default=-1) + 1
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.rows, self.labels = [], []
        for row, name in enumerate(self.moment_files):
            label = by_file.get(name)
            if label is None:
                self.problems.append(Problem(f"{MOMENTS_DIR}/{name}", f"has no label in {MOMENTS_DIR}/{DATASET_JSON}"))
            elif not isinstance(label, int) or isinstance(label, bool):
                self.problems.append(Problem(f"{MOMENTS_DIR}/{name}", f"label {label!r} is not a class index"))
            elif label < 0 or label >= num_classes:
                self.problems.append(Problem(f"{MOMENTS_DIR}/{name}",
                                             f"label {label!r} is out of range [0, {num_classes})"))
            else:
                self.rows.append(row)
                self.labels.append(label)

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, index: int) -> str:
        return f"{MOMENTS_DIR}/{self.moment_files[self.rows[index]]}"

    def load(self, index: int) -> Example:
        row = self.rows[index]
        try:
            moments = np.load(self.path / MOMENTS_DIR / self.moment_files[row])
        except (OSError, ValueError, EOFError) as error:
            raise BadImage(f"moments file unreadable ({type(error).__name__}: {error})") from error
        if moments.shape != self.moments_shape:
            raise BadImage(f"moments have shape {list(moments.shape)}, the first file's is {list(self.moments_shape)}")
        image = np.zeros((0,), dtype=np.uint8)
        if self.image_files:
            image = self._image(self.image_files[row])
        return Example(image, self.labels[index], moments=moments.astype(np.float32))

    def _image(self, name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO((self.path / IMAGES_DIR / name).read_bytes())) as image:
                pixels = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:
            raise BadImage(f"image {IMAGES_DIR}/{name} unreadable ({type(error).__name__}: {error})") from error
        if pixels.shape[:2] != (self.image_size, self.image_size):
            raise BadImage(f"image {IMAGES_DIR}/{name} is {pixels.shape[1]}x{pixels.shape[0]}, the first image "
                           f"is {self.image_size}x{self.image_size}")
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
