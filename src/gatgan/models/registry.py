"""Named model sizes: the paper's GAT-S/B/L/XL (DiT's depths, widths and heads) with patch sizes
2, 4, 8 (and 1 for tiny latents), plus small presets that train on a laptop CPU.

`GAT-B/2` means size B with 2x2 patches; the same name builds a generator or a discriminator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .discriminator import Discriminator
from .generator import MAPPING_LR_MULT, Generator


@dataclass(frozen=True)
class ModelSize:
    depth: int
    width: int
    num_heads: int
    cmap_dim: int = 2048  # discriminator class-map width (docs/method.md §3)
    projector_dim: int = 2048  # discriminator REPA projector width


MODEL_SIZES: dict[str, ModelSize] = {
    # CPU presets: same architecture, scaled down; the class map shrinks with the width.
    "Nano": ModelSize(depth=4, width=64, num_heads=2, cmap_dim=128, projector_dim=256),
    "Micro": ModelSize(depth=4, width=128, num_heads=4, cmap_dim=256, projector_dim=512),
    "Mini": ModelSize(depth=8, width=192, num_heads=4, cmap_dim=512, projector_dim=512),
    # The paper's sizes (docs/method.md §1.2).
    "S": ModelSize(depth=12, width=384, num_heads=6),
    "B": ModelSize(depth=12, width=768, num_heads=12),
    "L": ModelSize(depth=24, width=1024, num_heads=16),
    "XL": ModelSize(depth=28, width=1152, num_heads=16),
}
PATCH_SIZES = (1, 2, 4, 8)
MODEL_NAMES = tuple(f"GAT-{size}/{patch}" for size in MODEL_SIZES for patch in PATCH_SIZES)
_NAME = re.compile(r"^GAT-(?P<size>[A-Za-z]+)/(?P<patch>\d+)$")


def parse_model_name(name: str) -> tuple[ModelSize, int]:
    match = _NAME.match(name)
    if not match or match["size"] not in MODEL_SIZES or int(match["patch"]) not in PATCH_SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    return MODEL_SIZES[match["size"]], int(match["patch"])


def build_generator(
    name: str, *, input_size: int, channels: int, num_classes: int, num_exits: int = 4, z_dim: int = 64,
    teacher_dim: int | None = None, mapping_lr_mult: float = MAPPING_LR_MULT, position_layout: str = "row-first",
) -> Generator:
    size, patch = parse_model_name(name)
    return Generator(
        input_size=input_size, channels=channels, patch_size=patch, width=size.width, depth=size.depth,
        num_heads=size.num_heads, num_classes=num_classes, z_dim=z_dim, num_exits=num_exits,
        projector_dim=size.projector_dim, teacher_dim=teacher_dim, mapping_lr_mult=mapping_lr_mult,
        position_layout=position_layout,
    )


def build_discriminator(
    name: str, *, input_size: int, channels: int, num_classes: int, num_levels: int = 4,
    teacher_dim: int | None = None, position_layout: str = "row-first",
) -> Discriminator:
    size, patch = parse_model_name(name)
    return Discriminator(
        input_size=input_size, channels=channels, patch_size=patch, width=size.width, depth=size.depth,
        num_heads=size.num_heads, num_classes=num_classes, num_levels=num_levels,
        cmap_dim=size.cmap_dim, projector_dim=size.projector_dim, teacher_dim=teacher_dim,
        position_layout=position_layout,
    )
