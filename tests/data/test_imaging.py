"""`decode_image`: the ADM centre crop (checked against an independent reference), the conversions
of unusual modes to RGB, and BadImage for anything that is not a complete image."""

import io
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from gatgan.data.imaging import BadImage, centre_crop, decode_image


def _encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _random_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _reference_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """ADM's `center_crop_arr`, written out step by step: halve with a box filter while the short
    side is at least twice the target, one bicubic resize that brings the short side to the target
    (the long side rounded exactly), then cut the centre square."""
    width, height = image.size
    while width >= 2 * resolution and height >= 2 * resolution:
        width, height = width // 2, height // 2
        image = image.resize((width, height), resample=Image.BOX)
    short = min(width, height)
    width, height = (round(Fraction(side * resolution, short)) for side in (width, height))
    image = image.resize((width, height), resample=Image.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    square = image.crop((left, top, left + resolution, top + resolution))
    assert square.size == (resolution, resolution)
    return np.asarray(square).transpose(2, 0, 1)


@pytest.mark.parametrize("size, resolution", [
    ((700, 300), 64),   # two box halvings, landscape
    ((65, 200), 32),    # one halving, portrait, odd side
    ((16, 16), 32),     # upscaled
    ((40, 24), 16),     # no halving (24 < 32), bicubic down
    ((33, 129), 16),    # halvings on an odd long side
    ((128, 128), 32),   # square, exact halvings, no resize left
])
def test_centre_crop_matches_the_adm_reference(size, resolution):
    image = _random_rgb(*size, seed=sum(size))
    pixels, _ = decode_image(_encode(image), resolution)
    assert pixels.shape == (3, resolution, resolution) and pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(pixels, _reference_crop(image, resolution))


def test_box_halving_is_not_skipped():
    """The reference must tell the ADM protocol from a plain resize, or the test above proves nothing."""
    image = _random_rgb(700, 300, seed=1)
    plain = image.resize((149, 64), resample=Image.BICUBIC)
    left = (149 - 64) // 2
    plain = np.asarray(plain.crop((left, 0, left + 64, 64))).transpose(2, 0, 1)
    assert not np.array_equal(_reference_crop(image, 64), plain)
    np.testing.assert_array_equal(centre_crop(image, 64).transpose(2, 0, 1), _reference_crop(image, 64))


def test_an_rgb_image_of_the_right_size_is_kept_exactly_and_unannotated():
    image = _random_rgb(16, 16, seed=2)
    pixels, note = decode_image(_encode(image), 16)
    assert note is None
    np.testing.assert_array_equal(pixels, np.asarray(image).transpose(2, 0, 1))


def test_upscaled_images_are_noted():
    pixels, note = decode_image(_encode(_random_rgb(12, 10)), 16)
    assert pixels.shape == (3, 16, 16)
    assert note == "upscaled from 12x10"
    _, note = decode_image(_encode(_random_rgb(12, 10).convert("L")), 16)
    assert "from L" in note and "upscaled from 12x10" in note


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8))
    pixels, note = decode_image(_encode(gray), 16)
    assert pixels.shape == (3, 16, 16) and note == "converted from L"
    for channel in pixels:
        np.testing.assert_array_equal(channel, np.asarray(gray))


def test_cmyk_jpeg_becomes_rgb():
    colours = np.zeros((16, 16, 3), dtype=np.uint8)
    colours[:8] = (200, 30, 40)
    colours[8:] = (20, 60, 220)
    data = _encode(Image.fromarray(colours).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixels, note = decode_image(data, 16)
    assert pixels.shape == (3, 16, 16) and note == "converted from CMYK"
    # JPEG is lossy; the colours only have to survive approximately (not e.g. come out inverted).
    assert np.abs(pixels[:, 2, 8].astype(int) - [200, 30, 40]).max() < 25
    assert np.abs(pixels[:, 13, 8].astype(int) - [20, 60, 220]).max() < 25


def test_transparent_pixels_become_white():
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # transparent black
    rgba[8:] = (10, 200, 30, 255)  # opaque green
    rgba[:8, :8] = (255, 0, 0, 128)  # half-transparent red
    pixels, note = decode_image(_encode(Image.fromarray(rgba, "RGBA")), 16)
    assert note is not None and "RGBA" in note and "white" in note
    assert (pixels[:, :8, 8:] == 255).all()  # fully transparent -> white, not the stored black
    assert pixels[:, 12, 4].tolist() == [10, 200, 30]
    red, green, blue = pixels[:, 2, 2].tolist()
    assert red == 255 and 120 <= green <= 135 and green == blue  # red at half alpha over white


def test_palette_transparency_becomes_white():
    palette_image = Image.new("P", (16, 16), 0)
    palette_image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (3 * 254))
    palette_image.paste(1, (0, 0, 16, 8))  # top half blue, bottom half index 0 (black, transparent)
    data = _encode(palette_image, transparency=0)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == "P" and "transparency" in reopened.info
    pixels, note = decode_image(data, 16)
    assert note is not None and "(P)" in note and "white" in note
    assert pixels[:, 0, 0].tolist() == [0, 0, 255]
    assert (pixels[:, 8:] == 255).all()


def test_sixteen_bit_grayscale_is_rescaled_not_clipped():
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    data = _encode(Image.fromarray(values))
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode.startswith("I")
    pixels, note = decode_image(data, 16)
    assert note is not None and "rescaled" in note
    expected = np.floor(values / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    for channel in pixels:
        np.testing.assert_array_equal(channel, expected)
    assert len(np.unique(pixels[0])) > 200  # clipping would leave almost everything at 255


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_bad(fmt):
    data = _encode(_random_rgb(40, 24, seed=4), fmt)
    decode_image(data, 16)  # whole: fine
    with pytest.raises(BadImage, match="truncated"):
        decode_image(data[:len(data) // 2], 16)


@pytest.mark.parametrize("data, words", [
    (b"this is a text file, not an image\n" * 4, "not a recognised image"),
    (b"", "empty"),
])
def test_non_images_are_bad_with_a_readable_message(data, words):
    with pytest.raises(BadImage) as raised:
        decode_image(data, 16)
    message = str(raised.value)
    assert words in message
    assert "object at 0x" not in message  # no Python object addresses in what the user reads
