"""Random FID Inception weights in the real file's layout, for tests (the real file cannot be
downloaded here)."""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

from gatgan.eval.inception import INCEPTION_FILE


def architecture_state() -> OrderedDict[str, torch.Tensor]:
    """torch-fidelity's own state dict (with version metadata), built without any weights file."""
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        network = tf_inception.FeatureExtractorInceptionV3("layout", ["2048"], feature_extractor_weights_path=empty)
    return network.state_dict()


def random_weights(layout: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in the real file's layout, scaled (He init, BatchNorm near identity) so that
    activations neither vanish nor explode through the 94 convolutions."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for key, like in layout.items():
        if key.endswith("num_batches_tracked"):
            continue
        noise = torch.randn(like.shape, generator=gen)
        if key.endswith("conv.weight"):
            weights[key] = noise * math.sqrt(2.0 / like[0].numel())
        elif key.endswith(("bn.weight", "bn.running_var")):
            weights[key] = 1.0 + 0.1 * noise.abs()
        elif key == "fc.weight":
            weights[key] = noise / math.sqrt(like.shape[1])
        else:  # BatchNorm biases and means, fc bias
            weights[key] = 0.1 * noise
    return weights


def write_random_inception(directory: Path, seed: int = 0) -> Path:
    """A plain dict without num_batches_tracked, as torch-fidelity's converter writes the real file."""
    path = Path(directory) / INCEPTION_FILE
    torch.save(random_weights(architecture_state(), seed), path)
    return path
