"""Scoring generated images against a real reference set, with either evaluation network.

- `InceptionMetric` (the real stack): FID, Inception Score, precision/recall and KID from the
  standard FID Inception-v3, against an ADM-style reference batch (`mu`, `sigma`, `arr_0`) or
  against statistics computed once from a prepared data set and cached beside it.
- `DomainMetric` (the embedded stack): the same statistics in the feature space of a classifier
  that gatgan trains on the training split (never the REPA teacher, never used to train the GAN),
  plus the class consistency of conditional samples, each shown next to its real-vs-real floor
  (held-out real images scored exactly like samples).

Both share one protocol: features of the samples -> Fréchet distance to the reference statistics,
k-NN precision/recall and KID against a fixed reference subset of the same size.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.fashion_mnist import load_fashion_mnist
from ..data.latents import LatentDataset
from .classifier import DomainClassifier, load_domain_classifier, train_domain_classifier
from .inception import INCEPTION_ID, InceptionFeatures
from .metrics import FeatureStatistics, frechet_distance, inception_score, kernel_inception_distance, precision_recall

METRIC_KINDS = ("auto", "domain", "inception")
EVAL_DIR = "eval"  # inside a prepared data directory: cached classifier and reference statistics
DOMAIN_DIR = "domain"
SUBSET = 10_000  # reference images for precision/recall and KID (the ADM reference batch size)
HOLDOUT_FRACTION = 0.1  # held-out real images when the data has no test split of its own
FASHION_MNIST = "fashion-mnist:"


@dataclass
class ReferenceSet:
    """Statistics of the real features, and a fixed subset of them for precision/recall and KID."""

    statistics: FeatureStatistics
    features: np.ndarray | None

    def save(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.tmp.npz")
        extra = {} if self.features is None else {"features": self.features.astype(np.float32)}
        np.savez(temporary, mu=self.statistics.mu, sigma=self.statistics.sigma,
                 count=self.statistics.count, **extra)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> "ReferenceSet":
        with np.load(path) as data:
            features = data["features"].astype(np.float64) if "features" in data else None
        return cls(FeatureStatistics.load(path), features)

    @classmethod
    def from_features(cls, features: np.ndarray, seed: int = 0) -> "ReferenceSet":
        return cls(FeatureStatistics.from_features(features), _subset(features, SUBSET, seed))


def _subset(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(features) <= count:
        return features
    return features[np.sort(np.random.default_rng(seed).choice(len(features), count, replace=False))]


def _nearest_statistics(reference: ReferenceSet, features: np.ndarray) -> dict[str, float]:
    """FD to the reference statistics; precision/recall and KID against an equal-size subset."""
    scores = {"fd": frechet_distance(FeatureStatistics.from_features(features), reference.statistics)}
    if reference.features is not None:
        count = min(len(features), len(reference.features))
        real, fake = reference.features[:count], features[:count]
        scores["precision"], scores["recall"] = precision_recall(real, fake)
        scores["kid"], scores["kid_std"] = kernel_inception_distance(real, fake)
    return scores


def embed_in_batches(network: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], images: np.ndarray,
                     batch_size: int, device: torch.device | str, progress: bool = False,
                     desc: str = "features") -> tuple[np.ndarray, ...]:
    """uint8 NCHW images through `network` in batches; every output concatenated as float64."""
    outputs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress):
            batch = torch.as_tensor(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            for i, out in enumerate(network(batch)):
                if len(outputs) <= i:
                    outputs.append([])
                outputs[i].append(out.double().cpu().numpy())
    return tuple(np.concatenate(parts) for parts in outputs)


def nhwc_to_nchw(images: np.ndarray) -> np.ndarray:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    return images.transpose(0, 3, 1, 2)


# ------------------------------------------------------------------------------------ the real stack
class InceptionMetric:
    name, primary = "inception", "fid"

    def __init__(self, network: InceptionFeatures, reference: ReferenceSet, batch_size: int = 200):
        self.network, self.reference, self.batch_size = network, reference, batch_size
        self.floor: dict[str, float] = {}

    def score(self, images: np.ndarray, labels: np.ndarray | None = None, progress: bool = False) -> dict[str, float]:
        """uint8 NHWC images; labels are not used by the Inception metrics."""
        pool, logits = self.network.extract(images, batch_size=self.batch_size, progress=progress)
        scores = _nearest_statistics(self.reference, pool)
        scores["fid"] = scores.pop("fd")
        scores["is"], scores["is_std"] = inception_score(logits, splits=min(10, len(logits)))
        return scores


def inception_reference(source: str | Path, network: InceptionFeatures, count: int = 50_000, seed: int = 0,
                        progress: bool = True) -> ReferenceSet:
    """An ADM reference batch (.npz with mu, sigma and optionally arr_0 images), or a prepared data
    directory whose stored images are embedded once (a seeded subset of `count`, 0 = all) and
    cached in <data>/eval/."""
    source = Path(source)
    if source.suffix == ".npz":
        statistics = FeatureStatistics.load(source)
        with np.load(source) as data:
            images = data["arr_0"] if "arr_0" in data else None
        features = None if images is None else _subset(
            network.extract(images, progress=progress)[0], SUBSET, seed)
        return ReferenceSet(statistics, features)
    data = LatentDataset(source)
    if not data.has_images:
        raise ValueError(f"{source} was prepared with --no-images, so it has no images to compute Inception "
                         "statistics from; pass an ADM reference batch (.npz with mu, sigma) instead")
    cache = source / EVAL_DIR / f"{INCEPTION_ID}-{count or 'all'}-seed{seed}.npz"
    if cache.is_file():
        return ReferenceSet.load(cache)
    indices = np.arange(len(data)) if not count or count >= len(data) else \
        np.sort(np.random.default_rng(seed).choice(len(data), count, replace=False))
    features = np.concatenate([
        network.extract(data.images(chunk).permute(0, 2, 3, 1).numpy())[0]
        for chunk in tqdm(np.array_split(indices, max(1, len(indices) // 5000)), desc="reference",
                          unit="chunk", disable=not progress)])
    reference = ReferenceSet.from_features(features, seed)
    cache.parent.mkdir(exist_ok=True)
    reference.save(cache)
    return reference


# ------------------------------------------------------------------------------- the embedded stack
class DomainMetric:
    name, primary = "domain", "fd"

    def __init__(self, classifier: DomainClassifier, reference: ReferenceSet, floor: dict[str, float],
                 device: torch.device | str = "cpu", batch_size: int = 500):
        self.classifier, self.reference, self.floor = classifier.to(device).eval(), reference, floor
        self.device, self.batch_size = device, batch_size

    def embed(self, images_nchw: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return classify(self.classifier, images_nchw, self.device, self.batch_size, progress)

    def score_nchw(self, images: np.ndarray, labels: np.ndarray | None, progress: bool = False) -> dict[str, float]:
        features, predicted = self.embed(images, progress)
        scores = _nearest_statistics(self.reference, features)
        if labels is not None:
            scores["consistency"] = float(np.mean(predicted == np.asarray(labels)))
        return scores

    def score(self, images: np.ndarray, labels: np.ndarray | None = None, progress: bool = False) -> dict[str, float]:
        """uint8 NHWC images; with labels, also the fraction the classifier assigns to their class."""
        return self.score_nchw(nhwc_to_nchw(images), labels, progress)


def classify(classifier: DomainClassifier, images_nchw: np.ndarray, device: torch.device | str,
             batch_size: int = 500, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, predicted class) of uint8 NCHW images."""
    features, logits = embed_in_batches(classifier.features_and_logits, images_nchw, batch_size, device, progress,
                                        desc="classifier")
    return features, logits.argmax(1)


def held_out_split(data: LatentDataset, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), uint8 NCHW. Fashion-MNIST data use
    the official test split; other data hold out a seeded 10% of their images."""
    if not data.has_images:
        raise ValueError(f"{data.path} was prepared with --no-images; the domain metric needs the images")
    everything = np.arange(len(data))
    images, labels = data.images(everything).numpy(), data.labels(everything).numpy()
    source = data.index["source"]
    if source.startswith(FASHION_MNIST):
        test_images, test_labels = load_fashion_mnist("test", source[len(FASHION_MNIST):])
        return images, labels, test_images, test_labels
    test = np.random.default_rng(seed).random(len(data)) < HOLDOUT_FRACTION
    return images[~test], labels[~test], images[test], labels[test]


def domain_metric(data_path: str | Path, device: torch.device | str = "cpu", progress: bool = True,
                  seed: int = 0, classifier_steps: int | None = None) -> DomainMetric:
    """The embedded metric of a prepared data set. The first call trains the classifier on the
    training split and embeds the reference and held-out images; the result is cached in
    <data>/eval/domain/ (delete it to retrain)."""
    data = LatentDataset(data_path)
    directory = data.path / EVAL_DIR / DOMAIN_DIR
    if not (directory / "floor.json").is_file():
        train_images, train_labels, test_images, test_labels = held_out_split(data, seed)
        print(f"training the evaluation classifier on {len(train_images)} real images (once; cached in {directory})")
        steps = {} if classifier_steps is None else {"steps": classifier_steps}
        classifier, report = train_domain_classifier(train_images, train_labels, seed=seed, progress=progress,
                                                     num_classes=data.num_classes, **steps)
        classifier = classifier.to(device)
        reference = ReferenceSet.from_features(classify(classifier, train_images, device, progress=progress)[0], seed)
        metric = DomainMetric(classifier, reference, {}, device)
        metric.floor = metric.score_nchw(test_images, test_labels, progress)
        metric.floor["count"] = len(test_images)
        staging = directory.with_name(f".{DOMAIN_DIR}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        classifier.save(staging / "classifier")
        metric.reference.save(staging / "reference.npz")
        (staging / "floor.json").write_text(json.dumps({"floor": metric.floor, "training": report}, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
        return metric
    floor = json.loads((directory / "floor.json").read_text())["floor"]
    return DomainMetric(load_domain_classifier(directory / "classifier"), ReferenceSet.load(directory / "reference.npz"),
                        floor, device)


def resolve_metric_kind(kind: str, data_path: str | Path) -> str:
    """`auto`: the domain metric for the embedded Fashion-MNIST data, Inception otherwise."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"unknown metric {kind!r}; choose from {METRIC_KINDS}")
    if kind != "auto":
        return kind
    index = Path(data_path) / "index.json"  # absent for an ADM reference batch
    if not index.is_file():
        return "inception"
    return "domain" if json.loads(index.read_text())["source"].startswith(FASHION_MNIST) else "inception"


def build_metric(kind: str, data_path: str | Path, *, inception: str | Path | None = None,
                 reference: str | Path | None = None, device: torch.device | str = "cpu",
                 progress: bool = True) -> DomainMetric | InceptionMetric:
    """The metric for a run's data: `reference` (Inception only) is an ADM .npz or a prepared data
    directory, by default the run's own data."""
    kind = resolve_metric_kind(kind, data_path)
    if kind == "domain":
        return domain_metric(data_path, device, progress)
    network = InceptionFeatures.load(inception, device)
    return InceptionMetric(network, inception_reference(reference or data_path, network, progress=progress))


def format_scores(scores: dict[str, float], floor: dict[str, float] | None = None) -> str:
    """One line per score, with the real-vs-real floor beside it when there is one."""
    floor = floor or {}
    lines = []
    for key, value in scores.items():
        line = f"{key:<12}{value:>12.4f}"
        if key in floor:
            line += f"   (real-vs-real floor {floor[key]:.4f})"
        lines.append(line)
    return "\n".join(lines)
