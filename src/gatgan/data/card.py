"""The data card: what a trained model needs to know about its data, kept with the run.

A run directory holds `data.json` (class names, latent shape, latent scaling, tokenizer identity)
and a copy of the tokenizer, and every checkpoint holds the card too, so sampling needs neither
the prepared data nor the path it had during training, and a resumed run can check that the data
it is given is the data it was trained on, even after the data has moved.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..files import write_if_changed
from ..tokenizers.base import LatentScaling
from .latents import LatentDataset

DATA_CARD = "data.json"
RUN_TOKENIZER = "tokenizer"
# Fields that must match when a run is resumed on a (possibly moved) data set.
IDENTITY = ("count", "class_names", "latent_shape", "scaling", "tokenizer")


def data_card(data: LatentDataset) -> dict:
    tokenizer = {k: v for k, v in data.index["tokenizer"].items() if k != "path"}
    return {"source": data.index["source"], "path": str(data.path.resolve()), "count": len(data),
            "class_names": data.class_names, "latent_shape": list(data.index["latent_shape"]),
            "image_shape": data.index.get("image_shape"), "scaling": data.scaling.to_dict(), "tokenizer": tokenizer}


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)  # the SD-VAE is 335 MB: share it when the file system allows
    except OSError:
        shutil.copy2(source, destination)


def write_data_card(run_dir: Path, data: LatentDataset) -> None:
    """Writes the card and the tokenizer copy, or checks them against `data` when resuming."""
    card, path = data_card(data), Path(run_dir) / DATA_CARD
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in IDENTITY if saved.get(k) != card[k]]
        if changed:
            raise ValueError(f"{data.path} is not the data this run was trained on ({', '.join(changed)} differ "
                             f"from {path}); point data.path at the original data or start a new run")
    tokenizer = Path(run_dir) / RUN_TOKENIZER
    if not tokenizer.is_dir():
        staging = tokenizer.with_name(f".{RUN_TOKENIZER}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(data.tokenizer_path, staging, copy_function=_link_or_copy)
        staging.rename(tokenizer)
    write_if_changed(path, json.dumps(card, indent=2), "data_card.write")


def read_data_card(checkpoint: Path) -> tuple[dict, LatentScaling]:
    path = Path(checkpoint) / DATA_CARD
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {DATA_CARD}; it was written by an older gatgan")
    card = json.loads(path.read_text())
    return card, LatentScaling(**card["scaling"])
