"""Image bytes -> a square uint8 RGB array, cropped the way ADM, DiT and REPA prepare ImageNet.

The crop matters for comparable FID: the ADM reference statistics were computed on images made by
halving with a box filter while the short side is at least twice the target, one bicubic resize
of the short side to the target, then a centre crop. Images are decoded in full (`load()`), so a
truncated file fails here, in `prepare`, with its name, instead of producing a half-grey image.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".jfif"})


class BadImage(ValueError):
    """An input file that cannot become a training image; `prepare` skips it and reports why."""


def is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def centre_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """PIL image -> uint8 [resolution, resolution, channels] (ADM's `center_crop_arr` protocol)."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - resolution) // 2
    left = (pixels.shape[1] - resolution) // 2
    return pixels[top:top + resolution, left:left + resolution]


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Every input becomes 8-bit RGB; the returned note says what was converted (None: nothing)."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels would otherwise keep whatever colour they store (often black).
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"alpha ({mode}) composited on white"
    if mode in ("I", "F") or mode.startswith("I;16"):
        # convert("RGB") would clip 16-bit values at 255; rescale the full range to 8 bits instead.
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode != "F" else max(float(pixels.max()), 1e-12)
        eight_bit = np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB"), f"{mode} rescaled to 8-bit RGB"
    return image.convert("RGB"), f"converted from {mode}"


def decode_image(data: bytes, resolution: int) -> tuple[np.ndarray, str | None]:
    """Encoded image bytes -> (uint8 [3, resolution, resolution], conversion note or None).
    Raises BadImage for anything that is not a complete, decodable image."""
    if not data:
        raise BadImage("the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb, note = _to_rgb(image)
                if min(rgb.size) < resolution:
                    upscaled = f"upscaled from {rgb.size[0]}x{rgb.size[1]}"
                    note = f"{note}; {upscaled}" if note else upscaled
                pixels = centre_crop(rgb, resolution)
    except UnidentifiedImageError as error:  # its message names a BytesIO object, not the file
        raise BadImage("not a recognised image format") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(f"not a readable image ({type(error).__name__}: {error})") from error
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), note
