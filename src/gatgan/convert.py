"""The authors' own checkpoints (the dict their train.py `torch.save`s) as gatgan models.

Their generator and discriminator compute what gatgan's do, under other parameter names and with
three differences of layout, all handled here:

- the mapping's first layer takes [class embedding, z] where gatgan takes [z, class embedding], so
  the two column blocks of its weight are swapped;
- their fixed sin-cos position table puts the column coordinate in the first half of the channels
  (MAE/DiT), gatgan's the row: an exact permutation of the residual stream, so the converted
  networks are built with `position_layout="column-first"` (kept in config.json);
- their generator also holds a patch embedding that its forward multiplies by zero, and buffers
  (the position table, the RoPE tables) that gatgan rebuilds: these are dropped.

Conventions that differ without touching the weights: their truncation psi is 1 - gatgan's
`truncation`, and their MNG noise list index k is gatgan's level K-1-k. Their QK-RMSNorm uses the
machine epsilon where gatgan uses 1e-6, which moves outputs by at most ~2e-7.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .models import Discriminator, Generator, build_generator
from .models.generator import MAPPING_LR_MULT
from .models.registry import MODEL_SIZES, parse_model_name
from .tokenizers.base import LatentScaling, Tokenizer

THEIR_POSITION_LAYOUT = "column-first"
THEIR_SCALING = LatentScaling(shift=[0.0], scale=[0.18215])  # SD-VAE latents, as their train.py scales them
GENERATOR_KEYS = ("ema", "model", "generator", "G_ema", "G")  # tried in this order (EMA weights first)
DISCRIMINATOR_KEYS = ("discriminator", "D", "disc")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
DISCRIMINATOR_FILE = "discriminator"  # discriminator.safetensors beside model.safetensors
SHOWN = 8  # key names listed in an error before "..."

Rules = tuple[tuple[str, str], ...]  # (their key as a regex, gatgan's key as its expansion)

GENERATOR_RULES: Rules = (
    (r"y_embedder\.embedding_table\.weight", "mapping.class_embed.weight"),
    (r"latent_embedder\.0\.(weight|bias)", r"mapping.fc1.\1"),
    (r"latent_embedder\.2\.(weight|bias)", r"mapping.fc2.\1"),
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.1.\2"),
    (r"blocks\.(\d+)\.((?:attn|mlp)\..+)", r"blocks.\1.\2"),
    (r"final_layers\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"exits.\1.modulation.1.\2"),
    (r"final_layers\.(\d+)\.linear\.(weight|bias)", r"exits.\1.linear.\2"),
    (r"w_avg", "w_avg"),
)
GENERATOR_DROPPED = (r"x_embedder\..+", r"pos_embed", r"feat_rope\..+")

DISCRIMINATOR_RULES: Rules = (
    (r"x_embedder\.proj\.(weight|bias)", r"patch_embed.\1"),
    (r"cls_token", "cls_token"),
    (r"blocks\.(\d+)\.ls_attn", r"blocks.\1.gamma_attn"),
    (r"blocks\.(\d+)\.ls_mlp", r"blocks.\1.gamma_mlp"),
    (r"blocks\.(\d+)\.((?:norm1|norm2|attn|mlp)\..+)", r"blocks.\1.\2"),
    (r"final_layer\.0\.weight", "norm.weight"),
    (r"final_layer\.1\.(weight|bias)", r"head.\1"),
    (r"y_embedder\.embedding_table\.weight", "class_embed.weight"),
    (r"y_embedder\.latent_embedder\.([02])\.(weight|bias)", r"cmap.\1.\2"),
    (r"proj\.([024])\.(weight|bias)", r"projector.\1.\2"),
)
DISCRIMINATOR_DROPPED = (r"pos_embed", r"feat_rope\..+")

State = dict[str, torch.Tensor]


# ---------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class GeneratorArchitecture:
    """What `build_generator` needs, read from their weights so the user need not give the size."""

    name: str  # e.g. "GAT-XL/2"
    input_size: int
    channels: int
    num_classes: int
    num_exits: int
    z_dim: int

    def build(self) -> Generator:
        return build_generator(self.name, input_size=self.input_size, channels=self.channels,
                               num_classes=self.num_classes, num_exits=self.num_exits, z_dim=self.z_dim,
                               position_layout=THEIR_POSITION_LAYOUT)

    def model_config(self) -> dict:
        """config.json's "model" section, as `gatgan.pretrained` reads it back."""
        return {"generator": self.name, "z_dim": self.z_dim, "mapping_lr_mult": MAPPING_LR_MULT, "num_levels": self.num_exits,
                "teacher_dim": None, "position_layout": THEIR_POSITION_LAYOUT}


def infer_generator_architecture(theirs: State, model: str | None = None) -> GeneratorArchitecture:
    """Depth and exits from the numbers of blocks and final layers, width from the qkv weight, heads
    from the per-head QK-norm, patch size and channels from the (unused) patch embedding, or from
    `model` ("GAT-XL/2") when that is absent; the latent size from their position table. A `model`
    that disagrees with the weights is an error rather than a later shape mismatch."""
    width = _shape(theirs, "blocks.0.attn.qkv.weight", "the width")[1]
    heads = width // _shape(theirs, "blocks.0.attn.q_norm.weight", "the number of heads")[0]
    depth = _count(theirs, "blocks")
    out = _shape(theirs, "final_layers.0.linear.weight", "the patch size")[0]
    if "x_embedder.proj.weight" in theirs:
        _, channels, patch, _ = theirs["x_embedder.proj.weight"].shape
    elif model is not None:
        patch = parse_model_name(model)[1]
        channels = out // patch ** 2
    else:
        raise ValueError("their generator has no x_embedder.proj.weight to read the patch size from; "
                         "give the size with --model (e.g. GAT-XL/2)")
    grid = math.isqrt(_shape(theirs, "pos_embed", "the latent size")[1])
    classes, embed_dim = _shape(theirs, "y_embedder.embedding_table.weight", "the number of classes")
    z_dim = _shape(theirs, "latent_embedder.0.weight", "the z dimension")[1] - embed_dim
    name = _size_name(depth, width, heads, patch, model)
    return GeneratorArchitecture(name, grid * patch, channels, classes, _count(theirs, "final_layers"), z_dim)


def infer_discriminator_architecture(theirs: State, input_size: int, channels: int) -> dict:
    """`Discriminator`'s constructor arguments (kept in config.json's "discriminator"): built
    directly rather than from a size name, since their class-map and projector widths are free."""
    width, in_channels, patch, _ = _shape(theirs, "x_embedder.proj.weight", "the width and patch size")
    projector = theirs.get("proj.4.weight")
    return {
        "input_size": input_size, "channels": channels, "patch_size": patch, "width": width,
        "depth": _count(theirs, "blocks"),
        "num_heads": width // _shape(theirs, "blocks.0.attn.q_norm.weight", "the number of heads")[0],
        "num_classes": _shape(theirs, "y_embedder.embedding_table.weight", "the number of classes")[0],
        "num_levels": in_channels // channels,
        "cmap_dim": _shape(theirs, "final_layer.1.weight", "the class-map width")[0],
        "projector_dim": 2048 if projector is None else theirs["proj.0.weight"].shape[0],
        "teacher_dim": None if projector is None else projector.shape[0],
        "position_layout": THEIR_POSITION_LAYOUT,
    }


def _shape(theirs: State, key: str, purpose: str) -> torch.Size:
    if key not in theirs:
        raise ValueError(f"their checkpoint has no {key}, needed to read {purpose}; is it the authors' layout?")
    return theirs[key].shape


def _count(theirs: State, prefix: str) -> int:
    """The number of `prefix.<i>.` submodules (blocks, final layers)."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m[1]) for key in theirs if (m := pattern.match(key))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError(f"their checkpoint's {prefix}.<i> are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _size_name(depth: int, width: int, heads: int, patch: int, model: str | None) -> str:
    found = [f"GAT-{size}/{patch}" for size, s in MODEL_SIZES.items()
             if (s.depth, s.width, s.num_heads) == (depth, width, heads)]
    held = f"depth {depth}, width {width}, {heads} heads, patch {patch}"
    if model is not None:
        if model not in found:
            raise ValueError(f"--model {model} does not match the checkpoint, which holds {held}"
                             f"{f' ({found[0]})' if found else ''}")
        return model
    if not found:
        raise ValueError(f"no named gatgan size has {held}; known sizes: {', '.join(MODEL_SIZES)}")
    return found[0]


# ---------------------------------------------------------------------- state dicts
def convert_generator_state(theirs: State, architecture: GeneratorArchitecture | None = None) -> State:
    """Their generator state dict -> gatgan's `Generator` state dict (for `architecture`, by default
    the one their weights imply). Raises ValueError naming unexpected, missing or mis-shaped keys."""
    theirs = _unwrap(theirs)
    architecture = architecture or infer_generator_architecture(theirs)
    converted = _rename(theirs, GENERATOR_RULES, GENERATOR_DROPPED, "generator")
    fc1 = converted.get("mapping.fc1.weight")
    if fc1 is not None:  # theirs takes [y, z], gatgan [z, y]
        embed_dim = fc1.shape[1] - architecture.z_dim
        converted["mapping.fc1.weight"] = torch.cat([fc1[:, embed_dim:], fc1[:, :embed_dim]], dim=1)
    _check(converted, _expected(architecture.build), f"generator ({architecture.name})")
    return converted


def convert_discriminator_state(theirs: State, architecture: dict | None = None) -> State:
    """Their discriminator state dict -> gatgan's `Discriminator` state dict (`architecture`: its
    constructor arguments, by default those their weights imply at their own channel count)."""
    theirs = _unwrap(theirs)
    if architecture is None:
        input_size = math.isqrt(_shape(theirs, "pos_embed", "the latent size")[1]) \
            * _shape(theirs, "x_embedder.proj.weight", "the patch size")[-1]
        # channels=1: only channels x levels shapes the weights, and their file does not say how it splits
        architecture = infer_discriminator_architecture(theirs, input_size, channels=1)
    converted = _rename(theirs, DISCRIMINATOR_RULES, DISCRIMINATOR_DROPPED, "discriminator")
    _check(converted, _expected(lambda: Discriminator(**architecture)), "discriminator")
    return converted


def _unwrap(state: State) -> State:
    """Strips the prefixes DistributedDataParallel and torch.compile put on every key."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            return _unwrap({key[len(prefix):]: value for key, value in state.items()})
    return state


def _rename(theirs: State, rules: Rules, dropped: Iterable[str], what: str) -> State:
    converted, unknown = {}, []
    for key, tensor in theirs.items():
        if any(re.fullmatch(pattern, key) for pattern in dropped):
            continue
        new_key = next((m.expand(new) for old, new in rules if (m := re.fullmatch(old, key))), None)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
    if unknown:
        raise ValueError(f"unexpected keys in their {what}: {_listed(unknown)}")
    return converted


def _expected(build) -> dict[str, torch.Size]:
    """The state dict shapes of a network, built on the meta device so that even GAT-XL costs nothing."""
    with torch.device("meta"):
        return {key: value.shape for key, value in build().state_dict().items()}


def _check(converted: State, expected: dict[str, torch.Size], what: str) -> None:
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = [f"{key} {tuple(converted[key].shape)} (gatgan {tuple(expected[key])})"
              for key in sorted(set(expected) & set(converted)) if converted[key].shape != expected[key]]
    problems = [f"{label}: {_listed(keys)}" for label, keys in
                (("missing (as gatgan names them)", missing), ("unexpected (as gatgan names them)", unexpected),
                 ("shapes differ", shapes)) if keys]
    if problems:
        raise ValueError(f"their {what} does not match gatgan's: {'; '.join(problems)}")


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN else "")


# ---------------------------------------------------------------------- checkpoints
def load_their_checkpoint(path: str | Path) -> dict:
    """Tensors only (weights_only), plus the argparse.Namespace their train.py may store as "args"."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports pickled objects it will not run as various error types
        raise ValueError(f"could not read {path} as a torch.save'd checkpoint of tensors: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not the dict their train.py saves")
    return checkpoint


def select_state(checkpoint: dict, key: str | None, candidates: tuple[str, ...],
                 what: str) -> tuple[str | None, State] | None:
    """(top-level key, state dict): `key`'s, else the first of `candidates` present; a checkpoint
    that is itself a flat state dict is taken as the generator (key None). None when none is present."""
    if key is not None:
        if key not in checkpoint:
            raise ValueError(f"the checkpoint has no {key!r}; its top-level keys: {', '.join(map(str, checkpoint))}")
        return key, _unwrap(checkpoint[key])
    if what == "generator" and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return None, _unwrap(checkpoint)
    return next(((name, _unwrap(checkpoint[name])) for name in candidates if name in checkpoint), None)


def convert_checkpoint(path: str | Path, out_dir: str | Path, *, tokenizer: Tokenizer, model: str | None = None,
                       class_names: list[str] | None = None, key: str | None = None) -> Path:
    """Writes `out_dir`, a folder `gatgan.GAT.from_pretrained` loads: their generator (the `key`
    state dict, by default their EMA one) converted, `tokenizer` (the SD-VAE their latents come from),
    the 0.18215 latent scaling, `class_names` (default "0", "1", ...) and, when the checkpoint holds
    one, their discriminator converted into discriminator.safetensors. Returns the folder."""
    from .pretrained import GAT

    path = Path(path)
    checkpoint = load_their_checkpoint(path)
    selected = select_state(checkpoint, key, GENERATOR_KEYS, "generator")
    if selected is None:
        raise ValueError(f"{path} holds none of {', '.join(GENERATOR_KEYS)}; its top-level keys: "
                         f"{', '.join(map(str, checkpoint))}. Pick one with --key")
    key, theirs = selected
    architecture = infer_generator_architecture(theirs, model)
    generator = architecture.build()
    generator.load_state_dict(convert_generator_state(theirs, architecture))
    names = _class_names(class_names, architecture.num_classes)
    if tokenizer.latent_channels != architecture.channels:
        raise ValueError(f"the tokenizer has {tokenizer.latent_channels} latent channels, their generator "
                         f"{architecture.channels}")
    discriminator = _discriminator(checkpoint, architecture)
    config = _config(architecture, names, path, key, None if discriminator is None else discriminator[1])
    card = _card(path, architecture, generator, tokenizer, discriminator is not None)
    extra = None if discriminator is None else {DISCRIMINATOR_FILE: discriminator[0]}
    with tempfile.TemporaryDirectory() as staging:
        tokenizer.save(Path(staging) / "tokenizer")
        return GAT.from_generator(generator, Path(staging) / "tokenizer", config, card).save_pretrained(out_dir, extra)


def _class_names(class_names: list[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(index) for index in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for their {num_classes} classes")
    return class_names


def _discriminator(checkpoint: dict, generator: GeneratorArchitecture) -> tuple[State, dict] | None:
    selected = select_state(checkpoint, None, DISCRIMINATOR_KEYS, "discriminator")
    if selected is None:
        return None
    theirs = selected[1]
    architecture = infer_discriminator_architecture(theirs, generator.input_size, generator.channels)
    return convert_discriminator_state(theirs, architecture), architecture


def _config(architecture: GeneratorArchitecture, class_names: list[str], path: Path, key: str | None,
            discriminator: dict | None) -> dict:
    """config.json as `gatgan.pretrained` reads it; "training_config" records the conversion instead."""
    size = architecture.input_size
    return {"gatgan_version": __version__, "model": architecture.model_config(),
            "latent_shape": [architecture.channels, size, size], "num_classes": architecture.num_classes,
            "class_names": class_names, "scaling": THEIR_SCALING.to_dict(),
            "training_config": {"converted_from": str(path), "state": key or "the whole file"},
            "discriminator": discriminator}


def _card(path: Path, architecture: GeneratorArchitecture, generator: Generator, tokenizer: Tokenizer,
          with_discriminator: bool) -> dict:
    size = architecture.input_size
    discriminator = (f" {DISCRIMINATOR_FILE}.safetensors holds their discriminator in gatgan's names (constructor "
                     "arguments in config.json); their MNG noise list index k is gatgan's level K-1-k.")
    return {
        "name": path.stem, "generator": architecture.name,
        "parameters": sum(p.numel() for p in generator.parameters()), "step": None, "kimg": None,
        "origin": "converted by `gatgan convert` from the authors' own checkpoint (their train.py)",
        "data": {"source": f"the authors' training data (checkpoint {path.name})", "count": "unknown",
                 "latent_shape": [architecture.channels, size, size],
                 "tokenizer": {"kind": tokenizer.kind, **tokenizer.config()}},
        "scores": {"best": None, "last_eval": None},
        "notes": [
            "Truncation follows gatgan's (StyleGAN's) convention, 1 = none and 0 = the class mean: the "
            "authors' psi is 1 - truncation (their psi 0.3 is truncation 0.7 here).",
            "Built with their position table (position_layout column-first, in config.json)."
            + (discriminator if with_discriminator else ""),
        ],
    }


def read_class_names(path: str | Path) -> list[str]:
    """One class name a line (a JSON list also works), blank lines ignored."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return [str(name) for name in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]
