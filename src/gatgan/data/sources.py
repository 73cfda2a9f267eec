"""Where `prepare` reads labelled examples from: image folders and zips, with ImageFolder labels
or a StyleGAN-style `dataset.json`, and in-memory arrays (the embedded Fashion-MNIST).

Every source lists its examples once, deterministically (sorted), so that any number of `prepare`
processes agree on which example is number i without talking to each other. Problems found while
listing (a duplicated path, a label out of range, a file that is listed but missing, a file that
is not an image, an empty class) are collected as `Problem`s: the example is left out, the run goes
on, and the summary names every file.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from .imaging import IMAGE_EXTENSIONS, BadImage, decode_image

DATASET_JSON = "dataset.json"
UNCONDITIONAL_CLASS = "unconditional"


@dataclass
class Problem:
    """One input that was left out (or kept with a warning), named by its path inside the source."""

    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


@dataclass
class Example:
    image: np.ndarray  # uint8 [C, H, W]
    label: int
    note: str | None = None  # a conversion that kept the example (e.g. "converted from CMYK")
    moments: np.ndarray | None = None  # precomputed posterior moments (imported data), else None


class ExampleSource:
    """A fixed, ordered list of examples. Subclasses fill `class_names`, `problems`, `description`
    and implement `__len__`, `key` and `load`; `load` raises BadImage for an unusable example."""

    class_names: list[str]
    problems: list[Problem]
    warnings: list[str]
    description: str
    decodes = True  # loading does real work (worth worker processes)
    provides_moments = False  # examples carry precomputed moments (imported data)

    def __len__(self) -> int:
        raise NotImplementedError

    def key(self, index: int) -> str:
        raise NotImplementedError

    def load(self, index: int) -> Example:
        raise NotImplementedError

    def output_settings(self) -> dict:
        """Source options that change what is written (checked when a prepare is resumed)."""
        return {}


class ArraySource(ExampleSource):
    """Images already decoded in memory (Fashion-MNIST), stored as they are."""

    decodes = False

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str], description: str):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {list(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)
        self.class_names, self.problems, self.warnings = list(class_names), [], []
        self.description = description
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= len(class_names)))
        if len(bad):
            raise ValueError(f"{len(bad)} labels are outside [0, {len(class_names)}), e.g. example {bad[0]}")

    def __len__(self) -> int:
        return len(self.images)

    def key(self, index: int) -> str:
        return f"#{index}"

    def load(self, index: int) -> Example:
        return Example(self.images[index], int(self.labels[index]))


# ------------------------------------------------------------------------------------ files
class _Files:
    """Read access to the files of a folder or a zip, addressed by '/'-separated relative paths."""

    def __init__(self, path: Path):
        self.path = path
        self.is_zip = path.is_file()
        if self.is_zip and not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is neither a directory nor a zip file")
        if not path.exists():
            raise FileNotFoundError(f"image source {path} does not exist")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        self._zip_members: dict[str, int] = {}
        self.top_folders: set[str] = set()  # filled by list(): top-level folders, empty ones included

    def list(self) -> tuple[list[str], list[Problem]]:
        """All files (sorted) and the zip members that were dropped (duplicates, unsafe paths)."""
        if not self.is_zip:
            names = []
            for root, dirs, files in os.walk(self.path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                if Path(root) == self.path:
                    self.top_folders = set(dirs)
                relative = Path(root).relative_to(self.path)
                names += [(relative / f).as_posix() for f in files if not f.startswith(".")]
            return sorted(n[2:] if n.startswith("./") else n for n in names), []
        problems, folders = [], set()
        with zipfile.ZipFile(self.path) as archive:
            for position, info in enumerate(archive.infolist()):
                name = info.filename
                if unsafe := _unsafe_member(name):
                    problems.append(Problem(name, unsafe))
                    continue
                if any(part.startswith(".") for part in PurePosixPath(name).parts):
                    continue
                if info.is_dir():
                    folders.add(name.rstrip("/"))  # explicit (maybe empty) folders
                    continue
                folders.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
                if name in self._zip_members:
                    problems.append(Problem(name, "duplicate path in the zip (the first copy is used)"))
                    continue
                self._zip_members[name] = position
        self._strip_wrapper_folder(folders)
        self.top_folders = {f for f in folders if "/" not in f}
        return sorted(self._zip_members), problems

    def _strip_wrapper_folder(self, folders: set[str]) -> None:
        """`zip -r data.zip data/` puts everything under one folder: when that folder holds a
        dataset.json or only sub-folders, it is the data set's root, not a class."""
        tops = {name.split("/", 1)[0] for name in self._zip_members} | {f.split("/", 1)[0] for f in folders}
        if len(tops) != 1 or any("/" not in name for name in self._zip_members):
            return
        prefix = f"{tops.pop()}/"
        inner = [name[len(prefix):] for name in self._zip_members]
        if DATASET_JSON not in inner and not all("/" in name for name in inner):
            return
        self._zip_members = {name[len(prefix):]: i for name, i in self._zip_members.items()}
        stripped = {f[len(prefix):] for f in folders if f.startswith(prefix)}
        folders.clear()
        folders.update(stripped)

    def read(self, name: str) -> bytes:
        if not self.is_zip:
            with open(self.path / name, "rb") as f:
                return f.read()
        if self._zip is None or self._zip_pid != os.getpid():  # one handle per (worker) process
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.read(self._zip.infolist()[self._zip_members[name]])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None, "_zip_pid": -1}


def _unsafe_member(name: str) -> str | None:
    """Why a zip member's path is refused, or None. An absolute path or a `..` component could name
    a file outside the data set if it were ever extracted, and would make a class folder named ""
    or ".."; such members are never used, but listed, since every skipped file must be."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        return "absolute path (refused: it could point outside the data set)"
    if ".." in name.replace("\\", "/").split("/"):
        return "unsafe path (refused: a '..' component could point outside the data set)"
    return None


def read_class_names(path: str | Path) -> list[str]:
    """A JSON list of names, or a text file with one name per line (e.g. ImageNet's synset list)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return [str(name) for name in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class _Listing:
    class_names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ImageSource(ExampleSource):
    """Encoded images in a folder or a zip, labelled by `dataset.json` at the root if there is one
    (`{"labels": [[relative_path, class_index], ...]}`, or `"labels": null` for unconditional
    data; an optional `"class_names"` list), else by their top-level folder (ImageFolder: classes
    are the sorted folder names)."""

    def __init__(self, path: str | Path, resolution: int, class_names: list[str] | None = None):
        self.path = Path(path)
        self.resolution = resolution
        self.files = _Files(self.path)
        names, duplicates = self.files.list()
        if DATASET_JSON in names:
            listing, layout = self._from_dataset_json(names, class_names), "dataset.json"
        else:
            listing, layout = self._from_folders(names, class_names), "class folders"
        self.class_names, self.keys, self.labels = listing.class_names, listing.keys, listing.labels
        self.problems = duplicates + listing.problems
        self.warnings = listing.warnings
        # The crop size is part of what identifies the source when an interrupted prepare resumes.
        self.description = f"{'zip' if self.files.is_zip else 'folder'}:{self.path.resolve()} ({layout})"
        if not self.keys:
            raise ValueError(f"{self.path}: no usable images found ({len(self.problems)} files left out"
                             + (f", e.g. {self.problems[0]}" if self.problems else "") + ")")

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, index: int) -> str:
        return self.keys[index]

    def output_settings(self) -> dict:
        return {"resolution": self.resolution}

    def load(self, index: int) -> Example:
        try:
            data = self.files.read(self.keys[index])
        except OSError as error:
            raise BadImage(f"cannot be read ({type(error).__name__}: {error.strerror or error})") from error
        image, note = decode_image(data, self.resolution)
        return Example(image, self.labels[index], note)

    # ------------------------------------------------------------------ the two label layouts
    def _from_folders(self, names: list[str], class_names: list[str] | None) -> _Listing:
        listing = _Listing()
        # Empty class folders hold no files but still take their place in the sorted class list.
        folders = sorted({n.split("/", 1)[0] for n in names if "/" in n} | self.files.top_folders)
        if class_names is not None and len(class_names) != len(folders):
            raise ValueError(f"{len(class_names)} class names given for {len(folders)} class folders")
        listing.class_names = list(class_names or folders)
        index = {folder: i for i, folder in enumerate(folders)}
        counts = dict.fromkeys(folders, 0)
        for name in names:
            if "/" not in name:
                listing.problems.append(Problem(name, "not inside a class folder"))
            elif not _is_image(name):
                listing.problems.append(Problem(name, "not an image file (unknown extension)"))
            else:
                folder = name.split("/", 1)[0]
                listing.keys.append(name)
                listing.labels.append(index[folder])
                counts[folder] += 1
        for folder, count in counts.items():
            if count == 0:
                listing.warnings.append(f"class {index[folder]} ({folder!r}) has no images; it keeps its "
                                        "index so labels stay aligned, but the model cannot learn it")
        return listing

    def _from_dataset_json(self, names: list[str], class_names: list[str] | None) -> _Listing:
        listing = _Listing()
        try:
            meta = json.loads(self.files.read(DATASET_JSON))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.path}/{DATASET_JSON} is not valid JSON: {error}") from error
        if not isinstance(meta, dict) or "labels" not in meta:
            raise ValueError(f"{self.path}/{DATASET_JSON} must be an object with a 'labels' entry")
        available = set(names)
        if meta["labels"] is None:  # unconditional: every image file, one class
            listing.class_names = [UNCONDITIONAL_CLASS]
            listing.keys = [n for n in names if _is_image(n)]
            listing.labels = [0] * len(listing.keys)
            return listing
        names_given = class_names or meta.get("class_names")
        num_classes = len(names_given) if names_given else None
        seen: set[str] = set()
        for entry in meta["labels"]:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
                listing.problems.append(Problem(str(entry)[:80], "malformed entry (expected [path, label])"))
                continue
            key, label = entry[0].replace("\\", "/").removeprefix("./"), entry[1]
            reason = None
            if key in seen:
                reason = "listed twice in dataset.json (the first entry is used)"
            elif key not in available:
                reason = "listed in dataset.json but missing from the source"
            elif not isinstance(label, int) or isinstance(label, bool):
                reason = f"label {label!r} is not a class index"
            elif label < 0 or (num_classes is not None and label >= num_classes):
                reason = f"label {label} is out of range [0, {num_classes or 'inf'})"
            seen.add(key)
            if reason:
                listing.problems.append(Problem(key, reason))
            else:
                listing.keys.append(key)
                listing.labels.append(label)
        if num_classes is None:
            num_classes = max(listing.labels, default=-1) + 1
            names_given = [str(i) for i in range(num_classes)]
        listing.class_names = list(names_given)
        empty = sorted(set(range(num_classes)) - set(listing.labels))
        if empty:
            listing.warnings.append(f"{len(empty)} classes have no images (e.g. {empty[:5]}); they keep "
                                    "their indices, but the model cannot learn them")
        order = np.argsort(listing.keys, kind="stable")
        listing.keys = [listing.keys[i] for i in order]
        listing.labels = [listing.labels[i] for i in order]
        return listing
