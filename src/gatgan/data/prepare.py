"""`gatgan prepare` for the embedded stack: Fashion-MNIST -> a trained tokenizer -> stored moments.

The output directory is written under a temporary name and renamed when complete, so an
interrupted prepare never leaves a directory that looks finished; a finished one is reused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..tokenizers import load_tokenizer
from ..tokenizers.base import LatentScaling, Tokenizer, to_signed_unit
from ..tokenizers.identity import IdentityTokenizer
from ..tokenizers.small_vae import reconstruction_report, train_small_vae
from .fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, load_fashion_mnist
from .latents import INDEX_FILE

TOKENIZERS = ("small_vae", "identity")


@torch.no_grad()
def encode_moments(tokenizer: Tokenizer, images: np.ndarray, batch_size: int = 1000,
                   progress: bool = True) -> np.ndarray:
    """uint8 images -> float32 [N, 2c, h, w] moments (mean ‖ std)."""
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch", disable=not progress):
        mean, std = tokenizer.encode_moments(to_signed_unit(images[start:start + batch_size]))
        chunks.append(torch.cat([mean, std], dim=1).numpy())
    return np.concatenate(chunks)


def latent_scaling(moments: np.ndarray, seed: int = 0) -> LatentScaling:
    """Per-channel shift and scale that give the sampled latents zero mean and unit variance."""
    generator = np.random.default_rng(seed)
    mean, std = np.split(moments.astype(np.float64), 2, axis=1)
    samples = mean + std * generator.standard_normal(mean.shape)
    channel_mean = samples.mean(axis=(0, 2, 3))
    channel_std = samples.std(axis=(0, 2, 3))
    return LatentScaling(shift=channel_mean.tolist(), scale=(1.0 / np.maximum(channel_std, 1e-6)).tolist())


def write_prepared(
    out: str | Path,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    tokenizer: Tokenizer,
    source: str,
    seed: int = 0,
    metadata: dict | None = None,
    progress: bool = True,
) -> Path:
    """Encodes uint8 images [N, C, H, W] with `tokenizer` and writes a prepared directory
    (layout in `gatgan.data.latents`), atomically: staged under `<out>.partial`, then renamed."""
    out = Path(out)
    started = time.time()
    moments = encode_moments(tokenizer, images, progress=progress)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer.save(staging / "tokenizer")
    np.save(staging / "moments.npy", moments.astype(np.float32))
    np.save(staging / "labels.npy", np.asarray(labels, dtype=np.int64))
    np.save(staging / "images.npy", images)
    index = {
        "format": 1,
        "source": source,
        "count": len(labels),
        "image_shape": list(images.shape[1:]),
        "latent_shape": [moments.shape[1] // 2, *moments.shape[2:]],
        "class_names": list(class_names),
        "tokenizer": "tokenizer",
        "scaling": latent_scaling(moments, seed).to_dict(),
        **_jsonable(metadata or {}),
        "encode_seconds": round(time.time() - started, 1),
    }
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def prepare_fashion_mnist(
    out: str | Path,
    *,
    tokenizer: str = "small_vae",
    root: str | Path = DEFAULT_ROOT,
    tokenizer_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Trains the tokenizer on the training split (reporting its reconstruction quality on the
    test split) and stores the training split's moments. A finished directory is reused."""
    out = Path(out)
    if (out / INDEX_FILE).is_file():
        print(f"{out} is already prepared; delete it to prepare again")
        return out
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose from {TOKENIZERS}")
    started = time.time()
    images, labels = load_fashion_mnist("train", root)
    metadata: dict = {}
    if tokenizer == "identity":
        model: Tokenizer = IdentityTokenizer(image_channels=images.shape[1])
    else:
        test_images, _ = load_fashion_mnist("test", root)
        kwargs = {"steps": tokenizer_steps} if tokenizer_steps else {}
        model, training = train_small_vae(images, seed=seed, progress=progress, **kwargs)
        test = reconstruction_report(model, test_images)
        metadata = {"tokenizer_training": training, "reconstruction": {"test": test}}
        print(f"tokenizer reconstruction on the {len(test_images)} test images: PSNR {test['psnr_mean']:.2f} dB "
              f"(posterior mean), {test['psnr_sample']:.2f} dB (posterior sample); "
              f"mean posterior std {test['posterior_std']:.3g}")
    write_prepared(out, images=images, labels=labels, class_names=list(CLASS_NAMES), tokenizer=model,
                   source=f"fashion-mnist:{root}", seed=seed, metadata=metadata, progress=progress)
    load_tokenizer(out / "tokenizer")  # fail now, not in training, if the saved tokenizer is unreadable
    print(f"prepared {len(labels)} examples in {out} ({time.time() - started:.0f} s)")
    return out


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist()
    return value
