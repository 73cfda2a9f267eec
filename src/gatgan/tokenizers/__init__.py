"""Latent spaces. `load_tokenizer` rebuilds whichever one a directory holds from its tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

from .base import LatentScaling, Tokenizer
from .identity import IdentityTokenizer
from .sd_vae import SDVAETokenizer
from .small_vae import WEIGHTS_FILE, SmallVAE

__all__ = ["IdentityTokenizer", "LatentScaling", "SDVAETokenizer", "SmallVAE", "Tokenizer", "load_tokenizer"]


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Reads `directory/tokenizer.json` (written by `Tokenizer.save`) and returns the tokenizer in eval mode."""
    directory = Path(directory)
    config_file = directory / "tokenizer.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no tokenizer in {directory}: {config_file.name} is missing")
    config = json.loads(config_file.read_text())
    kind = config.pop("kind", None)
    if kind == IdentityTokenizer.kind:
        return IdentityTokenizer(**config).eval()
    if kind == SmallVAE.kind:
        if not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"tokenizer in {directory} is a {kind} but its weights {WEIGHTS_FILE} are missing")
        return SmallVAE.from_directory(directory, config)
    if kind == SDVAETokenizer.kind:
        return SDVAETokenizer.from_directory(directory, config)
    raise ValueError(f"tokenizer in {directory} has unknown kind {kind!r}; "
                     f"known: {IdentityTokenizer.kind!r}, {SmallVAE.kind!r}, {SDVAETokenizer.kind!r}")
