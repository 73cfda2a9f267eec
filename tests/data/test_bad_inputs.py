"""Bad inputs cost one example, never the run: `prepare` names each file and why it was left out,
keeps every good example, and never loses or rewrites what is already prepared."""

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatgan.data.imaging import decode_image
from gatgan.data.inputs import prepare_image_folder
from gatgan.data.latents import LatentDataset
from gatgan.data.prepare import PrepareOptions
from gatgan.data.sources import ImageSource

RESOLUTION = 8


def _pixels(seed: int, size=(12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _encoded(seed: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(_pixels(seed))
    (image.convert(mode) if mode != "RGB" else image).save(buffer, fmt)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _good_folder(root: Path) -> Path:
    """cat/: 2 images, dog/: 2 images."""
    for seed, name in enumerate(["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"]):
        _write(root / name, _encoded(seed))
    return root


def _options(**changes) -> PrepareOptions:
    return PrepareOptions(**{"progress": False, "workers": 0, "shard_size": 3, **changes})


def _prepare(source: Path, out: Path, class_names_file=None, resolution=RESOLUTION, **changes) -> LatentDataset:
    prepare_image_folder(source, out, resolution=resolution, tokenizer="identity", class_names_file=class_names_file,
                         options=_options(**changes))
    return LatentDataset(out)


def _jsonl(path: Path, key: str) -> dict[str, str]:
    return {row["file"]: row[key] for row in map(json.loads, path.read_text().splitlines())}


def _expected_images(root: Path, names: list[str]) -> np.ndarray:
    return np.stack([decode_image((root / name).read_bytes(), RESOLUTION)[0] for name in names])


def _check_kept(data: LatentDataset, root: Path, names: list[str], labels: list[int]) -> None:
    assert len(data) == len(names)
    everything = np.arange(len(data))
    assert data.labels(everything).tolist() == labels
    np.testing.assert_array_equal(data.gather("images", everything), _expected_images(root, names))


# ------------------------------------------------------------------------- unusable files
def _broken_symlink(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(path.parent / "does-not-exist.jpg", path)  # unreadable even for root


def _truncated_jpeg(path: Path) -> None:
    data = _encoded(7, "JPEG")
    _write(path, data[:len(data) // 2])


def _text_with_image_extension(path: Path) -> None:
    _write(path, b"this is a text file that claims to be a JPEG\n")


def _empty_file(path: Path) -> None:
    _write(path, b"")


@pytest.mark.parametrize("make, reason", [
    (_broken_symlink, "cannot be read"),
    (_truncated_jpeg, "truncated"),
    (_text_with_image_extension, "not a recognised image format"),
    (_empty_file, "empty"),
])
def test_an_unusable_file_is_skipped_and_named(tmp_path, capsys, make, reason):
    source = _good_folder(tmp_path / "src")
    make(source / "cat" / "x.jpg")
    data = _prepare(source, tmp_path / "out")
    _check_kept(data, source, ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"], [0, 0, 1, 1])
    skipped = _jsonl(tmp_path / "out" / "skipped.jsonl", "reason")
    assert list(skipped) == ["cat/x.jpg"] and reason in skipped["cat/x.jpg"].lower()
    assert data.index["summary"]["skipped"] == 1 and data.index["summary"]["prepared"] == 4
    printed = capsys.readouterr()
    assert f"cat/x.jpg: {skipped['cat/x.jpg']}" in printed.err
    assert "prepared 4 of 5 examples" in printed.out


def test_a_file_with_another_extension_is_left_out_while_listing(tmp_path, capsys):
    source = _good_folder(tmp_path / "src")
    _write(source / "dog" / "labels.csv", b"a,b\n")
    _write(source / "stray.png", _encoded(9))  # not inside a class folder
    data = _prepare(source, tmp_path / "out")
    _check_kept(data, source, ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"], [0, 0, 1, 1])
    skipped = _jsonl(tmp_path / "out" / "skipped.jsonl", "reason")
    assert skipped == {"dog/labels.csv": "not an image file (unknown extension)",
                       "stray.png": "not inside a class folder"}
    err = capsys.readouterr().err
    assert "left out while listing" in err and "dog/labels.csv" in err and "stray.png" in err


def test_grayscale_cmyk_and_rgba_are_converted_and_kept(tmp_path):
    source = _good_folder(tmp_path / "src")
    _write(source / "cat" / "gray.png", _encoded(10, "PNG", "L"))
    _write(source / "cat" / "print.jpg", _encoded(11, "JPEG", "CMYK"))
    _write(source / "dog" / "alpha.png", _encoded(12, "PNG", "RGBA"))
    data = _prepare(source, tmp_path / "out")
    names = ["cat/a.png", "cat/b.png", "cat/gray.png", "cat/print.jpg", "dog/alpha.png", "dog/c.png", "dog/d.png"]
    _check_kept(data, source, names, [0, 0, 0, 0, 1, 1, 1])
    assert (tmp_path / "out" / "skipped.jsonl").read_text() == ""
    converted = _jsonl(tmp_path / "out" / "converted.jsonl", "note")
    assert set(converted) == {"cat/gray.png", "cat/print.jpg", "dog/alpha.png"}
    assert "from L" in converted["cat/gray.png"] and "from CMYK" in converted["cat/print.jpg"]
    assert "RGBA" in converted["dog/alpha.png"]
    assert data.index["summary"]["converted_by_kind"]["converted from L"] == 1
    gray = data.gather("images", np.array([2]))[0]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()


# --------------------------------------------------------------------------- dataset.json
def test_bad_dataset_json_entries_are_skipped_and_named(tmp_path):
    source = tmp_path / "src"
    for seed in range(8):
        _write(source / f"img/{seed}.png", _encoded(seed))
    (tmp_path / "names.txt").write_text("zero\none\ntwo\n")
    entries = [
        ["img/0.png", 2],
        ["img/1.png", 3],            # out of range for 3 class names
        ["img/2.png", -1],           # negative
        ["img/3.png", 1.5],          # not an integer
        ["img/4.png", "1"],          # not an integer either
        ["img/5.png", 1],
        ["img/5.png", 0],            # listed twice: the first entry counts
        ["img/missing.png", 0],      # listed, not there
        ["img/6.png", True],         # a boolean is not a class index
        "img/7.png",                 # malformed
        ["img/7.png", 0],
    ]
    (source / "dataset.json").write_text(json.dumps({"labels": entries}))
    data = _prepare(source, tmp_path / "out", class_names_file=tmp_path / "names.txt")
    assert data.class_names == ["zero", "one", "two"]
    _check_kept(data, source, ["img/0.png", "img/5.png", "img/7.png"], [2, 1, 0])
    skipped = _jsonl(tmp_path / "out" / "skipped.jsonl", "reason")
    assert "out of range" in skipped["img/1.png"] and "[0, 3)" in skipped["img/1.png"]
    assert "out of range" in skipped["img/2.png"]
    assert "not a class index" in skipped["img/3.png"]
    assert "not a class index" in skipped["img/4.png"]
    assert "listed twice" in skipped["img/5.png"]
    assert "missing" in skipped["img/missing.png"]
    assert "not a class index" in skipped["img/6.png"]
    assert "malformed" in skipped["img/7.png"]
    assert len(skipped) == 8


def test_a_zip_with_duplicate_members_uses_the_first(tmp_path):
    archive = tmp_path / "src.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("cat/a.png", _encoded(0))
            z.writestr("cat/a.png", _encoded(1))
            z.writestr("dog/b.png", _encoded(2))
    source = ImageSource(archive, RESOLUTION)
    assert source.keys == ["cat/a.png", "dog/b.png"]
    assert [str(p) for p in source.problems] == ["cat/a.png: duplicate path in the zip (the first copy is used)"]
    first = decode_image(_encoded(0), RESOLUTION)[0]
    np.testing.assert_array_equal(source.load(0).image, first)
    data = _prepare(archive, tmp_path / "out")
    assert len(data) == 2 and data.labels(np.arange(2)).tolist() == [0, 1]
    np.testing.assert_array_equal(data.gather("images", np.array([0]))[0], first)
    assert "duplicate" in _jsonl(tmp_path / "out" / "skipped.jsonl", "reason")["cat/a.png"]


UNSAFE_MEMBERS = {"cat/../evil.png": "unsafe path", "../outside.png": "unsafe path",
                  "dog/../../x.png": "unsafe path", "/abs/c.png": "absolute path", "/d.png": "absolute path"}


def test_zip_members_with_unsafe_paths_are_listed_and_never_used(tmp_path, capsys):
    archive = tmp_path / "zips" / "src.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for seed, name in enumerate(["cat/a.png", "dog/b.png", *UNSAFE_MEMBERS]):
            z.writestr(name, _encoded(seed))
    data = _prepare(archive, tmp_path / "out")
    assert data.class_names == ["cat", "dog"] and len(data) == 2  # no class "" (absolute) or ".."
    skipped = _jsonl(tmp_path / "out" / "skipped.jsonl", "reason")
    assert {name: reason.split(" (")[0] for name, reason in skipped.items()} == UNSAFE_MEMBERS
    assert sorted(p.name for p in archive.parent.iterdir()) == ["src.zip"]  # nothing extracted beside it
    assert "/abs/c.png: absolute path" in capsys.readouterr().err


def test_an_empty_class_folder_keeps_its_index(tmp_path, capsys):
    source = _good_folder(tmp_path / "src")
    (source / "crow").mkdir()  # between cat and dog
    data = _prepare(source, tmp_path / "out")
    assert data.class_names == ["cat", "crow", "dog"]
    _check_kept(data, source, ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.png"], [0, 0, 2, 2])
    err = capsys.readouterr().err
    assert "warning" in err and "'crow'" in err and "no images" in err


# ---------------------------------------------------------------- nothing prepared is lost
def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_finished_prepare_is_never_redone(tmp_path, capsys):
    source = _good_folder(tmp_path / "src")
    _prepare(source, tmp_path / "out")
    before = _snapshot(tmp_path / "out")
    capsys.readouterr()
    _write(source / "dog" / "e.png", _encoded(20))  # even if the source changed since
    _prepare(source, tmp_path / "out", shard_size=2)
    assert "already prepared" in capsys.readouterr().out
    assert _snapshot(tmp_path / "out") == before
    assert not (tmp_path / "out.partial").exists()


def _crash_in_the_second_shard(monkeypatch, shard_size: int) -> None:
    load = ImageSource.load

    def failing_load(self, index):
        if index == shard_size + 1:
            raise RuntimeError("disk went away")
        return load(self, index)

    monkeypatch.setattr(ImageSource, "load", failing_load)


def test_an_interrupted_prepare_resumes_without_redoing_finished_shards(tmp_path, monkeypatch):
    source = _good_folder(tmp_path / "src")
    _write(source / "dog" / "e.png", _encoded(5))
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    with monkeypatch.context() as patch:
        _crash_in_the_second_shard(patch, shard_size=2)
        with pytest.raises(RuntimeError, match="disk went away"):
            _prepare(source, out, shard_size=2)
    assert not out.exists()
    shards = partial / "shards"
    assert (shards / "00000.json").is_file() and not (shards / "00001.json").exists()
    assert json.loads((shards / "00000.json").read_text())["count"] == 2
    first_shard = {p.name: p.stat().st_mtime_ns for p in shards.glob("00000.*")}
    assert set(first_shard) == {"00000.json", "00000.moments.npy", "00000.labels.npy", "00000.images.npy"}

    resumed = _prepare(source, out, shard_size=2)
    assert not partial.exists()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("00000.*")} == first_shard

    clean = _prepare(source, tmp_path / "clean", shard_size=2)
    everything = np.arange(5)
    assert len(resumed) == len(clean) == 5
    for name in ("moments", "labels", "images"):
        np.testing.assert_array_equal(resumed.gather(name, everything), clean.gather(name, everything))
    for key in ("count", "shards", "class_names", "latent_shape", "scaling", "latent_stats", "settings"):
        assert resumed.index[key] == clean.index[key], key


@pytest.mark.parametrize("change, setting", [
    ({"shard_size": 3}, "shard_size"),
    ({"resolution": 16}, "resolution"),  # the crop size is a setting of the source
    ({"store_images": False}, "store_images"),
])
def test_resuming_with_other_settings_is_refused(tmp_path, monkeypatch, change, setting):
    source = _good_folder(tmp_path / "src")
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _crash_in_the_second_shard(patch, shard_size=2)
        with pytest.raises(RuntimeError):
            _prepare(source, out, shard_size=2)
    shards_before = _snapshot(tmp_path / "out.partial")
    with pytest.raises(ValueError, match="interrupted prepare with other settings") as raised:
        _prepare(source, out, **{"shard_size": 2, **change})
    assert setting in str(raised.value)
    assert _snapshot(tmp_path / "out.partial") == shards_before  # nothing was touched
