"""`ImageSource`: ImageFolder labels and dataset.json labels, over a folder and over a zip."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gatgan.data.sources import UNCONDITIONAL_CLASS, ImageSource, read_class_names

RESOLUTION = 8


def _write_image(path: Path, seed: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _image_folder(root: Path) -> Path:
    """cat/ (3 images, one in a nested folder), dog/ (2), zebra/ (1); files written out of order."""
    files = ["zebra/z.png", "cat/b.png", "dog/y.jpg", "cat/a.png", "dog/x.png", "cat/nested/deeper/c.png"]
    for seed, name in enumerate(files):
        _write_image(root / name, seed)
    return root


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*"), reverse=True):  # member order must not matter
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return archive


EXPECTED_KEYS = ["cat/a.png", "cat/b.png", "cat/nested/deeper/c.png", "dog/x.png", "dog/y.jpg", "zebra/z.png"]
EXPECTED_LABELS = [0, 0, 0, 1, 1, 2]


def test_image_folder_classes_labels_and_keys(tmp_path):
    source = ImageSource(_image_folder(tmp_path / "src"), RESOLUTION)
    assert source.class_names == ["cat", "dog", "zebra"]
    assert [source.key(i) for i in range(len(source))] == EXPECTED_KEYS
    assert [source.load(i).label for i in range(len(source))] == EXPECTED_LABELS
    assert source.problems == [] and source.warnings == []
    assert source.load(0).image.shape == (3, RESOLUTION, RESOLUTION)
    again = ImageSource(tmp_path / "src", RESOLUTION)
    assert again.keys == source.keys and again.labels == source.labels


def test_a_zip_of_the_folder_gives_the_same_examples(tmp_path):
    folder = ImageSource(_image_folder(tmp_path / "src"), RESOLUTION)
    archive = ImageSource(_zip(tmp_path / "src", tmp_path / "src.zip"), RESOLUTION)
    assert archive.files.is_zip and "zip:" in archive.description
    assert archive.class_names == folder.class_names
    assert archive.keys == folder.keys and archive.labels == folder.labels
    for i in range(len(folder)):
        a, b = folder.load(i), archive.load(i)
        assert a.label == b.label
        np.testing.assert_array_equal(a.image, b.image)
    # the pixels really are the files' (not e.g. all the same image)
    assert not np.array_equal(folder.load(0).image, folder.load(1).image)


def _dataset_json_folder(root: Path, labels, **extra) -> Path:
    for seed, name in enumerate(["img/002.png", "img/000.png", "img/001.png"]):
        _write_image(root / name, seed)
    (root / "dataset.json").write_text(json.dumps({"labels": labels, **extra}))
    return root


@pytest.mark.parametrize("as_zip", [False, True])
def test_dataset_json_labels(tmp_path, as_zip):
    path = _dataset_json_folder(tmp_path / "src", [["img/002.png", 4], ["img/000.png", 1], ["img/001.png", 0]])
    if as_zip:
        path = _zip(path, tmp_path / "src.zip")
    source = ImageSource(path, RESOLUTION)
    assert "dataset.json" in source.description
    assert source.keys == ["img/000.png", "img/001.png", "img/002.png"]  # sorted, not in listing order
    assert source.labels == [1, 0, 4]
    assert source.class_names == ["0", "1", "2", "3", "4"]  # no names given: the indices
    assert source.problems == []
    assert any("no images" in w for w in source.warnings)  # classes 2 and 3 are empty
    reference = np.asarray(Image.open(tmp_path / "src" / "img/002.png").resize((10, 8), Image.BICUBIC))
    np.testing.assert_array_equal(source.load(2).image, reference[:, 1:9].transpose(2, 0, 1))


@pytest.mark.parametrize("as_zip", [False, True])
def test_dataset_json_without_labels_is_one_unconditional_class(tmp_path, as_zip):
    path = _dataset_json_folder(tmp_path / "src", None)
    (path / "notes.txt").write_text("not an image")
    if as_zip:
        path = _zip(path, tmp_path / "src.zip")
    source = ImageSource(path, RESOLUTION)
    assert source.class_names == [UNCONDITIONAL_CLASS]
    assert source.keys == ["img/000.png", "img/001.png", "img/002.png"]
    assert source.labels == [0, 0, 0]


def test_class_names_from_dataset_json(tmp_path):
    path = _dataset_json_folder(tmp_path / "src", [["img/000.png", 1], ["img/001.png", 0], ["img/002.png", 1]],
                                class_names=["tench", "goldfish", "shark"])
    source = ImageSource(path, RESOLUTION)
    assert source.class_names == ["tench", "goldfish", "shark"]
    assert source.labels == [1, 0, 1]
    given = ImageSource(path, RESOLUTION, class_names=["a", "b", "c", "d"])  # given names take precedence
    assert given.class_names == ["a", "b", "c", "d"]


def test_read_class_names_json_and_text(tmp_path):
    (tmp_path / "names.json").write_text(json.dumps(["tench", "goldfish", 3]))
    (tmp_path / "names.txt").write_text("n01440764 tench\n\n  n01443537 goldfish  \n")
    assert read_class_names(tmp_path / "names.json") == ["tench", "goldfish", "3"]
    assert read_class_names(tmp_path / "names.txt") == ["n01440764 tench", "n01443537 goldfish"]
    source = ImageSource(_image_folder(tmp_path / "src"), RESOLUTION,
                         class_names=read_class_names(tmp_path / "names.json"))
    assert source.class_names == ["tench", "goldfish", "3"]
    assert source.labels == EXPECTED_LABELS


def test_class_name_count_must_match_the_folders(tmp_path):
    with pytest.raises(ValueError, match="2 class names given for 3 class folders"):
        ImageSource(_image_folder(tmp_path / "src"), RESOLUTION, class_names=["a", "b"])


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageSource(tmp_path / "nowhere", RESOLUTION)


def test_a_file_that_is_not_a_zip(tmp_path):
    (tmp_path / "images.tar").write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ValueError, match="neither a directory nor a zip"):
        ImageSource(tmp_path / "images.tar", RESOLUTION)


def test_no_usable_images(tmp_path):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match=r"no usable images.*cat/readme\.txt"):
        ImageSource(tmp_path / "src", RESOLUTION)


def test_the_resolution_is_an_output_setting(tmp_path):
    """The crop size changes every stored array, so a resumed prepare must check it."""
    path = _image_folder(tmp_path / "src")
    assert ImageSource(path, 8).output_settings() == {"resolution": 8}


def test_a_zip_of_one_wrapper_folder_is_read_from_inside_it(tmp_path):
    """`zip -r data.zip data/` nests everything in data/: that folder is the root, not one class."""
    path = _image_folder(tmp_path / "data")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(path.rglob("*")):
            zf.write(file, file.relative_to(tmp_path).as_posix())
    zipped, plain = ImageSource(archive, RESOLUTION), ImageSource(path, RESOLUTION)
    assert zipped.class_names == plain.class_names and zipped.keys == plain.keys and zipped.labels == plain.labels
    np.testing.assert_array_equal(zipped.load(0).image, plain.load(0).image)


@pytest.mark.parametrize("as_zip", [False, True])
def test_an_empty_class_folder_keeps_its_index(tmp_path, as_zip):
    path = _image_folder(tmp_path / "src")
    (path / "crow").mkdir()  # sorts between cat and dog
    if as_zip:
        path = _zip(path, tmp_path / "src.zip")
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("crow/", "")  # a zip records an empty folder as a directory entry
    source = ImageSource(path, RESOLUTION)
    assert source.class_names == ["cat", "crow", "dog", "zebra"]
    assert source.labels == [0, 0, 0, 2, 2, 3]
    assert len(source.warnings) == 1 and "'crow'" in source.warnings[0] and "class 1" in source.warnings[0]
    with pytest.raises(ValueError, match="3 class names given for 4 class folders"):
        ImageSource(path, RESOLUTION, class_names=["a", "b", "c"])
