"""What `gatgan prepare` can start from: the embedded Fashion-MNIST, a folder or zip of labelled
images, or data in the REPA layout. Each entry point picks a source and a tokenizer and hands both
to the one `prepare` engine, so every kind of input ends in the same format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..encoders import load_teacher
from ..encoders.base import Teacher
from ..tokenizers.base import Tokenizer
from ..tokenizers.identity import IdentityTokenizer
from ..tokenizers.small_vae import reconstruction_report, train_small_vae
from .fashion_mnist import CLASS_NAMES, DEFAULT_ROOT, load_fashion_mnist
from .prepare import (PrepareOptions, TeacherProvider, TokenizerProvider, already_prepared, check_resolution,
                      prepare)
from .repa_layout import RepaLayoutSource
from .sources import ArraySource, ImageSource, read_class_names

EMBEDDED_TOKENIZERS = ("small_vae", "identity")
EMBEDDED_TEACHERS = ("ssl", "none")
IMAGE_TOKENIZERS = ("sd_vae", "identity")
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"  # docs/method.md §1.1: training and FID decode use ft-mse


def prepare_fashion_mnist(out: str | Path, *, tokenizer: str = "small_vae", root: str | Path = DEFAULT_ROOT,
                          tokenizer_steps: int | None = None, teacher: str = "ssl", teacher_steps: int | None = None,
                          options: PrepareOptions | None = None) -> Path:
    """Trains the small VAE on the training split (reporting its reconstruction quality on the
    test split), stores the training split's moments, and trains the self-supervised REPA teacher
    on the training images (reporting its linear-probe accuracy on the test split)."""
    if tokenizer not in EMBEDDED_TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r} for Fashion-MNIST; choose from {EMBEDDED_TOKENIZERS}")
    if teacher not in EMBEDDED_TEACHERS:
        raise ValueError(f"unknown teacher {teacher!r} for Fashion-MNIST; choose from {EMBEDDED_TEACHERS}")
    options = options or PrepareOptions()
    if already_prepared(out):
        return Path(out)
    images, labels = load_fashion_mnist("train", root)
    source = ArraySource(images, labels, list(CLASS_NAMES), f"fashion-mnist:{Path(root).resolve()}")

    def provide() -> tuple[Tokenizer, dict]:
        if tokenizer == "identity":
            return IdentityTokenizer(image_channels=images.shape[1]), {}
        test_images, _ = load_fashion_mnist("test", root)
        kwargs = {"steps": tokenizer_steps} if tokenizer_steps else {}
        model, training = train_small_vae(images, seed=options.seed, progress=options.progress, **kwargs)
        test = reconstruction_report(model, test_images)
        print(f"tokenizer reconstruction on the {len(test_images)} test images: PSNR {test['psnr_mean']:.2f} dB "
              f"(posterior mean), {test['psnr_sample']:.2f} dB (posterior sample); "
              f"mean posterior std {test['posterior_std']:.3g}")
        return model, {"training": training, "reconstruction": {"test": test}}

    def provide_teacher() -> tuple[Teacher, dict]:
        from ..encoders.ssl import linear_probe_accuracy, train_ssl_encoder

        kwargs = {"steps": teacher_steps} if teacher_steps else {}
        encoder, training = train_ssl_encoder(images, seed=options.seed, progress=options.progress, **kwargs)
        test_images, test_labels = load_fashion_mnist("test", root)
        accuracy = linear_probe_accuracy(encoder, images, labels, test_images, test_labels, seed=options.seed)
        print(f"REPA teacher (self-supervised, no labels): linear-probe accuracy {100 * accuracy:.1f}% on the "
              f"{len(test_images)} test images")
        return encoder, {"training": training, "linear_probe_test_accuracy": accuracy}

    request = tokenizer if tokenizer == "identity" else f"small_vae(steps={tokenizer_steps or 'default'})"
    with_teacher = teacher == "ssl"
    return prepare(source, out, provide, request, options, provide_teacher if with_teacher else None,
                   f"ssl(steps={teacher_steps or 'default'})" if with_teacher else "")


def prepare_arrays(out: str | Path, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                   tokenizer: Tokenizer, description: str, options: PrepareOptions | None = None) -> Path:
    """In-memory uint8 images [N, C, H, W] through a ready tokenizer (synthetic data, tests)."""
    return prepare(ArraySource(images, labels, class_names, description), out, lambda: (tokenizer, {}),
                   tokenizer.kind, options)


def sd_vae_tokenizer(vae: str, subfolder: str | None, config: str | None) -> tuple[TokenizerProvider, str]:
    """(provider, request): the request string identifies the VAE when a prepare is resumed."""
    def provide() -> tuple[Tokenizer, dict]:
        from ..tokenizers.sd_vae import SDVAETokenizer

        return SDVAETokenizer.from_source(vae, subfolder=subfolder, config=config), {"source": vae}

    return provide, f"sd_vae:{vae}:{subfolder or ''}:{config or ''}"


def stored_teacher(spec: str | None) -> tuple[TeacherProvider | None, str]:
    """A real-stack REPA teacher (e.g. "dinov2_vitb14:/path/weights.pth") stored with the data,
    so that `prepare --teacher-features` can run it and training can say loss.repa.teacher=data."""
    if not spec or spec == "none":
        return None, ""
    return (lambda: (load_teacher(spec), {"source": spec})), spec


def prepare_image_folder(source: str | Path, out: str | Path, *, resolution: int = 256, tokenizer: str = "sd_vae",
                         vae: str = DEFAULT_VAE, vae_subfolder: str | None = None, vae_config: str | None = None,
                         class_names_file: str | Path | None = None, teacher: str | None = None,
                         options: PrepareOptions | None = None) -> Path:
    """An ImageFolder / dataset.json folder or zip -> centre-cropped images -> SD-VAE moments
    (plus a stored REPA teacher, and its features with `options.teacher_features`)."""
    if tokenizer not in IMAGE_TOKENIZERS:
        raise ValueError(f"unknown tokenizer {tokenizer!r} for images; choose from {IMAGE_TOKENIZERS}")
    check_resolution(resolution)
    names = read_class_names(class_names_file) if class_names_file else None
    images = ImageSource(source, resolution, names)
    tokenizer_parts = ((lambda: (IdentityTokenizer(image_channels=3), {})), "identity") if tokenizer == "identity" \
        else sd_vae_tokenizer(vae, vae_subfolder, vae_config)
    return prepare(images, out, *tokenizer_parts, options, *stored_teacher(teacher))


def import_repa_layout(source: str | Path, out: str | Path, *, vae: str = DEFAULT_VAE, vae_subfolder: str | None = None,
                       vae_config: str | None = None, class_names_file: str | Path | None = None,
                       teacher: str | None = None, options: PrepareOptions | None = None) -> Path:
    """`images/` + `vae-sd/` (the authors' and REPA's layout) -> our shards, moments copied as
    they are. `vae` names the SD-VAE that made them; it is stored to decode samples."""
    options = options or PrepareOptions()
    names = read_class_names(class_names_file) if class_names_file else None
    data = RepaLayoutSource(source, names, with_images=options.store_images)
    return prepare(data, out, *sd_vae_tokenizer(vae, vae_subfolder, vae_config), options, *stored_teacher(teacher))
