"""REPA teachers. `load_teacher` turns a config string into a frozen teacher:

    "data"                                the teacher stored with the prepared data (`prepare --teacher`)
    "/path/to/dir"                        a directory holding a saved teacher (teacher.json)
    "dinov2_vitb14:/path/weights.pth"     DINOv2 (vits14/vitb14/vitl14/vitg14) from the original checkpoint
    "timm:<model name>:<weights file>"    any timm ViT with a [cls] token; weights "hub" downloads them
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Teacher, TeacherFeatures

__all__ = ["Teacher", "TeacherFeatures", "TEACHER_DIR", "load_saved_teacher", "load_teacher"]

TEACHER_DIR = "teacher"  # inside a prepared data directory


def load_saved_teacher(directory: str | Path) -> Teacher:
    directory = Path(directory)
    config_file = directory / "teacher.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no teacher in {directory}: {config_file.name} is missing")
    config = json.loads(config_file.read_text())
    kind = config.pop("kind", None)
    if kind == "ssl_encoder":
        from .ssl import SSLEncoder

        return SSLEncoder.from_directory(directory, config).eval()
    if kind == "timm_vit":
        from .timm_vit import TimmViTTeacher

        return TimmViTTeacher.from_directory(directory, config).eval()
    raise ValueError(f"teacher in {directory} has unknown kind {kind!r}; known: 'ssl_encoder', 'timm_vit'")


def load_teacher(spec: str, data_dir: str | Path | None = None) -> Teacher:
    if spec == "data":
        if data_dir is None or not (Path(data_dir) / TEACHER_DIR / "teacher.json").is_file():
            raise FileNotFoundError(f"loss.repa.teacher=data, but the prepared data {data_dir} holds no teacher; "
                                    "prepare it with --teacher (e.g. --teacher ssl on the embedded stack)")
        return load_saved_teacher(Path(data_dir) / TEACHER_DIR)
    if Path(spec).is_dir():
        return load_saved_teacher(spec)
    from .timm_vit import TimmViTTeacher

    model, _, weights = spec.removeprefix("timm:").partition(":")
    return TimmViTTeacher.from_spec(model, weights or None).eval()
