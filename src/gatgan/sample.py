"""Sampling API: a trained run -> images, with one random generator per sample seed so the image
for (seed, class) is the same whatever the batch size or the number of devices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.card import RUN_TOKENIZER, read_data_card
from .hardware import allow_tf32
from .images import to_uint8
from .models import Generator, build_generator
from .tokenizers import load_tokenizer
from .tokenizers.base import LatentScaling, Tokenizer
from .train.checkpoint import MANIFEST, latest_checkpoint, load_network, verify_checkpoint
from .train.config import read_config


PROJECTOR_OUT = "projector.4.weight"  # the last layer of an optional REPA projector


@dataclass
class Sampler:
    generator: Generator
    tokenizer: Tokenizer
    scaling: LatentScaling
    class_names: list[str]
    device: torch.device
    guidance_form: str = "intended"  # or "authors" (see `Generator.forward`)

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str | Path | None = None, ema: bool = True,
                 device: str | torch.device = "cpu", verified: bool = False) -> "Sampler":
        """`run` is a run directory (its newest intact checkpoint) or a checkpoint directory (a step,
        or `checkpoints/best`, which holds only the EMA generator), whose checksums are verified
        unless the caller has just done so (`verified`, e.g. after `latest_checkpoint`): hashing a
        large model's checkpoint twice costs as long as reading it twice."""
        path = Path(checkpoint) if checkpoint else Path(run)
        if (path / MANIFEST).is_file() or (path / "generator_ema.safetensors").is_file():
            if not verified:
                verify_checkpoint(path)
        else:
            found = latest_checkpoint(path)
            if found is None:
                raise FileNotFoundError(f"{path} holds no checkpoint (train first with `gatgan train`)")
            path = found
        config = read_config(path / "config.yaml")
        card, scaling = read_data_card(path)
        channels, size = card["latent_shape"][:2]
        network = "generator_ema" if ema else "generator"
        weights = load_network(path, network)
        _refuse_non_finite(weights, path / f"{network}.safetensors")
        projector = weights.get(PROJECTOR_OUT)  # present when G was aligned with REPA too
        G = build_generator(config.model.generator, input_size=size, channels=channels,
                            num_classes=len(card["class_names"]), num_exits=config.loss.mng.num_levels,
                            z_dim=config.model.z_dim, mapping_lr_mult=config.model.mapping_lr_mult,
                            teacher_dim=None if projector is None else projector.shape[0])
        G.load_state_dict(weights)
        device = torch.device(device)
        allow_tf32(device, True)  # on CUDA, as in training (train.tf32's default)
        tokenizer = load_tokenizer(path.parent.parent / RUN_TOKENIZER)  # runs/<name>/checkpoints/<step>
        return cls(G.eval().requires_grad_(False).to(device), tokenizer.eval().to(device), scaling,
                   card["class_names"], device)

    def class_index(self, name_or_index: str | int) -> int:
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if not 0 <= index < len(self.class_names):
                raise ValueError(f"class {index} out of range [0, {len(self.class_names)})")
            return index
        if name_or_index not in self.class_names:
            raise ValueError(f"unknown class {name_or_index!r}; classes: {', '.join(self.class_names)}")
        return self.class_names.index(name_or_index)

    @torch.no_grad()
    def latents(self, seeds: list[int], labels: list[int], truncation: float = 1.0,
                guidance: float = 1.0) -> torch.Tensor:
        return self.latents_from_z(seeded_normal(seeds, self.generator.z_dim), labels, truncation, guidance)

    @torch.no_grad()
    def latents_from_z(self, z: torch.Tensor, labels: list[int], truncation: float = 1.0,
                       guidance: float = 1.0) -> torch.Tensor:
        """Generator latents for z that need not come from seeds (e.g. interpolated ones), mapped exactly
        as `latents` maps the seeds' z."""
        y = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        return self.generator(z.to(self.device), y, truncation=truncation, guidance=guidance,
                              guidance_form=self.guidance_form)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Generator latents [B, C, H, W] -> uint8 NHWC images, the one decoding path of every sampled image."""
        return to_uint8(self.tokenizer.decode(self.scaling.denormalize(latents)))

    @torch.no_grad()
    def images(self, seeds: list[int], labels: list[int], truncation: float = 1.0, guidance: float = 1.0,
               batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """uint8 NHWC images for each (seed, label) pair."""
        if len(seeds) != len(labels):
            raise ValueError(f"got {len(seeds)} seeds but {len(labels)} labels")
        out = []
        for start in tqdm(range(0, len(seeds), batch_size), desc="sample", unit="batch", disable=not progress):
            stop = start + batch_size
            latents = self.latents(seeds[start:stop], labels[start:stop], truncation, guidance)
            out.append(self.decode(latents))
        return np.concatenate(out)


def _refuse_non_finite(weights: dict[str, torch.Tensor], source: Path) -> None:
    """A diverged run saves NaN/inf weights that would sample blank images without any error."""
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"{source} holds non-finite weights ({name}: the run diverged); "
                             "pick an earlier checkpoint with --checkpoint")


def seeded_normal(seeds: list[int], dim: int) -> torch.Tensor:
    """One N(0, I) vector per seed, each from its own generator."""
    return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def class_balanced_labels(num: int, num_classes: int) -> list[int]:
    """0, 1, ..., C-1, 0, 1, ...: every class appears num // C or num // C + 1 times."""
    return [i % num_classes for i in range(num)]


def random_labels(num: int, num_classes: int, seed: int = 0) -> list[int]:
    """Uniformly random classes, as the authors sample (not exactly balanced)."""
    return np.random.default_rng(seed).integers(0, num_classes, num).tolist()


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An ADM-style sample batch: (uint8 NHWC images, labels or None)."""
    with np.load(path) as data:
        if "arr_0" not in data:
            raise ValueError(f"{path} has no arr_0 (uint8 NHWC images); write samples with `gatgan sample --out`")
        return data["arr_0"], data["arr_1"] if "arr_1" in data else None


def write_npz(path: str | Path, images: np.ndarray, labels: list[int]) -> None:
    """ADM-style sample batch: arr_0 uint8 NHWC images, arr_1 int64 labels."""
    np.savez(path, arr_0=images, arr_1=np.asarray(labels, dtype=np.int64))
