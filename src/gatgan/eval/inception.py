"""The FID Inception-v3 (TF graph ``inception-2015-12-05``) as a feature extractor, from a local file.

FID, KID, precision/recall and IS are only comparable with published numbers when computed with
this exact network and its TF1 resizing; torch-fidelity's port reproduces both from weights
converted from the graph the StyleGAN and ADM evaluators load (its file carries the same hash
suffix, 6726825d, as pytorch-fid's pt_inception file; we have not compared the two here). Nothing is ever downloaded here: evaluation runs on
machines without internet access, and a silent download would hide which file was used.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..weights import read_state_dict

__all__ = ["INCEPTION_FILE", "INCEPTION_ID", "INCEPTION_URL", "InceptionFeatures"]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
# Names the network in cache keys of stored features/statistics.
INCEPTION_ID = "inception-2015-12-05"

# torch-fidelity's names for the 2048-d pool features and for the logits without the fc bias,
# which is what the original Inception Score code (and torch-fidelity's ISC) computes.
_FEATURES = ("2048", "logits_unbiased")
# Longest line kept from torch's load_state_dict error, which lists every offending key.
_ERROR_LINE_CHARS = 300


def check_inception_file(path: str | os.PathLike | None) -> None:
    """FileNotFoundError, saying where to get the weights, unless `path` is a file."""
    if path is not None and os.path.isfile(path):
        return
    where = "no path was given" if path is None else f"there is no file at {os.fspath(path)}"
    raise FileNotFoundError(
        f"The FID Inception-v3 weights are needed ({where}): torch-fidelity's {INCEPTION_FILE}. "
        f"It is never downloaded automatically; fetch {INCEPTION_URL} on a machine with internet access "
        "and pass its path with --inception (config key eval.inception)."
    )


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of the weights file, loaded safely (no arbitrary pickles) onto the CPU.

    BatchNorm ``num_batches_tracked`` counters are filled in where absent: the converted file
    may lack them, they do not affect inference, and torch only tolerates their absence for
    state dicts without version metadata.
    """
    state = read_state_dict(path, f"It is not {INCEPTION_FILE}.")
    for key in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    return state


def _load_network(state: dict[str, torch.Tensor], path: str | os.PathLike) -> torch.nn.Module:
    """torch-fidelity's Inception with ``state`` loaded strictly, errors naming the offending keys.

    Its constructor only accepts a file (and would download when given None), so the checked
    state dict is handed over as an in-memory file.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:
        raise ImportError("the FID Inception needs torch-fidelity: pip install 'gatgan[eval]'") from error
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        return FeatureExtractorInceptionV3(INCEPTION_ID, list(_FEATURES), feature_extractor_weights_path=buffer)
    except RuntimeError as error:
        lines = [
            line if len(line) <= _ERROR_LINE_CHARS else line[:_ERROR_LINE_CHARS] + " ..."
            for line in str(error).splitlines()
        ]
        raise ValueError(
            f"{path} is not the FID Inception-v3 weights ({INCEPTION_FILE}); its tensors do not match "
            "the network:\n" + "\n".join(lines)
        ) from error


def _batches(images: np.ndarray | Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Slices of at most ``batch_size`` images from one array or from a stream of arrays."""
    for batch in (images,) if isinstance(images, np.ndarray) else images:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] not in (1, 3):
            raise ValueError(
                "expected uint8 images [N, H, W, C] with C = 1 or 3, "
                f"got dtype {batch.dtype} and shape {batch.shape}"
            )
        for start in range(0, batch.shape[0], batch_size):
            yield batch[start : start + batch_size]


class InceptionFeatures:
    """Pool features and logits of the FID Inception-v3 for uint8 images of any size.

    Images are resized to 299x299 inside the network exactly as TF1 did, so callers pass the
    generator's native resolution; grayscale is repeated to RGB, as the reference evaluators do.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device) -> None:
        self.network = network
        self.device = device

    @classmethod
    def load(cls, path: str | os.PathLike | None, device: str | torch.device = "cpu") -> InceptionFeatures:
        """Load :data:`INCEPTION_FILE` from a local ``path``; never downloads.

        FileNotFoundError (saying where to get the file) when ``path`` is None or missing;
        ValueError when the file is not these weights.
        """
        check_inception_file(path)
        device = torch.device(device)
        network = _load_network(_read_state_dict(path), path)
        return cls(network.to(device), device)

    def extract(
        self,
        images: np.ndarray | Iterable[np.ndarray],
        batch_size: int = 64,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pool [N, 2048], logits [N, 1008])`` as float64 for uint8 NHWC images.

        ``images`` is one array or an iterable of arrays (e.g. batches streamed from a
        generator), so N need not fit in memory as images. The logits exclude the fc bias, as
        in the original Inception Score code; their softmax is what IS scores.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        total = images.shape[0] if isinstance(images, np.ndarray) else None
        pools, logits = [], []
        with tqdm(total=total, unit="img", desc="Inception features", disable=not progress) as bar:
            for batch in _batches(images, batch_size):
                x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2)
                with torch.inference_mode():  # expand: grayscale to RGB, a no-op for RGB
                    pool, logit = self.network(x.expand(-1, 3, -1, -1))
                pools.append(pool.double().cpu().numpy())
                logits.append(logit.double().cpu().numpy())
                bar.update(batch.shape[0])
        if not pools:
            return np.zeros((0, 2048)), np.zeros((0, 1008))
        return np.concatenate(pools), np.concatenate(logits)

    __call__ = extract
