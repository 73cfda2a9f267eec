"""Reading a network's weights from a file someone downloaded: one safe reader for every asset
(SD-VAE, REPA teachers, the FID Inception)."""

from __future__ import annotations

from pathlib import Path

import torch

CHECKPOINT_WRAPPERS = ("state_dict", "model")  # training checkpoints nest the weights under these


def read_state_dict(path: str | Path, hint: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch pickle, loaded with weights_only so that no code
    from the file runs, unwrapped from Lightning/timm training checkpoints. `hint` ends the error
    messages (where to get the right file)."""
    path = Path(path)
    suffix = f" {hint}" if hint else ""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # each format raises its own error types
        raise ValueError(f"could not read weights from {path} ({type(error).__name__}: {error}).{suffix}") from error
    unwrapped = True
    while unwrapped:
        unwrapped = False
        for key in CHECKPOINT_WRAPPERS:
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state, unwrapped = state[key], True
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.{suffix}")
    return dict(state)
