"""Scoring generated images against a real reference set, with either evaluation network.

- `InceptionMetric` (the real stack): FID, Inception Score, precision/recall, density/coverage and KID from the
  standard FID Inception-v3, against an ADM-style reference batch (`mu`, `sigma`, `arr_0`) or
  against statistics computed once from a prepared data set and cached beside it.
- `DomainMetric` (the embedded stack): the same statistics in the feature space of a classifier
  that gatgan trains on the training split (never the REPA teacher, never used to train the GAN),
  plus the class consistency of conditional samples and per-class scores (recall, precision,
  coverage and intra-class spread against the real images of the same class), each shown next to its
  real-vs-real floor (held-out real images scored exactly like samples) and, for a run, its
  tokenizer ceiling (the held-out images through the run's tokenizer and back, scored the same way).

Both share one protocol: features of the samples -> Fréchet distance to the reference statistics,
k-NN precision/recall, density/coverage and KID against a fixed reference subset of the same size.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.spatial.distance
import torch
from tqdm import tqdm

from ..data.fashion_mnist import load_fashion_mnist
from ..data.latents import LatentDataset
from ..images import to_uint8
from ..tokenizers.base import Tokenizer, to_signed_unit
from .classifier import DomainClassifier, load_domain_classifier, train_domain_classifier
from .inception import INCEPTION_ID, InceptionFeatures
from .metrics import (FeatureStatistics, density_coverage, frechet_distance, inception_score,
                      kernel_inception_distance, precision_recall)

METRIC_KINDS = ("auto", "domain", "inception")
EVAL_DIR = "eval"  # inside a prepared data directory: cached classifier and reference statistics
DOMAIN_DIR = "domain"
SUBSET = 10_000  # reference images for precision/recall and KID (the ADM reference batch size)
HOLDOUT_FRACTION = 0.1  # held-out real images when the data has no test split of its own
FASHION_MNIST = "fashion-mnist:"
NEIGHBOURS = 3  # k of the k-NN precision/recall, as in the ADM evaluator
COVERAGE_NEIGHBOURS = 5  # k of density/coverage, as in their paper
SPREAD_SUBSET = 500  # features per class for the mean pairwise distance (quadratic in this)
CLASSIFIER_DIR, REFERENCE_FILE, FLOOR_FILE = "classifier", "reference.npz", "floor.json"

PerClass = dict[int, dict[str, float]]


@dataclass
class ReferenceSet:
    """Statistics of the real features, and a fixed subset of them for precision/recall and KID,
    with the class of each subset feature when known (for the per-class scores)."""

    statistics: FeatureStatistics
    features: np.ndarray | None
    labels: np.ndarray | None = None

    def save(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.tmp.npz")
        extra = {} if self.features is None else {"features": self.features.astype(np.float32)}
        if self.labels is not None:
            extra["labels"] = self.labels.astype(np.int64)
        np.savez(temporary, mu=self.statistics.mu, sigma=self.statistics.sigma,
                 count=self.statistics.count, **extra)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> "ReferenceSet":
        with np.load(path) as data:
            features = data["features"].astype(np.float64) if "features" in data else None
            labels = data["labels"] if "labels" in data else None
        return cls(FeatureStatistics.load(path), features, labels)

    @classmethod
    def from_features(cls, features: np.ndarray, seed: int = 0, labels: np.ndarray | None = None) -> "ReferenceSet":
        chosen = _subset_indices(len(features), SUBSET, seed)
        return cls(FeatureStatistics.from_features(features), features[chosen],
                   None if labels is None else np.asarray(labels)[chosen])


def _subset_indices(total: int, count: int, seed: int) -> np.ndarray:
    """A seeded, sorted choice of `count` of `total` indices (all of them when there are not more)."""
    if total <= count:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, count, replace=False))


def _subset(features: np.ndarray, count: int, seed: int) -> np.ndarray:
    return features[_subset_indices(len(features), count, seed)]


def _nearest_statistics(reference: ReferenceSet, features: np.ndarray) -> dict[str, float]:
    """FD to the reference statistics; precision/recall, density/coverage and KID against an
    equal-size subset."""
    scores = {"fd": frechet_distance(FeatureStatistics.from_features(features), reference.statistics)}
    if reference.features is not None:
        count = min(len(features), len(reference.features))
        real, fake = reference.features[:count], features[:count]
        scores["precision"], scores["recall"] = precision_recall(real, fake, k=NEIGHBOURS)
        scores["density"], scores["coverage"] = density_coverage(real, fake, k=COVERAGE_NEIGHBOURS)
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
    indices = _subset_indices(len(data), count or len(data), seed)
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
                 floor_per_class: PerClass, class_names: list[str], device: torch.device | str = "cpu",
                 batch_size: int = 500):
        self.classifier, self.reference, self.floor = classifier.to(device).eval(), reference, floor
        self.floor_per_class, self.class_names = floor_per_class, class_names
        self.device, self.batch_size = device, batch_size

    def embed(self, images_nchw: np.ndarray, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return classify(self.classifier, images_nchw, self.device, self.batch_size, progress)

    def evaluate_nchw(self, images: np.ndarray, labels: np.ndarray | None,
                      progress: bool = False) -> tuple[dict[str, float], PerClass]:
        """Scores of uint8 NCHW images and, with labels, their per-class scores (whose means join the
        scores), all from one pass of the classifier."""
        features, predicted = self.embed(images, progress)
        scores = _nearest_statistics(self.reference, features)
        if labels is None:
            return scores, {}
        labels = np.asarray(labels)
        scores["consistency"] = float(np.mean(predicted == labels))
        per_class = per_class_scores(self.reference, features, labels, predicted)
        return scores | per_class_means(per_class), per_class

    def score(self, images: np.ndarray, labels: np.ndarray | None = None, progress: bool = False) -> dict[str, float]:
        """uint8 NHWC images; with labels, also the fraction the classifier assigns to their class and
        the per-class means."""
        return self.evaluate_nchw(nhwc_to_nchw(images), labels, progress)[0]


def classify(classifier: DomainClassifier, images_nchw: np.ndarray, device: torch.device | str,
             batch_size: int = 500, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, predicted class) of uint8 NCHW images."""
    features, logits = embed_in_batches(classifier.features_and_logits, images_nchw, batch_size, device, progress,
                                        desc="classifier")
    return features, logits.argmax(1)


def per_class_scores(reference: ReferenceSet, features: np.ndarray, labels: np.ndarray,
                     predicted: np.ndarray) -> PerClass:
    """For each class c of `labels`: precision, recall and coverage of the features of class c against
    the reference features of class c (equal counts), their spread (mean pairwise distance over the real
    class's: 1 = as diverse as the real class, 0 = collapsed to one point), and the fraction the
    classifier assigns to c. A class that is dropped or collapsed barely moves the pooled scores but
    shows here. Classes with too few features for the k-NN balls on either side are left out."""
    if reference.features is None or reference.labels is None:
        raise ValueError("per-class scores need the reference features and their labels")
    scores: PerClass = {}
    for c in np.unique(labels):
        mine = labels == c
        real, fake = reference.features[reference.labels == c], features[mine]
        count = min(len(real), len(fake))
        if count <= max(NEIGHBOURS, COVERAGE_NEIGHBOURS):
            continue
        precision, recall = precision_recall(real[:count], fake[:count], k=NEIGHBOURS)
        coverage = density_coverage(real[:count], fake[:count], k=COVERAGE_NEIGHBOURS)[1]
        scores[int(c)] = {"precision": precision, "recall": recall, "coverage": coverage,
                          "spread": _mean_distance(fake) / _mean_distance(real),
                          "consistency": float(np.mean(predicted[mine] == c)), "count": int(mine.sum())}
    return scores


def _mean_distance(features: np.ndarray, seed: int = 0) -> float:
    """Mean pairwise Euclidean distance within a seeded subset of at most SPREAD_SUBSET features."""
    return float(scipy.spatial.distance.pdist(_subset(features, SPREAD_SUBSET, seed)).mean())


def per_class_means(per_class: PerClass) -> dict[str, float]:
    """The per-class recall and spread averaged over classes (empty without per-class scores)."""
    if not per_class:
        return {}
    return {"recall_per_class_mean": float(np.mean([s["recall"] for s in per_class.values()])),
            "spread_mean": float(np.mean([s["spread"] for s in per_class.values()]))}


def round_trip(tokenizer: Tokenizer, images_nchw: np.ndarray, device: torch.device | str, batch_size: int = 500,
               progress: bool = False) -> np.ndarray:
    """uint8 NCHW images encoded to their posterior mean (no sampling noise) and decoded, as uint8
    NCHW. Both maps work in raw latent units, so no latent scaling is involved."""
    tokenizer = tokenizer.to(device).eval()
    decoded = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images_nchw), batch_size), desc="tokenizer", unit="batch",
                          disable=not progress):
            mean, _ = tokenizer.encode_moments(to_signed_unit(images_nchw[start:start + batch_size]).to(device))
            decoded.append(nhwc_to_nchw(to_uint8(tokenizer.decode(mean))))
    return np.concatenate(decoded)


def tokenizer_ceiling(metric: DomainMetric, data_path: str | Path, tokenizer: Tokenizer, batch_size: int = 500,
                      seed: int = 0, progress: bool = False,
                      count: int | None = None) -> tuple[dict[str, float], PerClass]:
    """The held-out real images (the first `count` of them) through the tokenizer and back, scored
    (and per class) exactly like samples: the best any generator in this latent space can score,
    which splits the gap between samples and the real-vs-real floor into what the tokenizer loses
    and what the generator does."""
    _, _, images, labels = held_out_split(LatentDataset(data_path), seed)
    images, labels = images[:count], labels[:count]
    return metric.evaluate_nchw(round_trip(tokenizer, images, metric.device, batch_size, progress), labels, progress)


def matched_floor(metric: DomainMetric, data_path: str | Path, count: int, seed: int = 0,
                  progress: bool = False) -> tuple[dict[str, float], PerClass]:
    """The real-vs-real floor on the first `count` held-out images. Recall and coverage fall as the
    sets shrink (on 500 samples the same generator scores several times the recall it scores on
    10,000), so a sample score is read against a floor of its own count; the cached floor when
    `count` covers the held-out images."""
    _, _, images, labels = held_out_split(LatentDataset(data_path), seed)
    if count >= len(images):
        return metric.floor, metric.floor_per_class
    return metric.evaluate_nchw(images[:count], labels[:count], progress)


def separate_test_split(data: LatentDataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(images uint8 NCHW, labels) of a test split kept apart from the prepared data (Fashion-MNIST's
    official one), or None when the data has none."""
    source = data.index["source"]
    if not source.startswith(FASHION_MNIST):
        return None
    return load_fashion_mnist("test", source[len(FASHION_MNIST):])


def held_out_split(data: LatentDataset, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), uint8 NCHW. Fashion-MNIST data use
    the official test split; other data hold out a seeded 10% of their images."""
    if not data.has_images:
        raise ValueError(f"{data.path} was prepared with --no-images; the domain metric needs the images")
    everything = np.arange(len(data))
    images, labels = data.images(everything).numpy(), data.labels(everything).numpy()
    separate = separate_test_split(data)
    if separate is not None:
        return images, labels, *separate
    test = np.random.default_rng(seed).random(len(data)) < HOLDOUT_FRACTION
    return images[~test], labels[~test], images[test], labels[test]


def domain_metric(data_path: str | Path, device: torch.device | str = "cpu", progress: bool = True,
                  seed: int = 0, classifier_steps: int | None = None) -> DomainMetric:
    """The embedded metric of a prepared data set. The first call trains the classifier on the
    training split and embeds the reference and held-out images; the result is cached in
    <data>/eval/domain/ (delete it to retrain). A cache from before the per-class scores (its
    reference has no labels) or before density/coverage gets its labelled reference and its floor
    again from its own classifier, so that earlier scores stay comparable."""
    data = LatentDataset(data_path)
    directory = data.path / EVAL_DIR / DOMAIN_DIR
    if (directory / FLOOR_FILE).is_file():
        classifier = load_domain_classifier(directory / CLASSIFIER_DIR)
        reference = ReferenceSet.load(directory / REFERENCE_FILE)
        record = json.loads((directory / FLOOR_FILE).read_text())
        if reference.labels is None or "coverage" not in record["floor"]:
            print(f"adding class labels and coverage to the cached reference and floor in {directory} (once)")
            return _reference_and_floor(directory, data.class_names, classifier, held_out_split(data, seed), seed,
                                        device, progress)
        floor_per_class = {int(c): scores for c, scores in record["per_class"].items()}
        return DomainMetric(classifier, reference, record["floor"], floor_per_class, data.class_names, device)
    split = held_out_split(data, seed)
    print(f"training the evaluation classifier on {len(split[0])} real images (once; cached in {directory})")
    steps = {} if classifier_steps is None else {"steps": classifier_steps}
    classifier, _ = train_domain_classifier(split[0], split[1], seed=seed, progress=progress,
                                            num_classes=data.num_classes, **steps)
    staging = directory.with_name(f".{DOMAIN_DIR}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    classifier.save(staging / CLASSIFIER_DIR)
    metric = _reference_and_floor(staging, data.class_names, classifier, split, seed, device, progress)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return metric


def _reference_and_floor(directory: Path, class_names: list[str], classifier: DomainClassifier,
                         split: tuple[np.ndarray, ...], seed: int, device: torch.device | str,
                         progress: bool) -> DomainMetric:
    """Embeds the training images (the labelled reference) and scores the held-out ones (the floor,
    pooled and per class), and writes both beside the classifier: the floor first, so that a
    reference with labels marks a complete cache."""
    train_images, train_labels, test_images, test_labels = split
    features = classify(classifier.to(device), train_images, device, progress=progress)[0]
    metric = DomainMetric(classifier, ReferenceSet.from_features(features, seed, train_labels), {}, {}, class_names,
                          device)
    floor, metric.floor_per_class = metric.evaluate_nchw(test_images, test_labels, progress)
    metric.floor = floor | {"count": len(test_images)}
    record = {"floor": metric.floor, "per_class": metric.floor_per_class, "training": classifier.report}
    temporary = directory / f".{FLOOR_FILE}.tmp"
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, directory / FLOOR_FILE)
    metric.reference.save(directory / REFERENCE_FILE)
    return metric


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


def _cell(values: dict[str, float], key: str, width: int, digits: int) -> str:
    return f"{values[key]:>{width}.{digits}f}" if key in values else f"{'-':>{width}}"


def format_scores(scores: dict[str, float], floor: dict[str, float] | None = None,
                  ceiling: dict[str, float] | None = None) -> str:
    """One line per score, with columns for the real-vs-real floor and the tokenizer ceiling when
    there are: a sample score reads against the best that real images and the latent space reach."""
    columns = {title: values for title, values in (("real-vs-real floor", floor), ("tokenizer ceiling", ceiling))
               if values}
    width = max(map(len, scores), default=0) + 2
    lines = [f"{'':<{width}}{'samples':>12}" + "".join(f"{title:>21}" for title in columns)] if columns else []
    for key, value in scores.items():
        cells = "".join(_cell(values, key, 21, 4) for values in columns.values())
        lines.append(f"{key:<{width}}{value:>12.4f}{cells}")
    return "\n".join(lines)


def format_per_class(per_class: PerClass, floor: PerClass, class_names: list[str]) -> str:
    """A compact table of each class's recall, coverage and spread beside the floor's, and its consistency."""
    columns = (("recall", per_class, "recall"), ("floor recall", floor, "recall"), ("coverage", per_class, "coverage"),
               ("floor coverage", floor, "coverage"), ("spread", per_class, "spread"),
               ("floor spread", floor, "spread"), ("consistency", per_class, "consistency"))
    width = max(map(len, ["class", *class_names])) + 2
    cell = max(len(title) for title, _, _ in columns) + 2
    lines = [f"{'class':<{width}}" + "".join(f"{title:>{cell}}" for title, _, _ in columns)]
    for c in per_class:
        lines.append(f"{class_names[c]:<{width}}" + "".join(_cell(values.get(c, {}), key, cell, 3)
                                                            for _, values, key in columns))
    return "\n".join(lines)


def per_class_report(class_names: list[str], **sets: PerClass) -> dict[str, dict[str, dict[str, float]]]:
    """{class name: {set name: its scores of that class}} for the JSON report, e.g. sets = samples,
    floor and ceiling."""
    return {name: {key: scores[c] for key, scores in sets.items() if c in scores}
            for c, name in enumerate(class_names) if any(c in scores for scores in sets.values())}
