"""A trained GAT as a library model: `GAT.from_pretrained(folder_or_hub_id).generate(classes)`.

A run directory is made for training (optimiser states, every checkpoint, logs); a model is
shared as one self-contained folder written by `save_pretrained` (or `gatgan export-model`):

    config.json        what rebuilds the generator (model section, exits, latent shape, classes,
                       latent scaling) plus the full training config, for reference
    card.json          the model card's facts (size, images seen, data card, scores), read back on load
    model.safetensors  the EMA generator's weights
    tokenizer/         the latent space's decoder, as the run kept it
    README.md          the model card, written from card.json
    checksums.json     sha256 of the files above the tokenizer (not README.md, which hubs let users edit)

Sampling is `Sampler`'s, so an image depends only on (class, seed, settings): `generate` gives the
same pixels as `gatgan sample` on the run it was exported from.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from PIL import Image

from . import __version__
from .data.card import RUN_TOKENIZER, read_data_card
from .images import to_pil
from .models import Generator, build_generator
from .sample import PROJECTOR_OUT, Sampler
from .tokenizers import load_tokenizer
from .tokenizers.base import LatentScaling
from .tokenizers.sd_vae import HUB_ID
from .train.checkpoint import (BEST, CHECKPOINT_DIR, LATEST, latest_checkpoint, load_network,
                               verify_checkpoint, write_checkpoint_dir)
from .train.config import Config, read_config
from .train.evaluation import BEST_RECORD
from .train.rundir import read_stats

CONFIG_FILE = "config.json"
CARD_FILE = "card.json"
WEIGHTS = "model"  # model.safetensors
README = "README.md"
STATS_FILE = "stats.jsonl"
Output = Literal["pil", "tensor", "numpy"]
ClassSpec = int | str


@dataclass(repr=False)
class GAT:
    """A trained generator with its tokenizer, class names and model card. `config` is the content
    of config.json, `card` that of card.json (see the module docstring)."""

    sampler: Sampler
    config: dict
    card: dict
    tokenizer_dir: Path

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, dir_or_hub_id: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "GAT":
        """A `save_pretrained` folder, a run directory (its newest intact checkpoint) or a checkpoint
        directory; a string that is no existing path is a Hugging Face hub id, downloaded once into
        the hub cache. `dtype` is the generator's (e.g. torch.bfloat16 on a GPU); the tokenizer
        decodes in float32, since its output is quantised to 8 bits anyway."""
        path = _local_folder(dir_or_hub_id)
        if (path / f"{WEIGHTS}.safetensors").is_file():
            model = cls._from_export(path, device)
        else:
            model = cls.from_run(path, device=device)
        _run_generator_in(model.sampler.generator, dtype)
        return model

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str | Path | None = None,
                 device: str | torch.device = "cpu") -> "GAT":
        """The EMA generator of a run. `checkpoint`: None or "latest" (the newest intact one),
        "best" (checkpoints/best, kept by in-training evaluation), or a checkpoint directory."""
        path = _checkpoint_path(Path(run), checkpoint)
        verified = checkpoint in (None, LATEST) and path != Path(run)  # found by latest_checkpoint, which verifies
        sampler = Sampler.from_run(path, device=device, verified=verified)
        run_dir = path.parent.parent  # runs/<name>/checkpoints/<step>, as Sampler assumes for the tokenizer
        training, (data, _) = read_config(path / "config.yaml"), read_data_card(path)
        config = _export_config(training, data, sampler.generator)
        card = _card(path, run_dir, training, data, sampler.generator)
        return cls(sampler, config, card, run_dir / RUN_TOKENIZER)

    @classmethod
    def _from_export(cls, path: Path, device: str | torch.device) -> "GAT":
        verify_checkpoint(path)  # a truncated download or copy fails here, naming the file
        config = json.loads((path / CONFIG_FILE).read_text())
        generator = _build_generator(config)
        generator.load_state_dict(load_network(path, WEIGHTS))
        return cls.from_generator(generator, path / RUN_TOKENIZER, config, json.loads((path / CARD_FILE).read_text()),
                                  device)

    @classmethod
    def from_generator(cls, generator: Generator, tokenizer_dir: Path, config: dict, card: dict,
                       device: str | torch.device = "cpu") -> "GAT":
        """A generator with weights already loaded, the tokenizer saved in `tokenizer_dir`, and the
        content of config.json (its scaling and class names are used) and card.json: how an export is
        loaded, and how weights from outside a gatgan run (`gatgan.convert`) become a model."""
        device = torch.device(device)
        tokenizer = load_tokenizer(tokenizer_dir)
        sampler = Sampler(generator.eval().requires_grad_(False).to(device), tokenizer.eval().to(device),
                          LatentScaling(**config["scaling"]), config["class_names"], device)
        return cls(sampler, config, card, Path(tokenizer_dir))

    def __repr__(self) -> str:  # the dataclass's would print every weight of the sampler
        return f"GAT({self.card['name']!r}: {self.card['generator']}, {self.num_classes} classes)"

    # ------------------------------------------------------------------ generating
    @property
    def class_names(self) -> list[str]:
        return self.sampler.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def generate(self, classes: ClassSpec | Sequence[ClassSpec], seeds: Sequence[int] | None = None,
                 truncation: float = 1.0, guidance: float = 1.0, output: Output = "pil",
                 batch_size: int = 64) -> list[Image.Image] | torch.Tensor | np.ndarray:
        """One image per (class, seed): classes are names or indices, one class (repeated for every
        seed) or one per seed; seeds default to 0..n-1. Truncation 1 = none, 0 = the class mean;
        guidance 1 = none. Output "pil" (a list of images), "numpy" (uint8 [N, H, W, C]) or
        "tensor" (float [N, C, H, W] in [0, 1] on the CPU, the same pixels divided by 255)."""
        if output not in ("pil", "tensor", "numpy"):
            raise ValueError(f"output must be 'pil', 'tensor' or 'numpy', got {output!r}")
        labels, seeds = self._labels_and_seeds(classes, seeds)
        images = self.sampler.images(seeds, labels, truncation, guidance, batch_size)
        if output == "numpy":
            return images
        if output == "tensor":
            return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
        return [to_pil(image) for image in images]

    def _labels_and_seeds(self, classes: ClassSpec | Sequence[ClassSpec],
                          seeds: Sequence[int] | None) -> tuple[list[int], list[int]]:
        single = isinstance(classes, (str, int, np.integer))
        labels = [self.sampler.class_index(c) for c in ([classes] if single else classes)]
        if seeds is None:
            return labels, list(range(len(labels)))
        seeds = [int(s) for s in seeds]
        if single:
            return labels * len(seeds), seeds
        if len(seeds) != len(labels):
            raise ValueError(f"got {len(labels)} classes but {len(seeds)} seeds; give one seed per class "
                             "(or a single class for all seeds)")
        return labels, seeds

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path,
                        extra_networks: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
        """Writes the self-contained folder (see the module docstring) into a staging folder beside
        `directory` and renames it into place, so an interrupted save leaves no half model. An
        existing folder is replaced only if it is empty or an earlier export. `extra_networks` are
        saved beside the generator as <name>.safetensors, under the checksums (e.g. a converted
        discriminator, which loading ignores but which would otherwise be lost)."""
        final = Path(directory).resolve()
        _refuse_to_overwrite(final)
        files = {CONFIG_FILE: json.dumps(self.config, indent=2), CARD_FILE: json.dumps(self.card, indent=2)}

        def tokenizer_and_card(staging: Path) -> None:  # outside the checksums: the card may be edited
            shutil.copytree(self.tokenizer_dir, staging / RUN_TOKENIZER)
            (staging / README).write_text(model_card(self.config, self.card))

        networks = {WEIGHTS: self.sampler.generator.state_dict(), **(extra_networks or {})}
        return write_checkpoint_dir(final, networks, extra_files=files, unlisted=tokenizer_and_card)


# ---------------------------------------------------------------------- helpers
def _local_folder(dir_or_hub_id: str | Path) -> Path:
    path = Path(dir_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; give the folder written by save_pretrained (or `gatgan export-model`)")
    if isinstance(dir_or_hub_id, Path) or not HUB_ID.match(dir_or_hub_id):
        raise FileNotFoundError(f"{dir_or_hub_id} does not exist (and is not a Hugging Face hub id like "
                                "'owner/name'); give a folder written by save_pretrained or `gatgan export-model`")
    return _download(dir_or_hub_id)


def _download(hub_id: str) -> Path:
    """Imported here: the hub client is needed only for hub ids, never for local folders."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ImportError(f"{hub_id!r} is not a local folder; to download it from the Hugging Face hub, "
                          "pip install huggingface_hub") from error
    try:
        return Path(snapshot_download(repo_id=hub_id))
    except OSError as error:  # the hub client's errors (not found, offline, HTTP) are all OSErrors
        raise FileNotFoundError(f"{hub_id} is not a local folder, and downloading it as a Hugging Face hub id "
                                f"failed: {error}") from error


def _checkpoint_path(run: Path, checkpoint: str | Path | None) -> Path:
    """A run directory resolves to its newest intact checkpoint; anything else is taken as a checkpoint
    directory, which `Sampler.from_run` verifies (or reports as holding no checkpoint)."""
    if checkpoint == BEST:
        if not (run / CHECKPOINT_DIR / BEST).is_dir():
            raise FileNotFoundError(f"{run} has no {CHECKPOINT_DIR}/{BEST}: it is kept only by runs that evaluate "
                                    "while training (eval.every > 0); use the latest checkpoint instead")
        return run / CHECKPOINT_DIR / BEST
    if checkpoint not in (None, LATEST):
        return Path(checkpoint)
    return latest_checkpoint(run) or run


def _run_generator_in(generator: Generator, dtype: torch.dtype) -> None:
    """Casts the weights, and (by hooks, since Sampler draws z in float32 and the tokenizer decodes
    in float32) the noise on the way in and the latents on the way out."""
    if dtype == torch.float32:
        return
    generator.to(dtype)
    generator.register_forward_pre_hook(lambda module, args: (args[0].to(dtype), *args[1:]))
    generator.register_forward_hook(lambda module, args, output: output.float())


def _build_generator(config: dict) -> Generator:
    model, (channels, size) = config["model"], config["latent_shape"][:2]
    return build_generator(model["generator"], input_size=size, channels=channels,
                           num_classes=config["num_classes"], num_exits=model["num_levels"], z_dim=model["z_dim"],
                           mapping_lr_mult=model["mapping_lr_mult"], teacher_dim=model["teacher_dim"],
                           position_layout=model.get("position_layout", "row-first"))  # absent in older exports


def _export_config(training: Config, data: dict, generator: Generator) -> dict:
    """config.json: `_build_generator`'s arguments, how latents map to the tokenizer, the classes,
    and the training config for reference."""
    projector = generator.state_dict().get(PROJECTOR_OUT)
    model = dataclasses.asdict(training.model) | {"num_levels": training.loss.mng.num_levels,
                                                   "teacher_dim": None if projector is None else projector.shape[0],
                                                   "position_layout": generator.position_layout}
    return {"gatgan_version": __version__, "model": model, "latent_shape": data["latent_shape"],
            "num_classes": len(data["class_names"]), "class_names": data["class_names"],
            "scaling": data["scaling"], "training_config": training.to_dict()}


def _card(checkpoint: Path, run_dir: Path, training: Config, data: dict, generator: Generator) -> dict:
    """card.json: what the model card reports. The step is the checkpoint folder's name, or the one
    best.json records for checkpoints/best; kimg = step x global batch / 1000."""
    best = _read_json(run_dir / CHECKPOINT_DIR / BEST / BEST_RECORD)
    own = _read_json(checkpoint / BEST_RECORD) or {}
    step = int(checkpoint.name) if checkpoint.name.isdigit() else own.get("step")
    kimg = None if step is None else step * training.train.global_batch / 1000
    return {"name": training.run.name, "generator": training.model.generator,
            "parameters": sum(p.numel() for p in generator.parameters()), "step": step, "kimg": kimg,
            "data": data, "scores": {"best": best, "last_eval": _last_eval(run_dir / STATS_FILE, step)}}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _last_eval(stats: Path, step: int | None) -> dict | None:
    """The last in-training evaluation at or before `step` (a later one scored a later model)."""
    evaluated = [record for record in read_stats(stats)
                 if any(k.startswith("eval/") for k in record) and (step is None or record["step"] <= step)]
    if not evaluated:
        return None
    last = evaluated[-1]
    return {k: v for k, v in last.items() if k in ("step", "kimg") or k.startswith("eval/")}


def _refuse_to_overwrite(final: Path) -> None:
    """`save_pretrained` replaces the whole folder: never one that holds anything but an earlier export."""
    if final.is_dir() and any(final.iterdir()) and not (final / CONFIG_FILE).is_file():
        raise FileExistsError(f"{final} exists and is not a saved gatgan model; choose a new or empty folder")
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} is a file; choose a new or empty folder")


# ---------------------------------------------------------------------- the model card
def model_card(config: dict, card: dict) -> str:
    """README.md of a saved model: what it is, what it saw, how well it scored, how to use it."""
    data = card["data"]
    seen = "unknown" if card["kimg"] is None else f"{card['kimg']:g} kimg (step {card['step']})"
    example = json.dumps(config["class_names"][:2])
    return "\n".join([
        f"# {card['name']}: {card['generator']} ({card['parameters']:,} parameters)", "",
        "A class-conditional Generative Adversarial Transformer (GAT) generator "
        f"{card.get('origin', 'trained with gatgan ' + config['gatgan_version'])}. Training images seen: {seen}.", "",
        *(f"{note}\n" for note in card.get("notes", [])),
        "## Use", "", "```python", "from gatgan import GAT",
        f'images = GAT.from_pretrained("path/to/this/folder").generate({example}, output="pil")', "```", "",
        "## Data", "",
        f"- source: {data['source']}",
        f"- images: {data['count']}",
        f"- classes ({len(config['class_names'])}): {_listed(config['class_names'])}",
        f"- latent shape: {' x '.join(map(str, data['latent_shape']))}",
        f"- tokenizer: `{json.dumps(data['tokenizer'])}`", "",
        "## Scores", "", *_score_lines(card["scores"]), "",
        "## Training config", "", "```yaml", yaml.safe_dump(config["training_config"], sort_keys=False).rstrip(),
        "```", "",
    ])


def _listed(names: list[str], shown: int = 20) -> str:
    return ", ".join(names) if len(names) <= shown else f"{', '.join(names[:shown])}, ... (all in config.json)"


def _score_lines(scores: dict) -> list[str]:
    lines = []
    if (best := scores["best"]) is not None:
        lines.append(f"- best in-training {best['metric']}: {best['value']:.4g} at step {best['step']} "
                     f"({best['samples']} samples, truncation {best['truncation']:g})")
    if (last := scores["last_eval"]) is not None:
        values = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                           for k, v in last.items() if k.startswith("eval/"))
        lines.append(f"- last in-training evaluation (step {last['step']}, {last['kimg']:g} kimg): {values}")
    return lines or ["No evaluation was recorded during training (see `gatgan eval`)."]
