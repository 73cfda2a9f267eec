"""`RepaLayoutSource`: data prepared for the authors' code / REPA (images/ + vae-sd/ moments),
imported with the moments copied bit for bit."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatgan.data.imaging import BadImage
from gatgan.data.latents import LatentDataset
from gatgan.data.prepare import PrepareOptions, prepare
from gatgan.data.repa_layout import RepaLayoutSource, is_repa_layout
from gatgan.tokenizers.identity import IdentityTokenizer

SIZE = 8


def _moments_name(k: int) -> str:
    return f"00000/img-mean-std-{k:08d}.npy"


def _image_name(k: int) -> str:
    return f"00000/img{k:08d}.png"


def _repa_dir(root: Path, count: int = 5, labels: list | None = None, images: bool = True) -> dict:
    """The layout of REPA's dataset_tools.py, with random moments and distinct random images.
    Files are written in reverse order so that only sorting can pair them."""
    rng = np.random.default_rng(count)
    labels = list(range(count)) if labels is None else labels
    moments = rng.normal(0, 3, (count, 8, 4, 4)).astype(np.float32)
    pixels = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    (root / "vae-sd" / "00000").mkdir(parents=True)
    for k in reversed(range(count)):
        np.save(root / "vae-sd" / _moments_name(k), moments[k])
    (root / "vae-sd" / "dataset.json").write_text(json.dumps(
        {"labels": [[_moments_name(k), label] for k, label in enumerate(labels) if label != "omit"]}))
    if images:
        (root / "images" / "00000").mkdir(parents=True)
        for k in reversed(range(count)):
            Image.fromarray(pixels[k]).save(root / "images" / _image_name(k))
        (root / "images" / "dataset.json").write_text(json.dumps(
            {"labels": [[_image_name(k), label] for k, label in enumerate(labels)]}))
    return {"moments": moments, "images": pixels.transpose(0, 3, 1, 2), "labels": labels}


def _import(source: RepaLayoutSource, out: Path, **options) -> LatentDataset:
    prepare(source, out, lambda: (IdentityTokenizer(3), {}), "identity",
            PrepareOptions(progress=False, workers=0, **options))
    return LatentDataset(out)


def test_is_repa_layout(tmp_path):
    assert not is_repa_layout(tmp_path)
    _repa_dir(tmp_path / "repa")
    assert is_repa_layout(tmp_path / "repa")
    assert not is_repa_layout(tmp_path / "repa" / "images")
    with pytest.raises(FileNotFoundError, match="not in the REPA layout"):
        RepaLayoutSource(tmp_path)


def test_images_and_moments_are_paired_by_sorted_position(tmp_path):
    made = _repa_dir(tmp_path, count=4, labels=[3, 1, 0, 2])
    source = RepaLayoutSource(tmp_path)
    assert len(source) == 4 and source.provides_moments
    assert source.class_names == ["0", "1", "2", "3"]
    assert source.key(2) == f"vae-sd/{_moments_name(2)}"
    for k in range(4):
        example = source.load(k)
        assert example.label == made["labels"][k]
        assert example.moments.dtype == np.float32
        np.testing.assert_array_equal(example.moments, made["moments"][k])
        np.testing.assert_array_equal(example.image, made["images"][k])


def test_import_copies_the_moments_bit_for_bit(tmp_path):
    made = _repa_dir(tmp_path / "repa", count=5, labels=[0, 2, 1, 1, 0])
    data = _import(RepaLayoutSource(tmp_path / "repa", class_names=["a", "b", "c"]), tmp_path / "out", shard_size=2)
    assert len(data) == 5 and len(data.index["shards"]) == 3
    assert data.class_names == ["a", "b", "c"] and data.latent_channels == 4 and data.latent_size == 4
    everything = np.arange(5)
    stored = data.gather("moments", everything)
    assert stored.dtype == np.float32
    for k in range(5):
        on_disk = np.load(tmp_path / "repa" / "vae-sd" / _moments_name(k))
        assert stored[k].tobytes() == on_disk.tobytes()
    assert data.labels(everything).tolist() == [0, 2, 1, 1, 0]
    assert data.has_images
    np.testing.assert_array_equal(data.gather("images", everything), made["images"])


def test_import_without_images(tmp_path):
    made = _repa_dir(tmp_path / "repa", count=3, images=False)
    source = RepaLayoutSource(tmp_path / "repa", with_images=False)
    data = _import(source, tmp_path / "out", store_images=False)
    assert not data.has_images
    np.testing.assert_array_equal(data.gather("moments", np.arange(3)), made["moments"])


def test_image_and_moment_counts_must_match(tmp_path):
    _repa_dir(tmp_path, count=3)
    (tmp_path / "images" / _image_name(1)).unlink()
    with pytest.raises(ValueError, match="2 images in images/ but 3 moment files"):
        RepaLayoutSource(tmp_path)
    assert len(RepaLayoutSource(tmp_path, with_images=False)) == 3


def test_unlabelled_and_badly_labelled_files_are_problems_and_pairing_holds(tmp_path):
    made = _repa_dir(tmp_path, count=6, labels=[0, "omit", 1, 1.0, True, -1])
    source = RepaLayoutSource(tmp_path, class_names=["x", "y"])
    problems = {p.key.removeprefix("vae-sd/"): p.reason for p in source.problems}
    assert all(p.key.startswith("vae-sd/") for p in source.problems)  # named like the files `load` skips
    assert set(problems) == {_moments_name(k) for k in (1, 3, 4, 5)}
    assert "has no label" in problems[_moments_name(1)]
    assert problems[_moments_name(3)] == "label 1.0 is not a class index"
    assert problems[_moments_name(4)] == "label True is not a class index"
    assert problems[_moments_name(5)] == "label -1 is out of range [0, 2)"
    assert len(source) == 2
    assert [source.key(i) for i in range(2)] == [f"vae-sd/{_moments_name(k)}" for k in (0, 2)]
    for i, k in enumerate((0, 2)):
        example = source.load(i)
        assert example.label == made["labels"][k] and type(example.label) is int
        np.testing.assert_array_equal(example.moments, made["moments"][k])
        np.testing.assert_array_equal(example.image, made["images"][k])  # image k, not image i


def test_labels_out_of_range_of_the_class_names(tmp_path):
    _repa_dir(tmp_path, count=3, labels=[0, 5, 1])
    source = RepaLayoutSource(tmp_path, class_names=["x", "y"])
    assert [p.key for p in source.problems] == [f"vae-sd/{_moments_name(1)}"]
    assert "out of range [0, 2)" in source.problems[0].reason
    assert RepaLayoutSource(tmp_path).class_names == [str(i) for i in range(6)]  # no names: up to the largest


def test_unconditional_labels(tmp_path):
    _repa_dir(tmp_path, count=3)
    (tmp_path / "vae-sd" / "dataset.json").write_text(json.dumps({"labels": None}))
    source = RepaLayoutSource(tmp_path)
    assert source.class_names == ["unconditional"] and len(source) == 3 and source.load(2).label == 0


@pytest.mark.parametrize("corrupt", [0, 2])
def test_a_corrupt_moments_file_is_skipped_with_a_message(tmp_path, capsys, corrupt):
    made = _repa_dir(tmp_path / "repa", count=4)
    bad = tmp_path / "repa" / "vae-sd" / _moments_name(corrupt)
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated .npy
    source = RepaLayoutSource(tmp_path / "repa")
    with pytest.raises(BadImage, match="moments file unreadable"):
        source.load(corrupt)
    data = _import(source, tmp_path / "out")
    kept = [k for k in range(4) if k != corrupt]
    assert len(data) == 3 and data.labels(np.arange(3)).tolist() == kept
    np.testing.assert_array_equal(data.gather("moments", np.arange(3)), made["moments"][kept])
    np.testing.assert_array_equal(data.gather("images", np.arange(3)), made["images"][kept])
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [row["file"] for row in skipped] == [f"vae-sd/{_moments_name(corrupt)}"]
    assert "unreadable" in skipped[0]["reason"]
    assert f"vae-sd/{_moments_name(corrupt)}" in capsys.readouterr().err


def test_moments_of_another_shape_and_a_broken_image_are_skipped(tmp_path):
    made = _repa_dir(tmp_path, count=4)
    np.save(tmp_path / "vae-sd" / _moments_name(1), np.zeros((8, 2, 2), dtype=np.float32))
    broken = tmp_path / "images" / _image_name(3)
    broken.write_bytes(broken.read_bytes()[:40])
    source = RepaLayoutSource(tmp_path)
    with pytest.raises(BadImage, match=r"shape \[8, 2, 2\]"):
        source.load(1)
    with pytest.raises(BadImage, match=f"images/{_image_name(3)}"):
        source.load(3)
    np.testing.assert_array_equal(source.load(2).moments, made["moments"][2])


def test_not_moments_at_all(tmp_path):
    _repa_dir(tmp_path, count=2)
    for k in range(2):
        np.save(tmp_path / "vae-sd" / _moments_name(k), np.zeros((3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \[3, 4, 4\], not moments"):
        RepaLayoutSource(tmp_path)
