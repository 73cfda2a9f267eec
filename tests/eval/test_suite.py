"""Scoring against a reference set (gatgan.eval.suite): reference caching, ADM reference batches,
metric selection, the Inception metric end to end on random weights in the real layout, and the
domain metric's diagnostics (tokenizer ceiling, per-class scores, upgrade of an unlabelled cache)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gatgan.data.inputs import prepare_arrays
from gatgan.data.prepare import PrepareOptions
from gatgan.eval import suite
from gatgan.eval.inception import InceptionFeatures
from gatgan.eval.metrics import FeatureStatistics, frechet_distance
from gatgan.eval.suite import (SUBSET, InceptionMetric, ReferenceSet, domain_metric, format_per_class, format_scores,
                               held_out_split, inception_reference, matched_floor, per_class_means,
                               per_class_scores,
                               resolve_metric_kind, round_trip, tokenizer_ceiling)
from gatgan.data.latents import LatentDataset
from gatgan.tokenizers.identity import IdentityTokenizer
from inception_assets import write_random_inception
from tinyrun import TINY_CLASSES, make_tiny_images

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> InceptionFeatures:
    return InceptionFeatures.load(write_random_inception(tmp_path_factory.mktemp("inception")), "cpu")


def _data(root, source: str = "synthetic", count: int = 40):
    images, labels = make_tiny_images(count, size=16)
    return prepare_arrays(root / "data", images, labels, TINY_CLASSES, IdentityTokenizer(1), source,
                          PrepareOptions(progress=False))


@pytest.fixture(scope="module")
def domain_data(tmp_path_factory):
    """300 images (about 10 held out per class, enough for per-class k-NN) with the domain metric cached."""
    path = _data(tmp_path_factory.mktemp("domain"), count=300)
    domain_metric(path, progress=False, classifier_steps=20)
    return path


class NoisyPosterior(IdentityTokenizer):
    """The identity with a wide posterior: only its mean gives the image back."""

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images, torch.ones_like(images)


def _clusters(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian classes in 8 dimensions."""
    labels = np.repeat(np.arange(3), per_class)
    return np.random.default_rng(seed).normal(size=(len(labels), 8)) + 10.0 * labels[:, None], labels


def test_reference_set_round_trips_and_keeps_a_fixed_subset(tmp_path):
    features = np.random.default_rng(0).normal(size=(SUBSET + 50, 3))
    labels = np.arange(SUBSET + 50) % 7
    reference = ReferenceSet.from_features(features, seed=1, labels=labels)
    assert len(reference.features) == SUBSET
    np.testing.assert_array_equal(reference.features, ReferenceSet.from_features(features, seed=1).features)
    assert reference.statistics.count == SUBSET + 50
    reference.save(tmp_path / "ref.npz")
    loaded = ReferenceSet.load(tmp_path / "ref.npz")
    np.testing.assert_allclose(loaded.statistics.sigma, reference.statistics.sigma)
    np.testing.assert_allclose(loaded.features, reference.features, rtol=1e-6)  # stored as float32
    rows = [np.flatnonzero((features == row).all(axis=1))[0] for row in reference.features[:50]]
    np.testing.assert_array_equal(loaded.labels[:50], labels[rows])  # each label stays with its feature
    ReferenceSet(reference.statistics, reference.features).save(tmp_path / "unlabelled.npz")
    assert ReferenceSet.load(tmp_path / "unlabelled.npz").labels is None


def test_inception_reference_from_data_is_cached_and_scores_its_own_images_perfectly(tmp_path, inception,
                                                                                     monkeypatch):
    data = _data(tmp_path)
    reference = inception_reference(data, inception, count=12, progress=False)
    assert reference.statistics.count == 12 and (data / "eval").is_dir()
    images = LatentDataset(data).images(np.arange(40)).permute(0, 2, 3, 1).numpy()
    chosen = np.sort(np.random.default_rng(0).choice(40, 12, replace=False))
    scores = InceptionMetric(inception, reference).score(images[chosen])
    assert abs(scores["fid"]) < 1e-3 and scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert scores["coverage"] == 1.0  # every real ball holds its own image
    assert set(scores) == {"fid", "precision", "recall", "density", "coverage", "kid", "kid_std", "is", "is_std"}

    monkeypatch.setattr(inception, "extract", lambda *a, **k: pytest.fail("the cached reference was recomputed"))
    cached = inception_reference(data, inception, count=12, progress=False)
    np.testing.assert_allclose(cached.statistics.mu, reference.statistics.mu)


def test_an_adm_reference_batch_supplies_mu_and_sigma(tmp_path, inception):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=2048), np.eye(2048) * 0.5
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=images, mu=mu, sigma=sigma)
    reference = inception_reference(tmp_path / "VIRTUAL_ref.npz", inception, progress=False)
    np.testing.assert_array_equal(reference.statistics.mu, mu)
    assert reference.features.shape == (6, 2048)  # the images are embedded for precision/recall
    samples = np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    scores = InceptionMetric(inception, reference).score(samples)
    expected = frechet_distance(FeatureStatistics.from_features(inception.extract(samples, progress=False)[0]),
                                FeatureStatistics(mu, sigma, -1))
    assert scores["fid"] == pytest.approx(expected)


def test_a_data_set_without_images_cannot_give_inception_statistics(tmp_path, inception):
    images, labels = make_tiny_images(8, size=16)
    data = prepare_arrays(tmp_path / "d", images, labels, TINY_CLASSES, IdentityTokenizer(1), "synthetic",
                          PrepareOptions(progress=False, store_images=False))
    with pytest.raises(ValueError, match="no-images"):
        inception_reference(data, inception, progress=False)


def test_auto_picks_the_domain_metric_only_for_the_embedded_data(tmp_path):
    synthetic = _data(tmp_path / "a")
    fmnist = _data(tmp_path / "b", source="fashion-mnist:/usr/share/datasets/fashion-mnist")
    assert resolve_metric_kind("auto", synthetic) == "inception"
    assert resolve_metric_kind("auto", fmnist) == "domain"
    assert resolve_metric_kind("auto", tmp_path / "VIRTUAL_imagenet256_labeled.npz") == "inception"
    assert resolve_metric_kind("domain", synthetic) == "domain"
    with pytest.raises(ValueError, match="unknown metric"):
        resolve_metric_kind("clip", synthetic)


def test_held_out_split_is_a_seeded_disjoint_tenth(tmp_path):
    data = LatentDataset(_data(tmp_path, count=300))
    train_images, train_labels, test_images, test_labels = held_out_split(data)
    assert len(train_images) + len(test_images) == 300 and 15 < len(test_images) < 50
    assert train_images.shape[1:] == (1, 16, 16) and len(train_labels) == len(train_images)
    again = held_out_split(data)
    np.testing.assert_array_equal(again[2], test_images)
    np.testing.assert_array_equal(again[3], test_labels)


def test_scores_are_printed_beside_their_floor_and_ceiling():
    header, fd, consistency = format_scores({"fd": 12.5, "consistency": 0.9}, {"fd": 0.4},
                                            {"fd": 3.25, "consistency": 0.8}).splitlines()
    assert "real-vs-real floor" in header and "tokenizer ceiling" in header
    assert fd.split() == ["fd", "12.5000", "0.4000", "3.2500"]
    assert consistency.split() == ["consistency", "0.9000", "-", "0.8000"]
    assert format_scores({"fd": 12.5}).split() == ["fd", "12.5000"]  # no floor, no columns
    table = format_per_class({1: {"recall": 0.5, "coverage": 0.6, "spread": 0.25, "consistency": 1.0}},
                             {1: {"recall": 0.75, "coverage": 0.9}}, TINY_CLASSES)
    assert table.splitlines()[1].split() == ["grey", "0.500", "0.750", "0.600", "0.900", "0.250", "-", "1.000"]


def test_per_class_spread_is_one_against_itself_and_zero_for_a_collapsed_class():
    features, labels = _clusters(600, seed=0)  # more than SPREAD_SUBSET per class
    reference = ReferenceSet.from_features(features, labels=labels)
    itself = per_class_scores(reference, features, labels, labels)
    assert sorted(itself) == [0, 1, 2]
    assert all(s["spread"] == 1.0 and s["recall"] == 1.0 and s["precision"] == 1.0 for s in itself.values())
    collapsed = features.copy()
    collapsed[labels == 1] = collapsed[labels == 1].mean(axis=0)
    scores = per_class_scores(reference, collapsed, labels, labels)
    assert scores[1]["spread"] == 0.0 and scores[0]["spread"] == scores[2]["spread"] == 1.0
    assert per_class_means(scores)["spread_mean"] == pytest.approx(2 / 3)


def test_per_class_recall_of_collapsed_samples_is_below_that_of_held_out_real_ones():
    real, labels = _clusters(400, seed=0)
    reference = ReferenceSet.from_features(real, labels=labels)
    held_out = per_class_scores(reference, _clusters(400, seed=1)[0], labels, labels)
    centres = np.stack([real[labels == c].mean(axis=0) for c in range(3)])
    collapsed = per_class_scores(reference, centres[labels], labels, labels)
    for c in range(3):
        assert held_out[c]["recall"] > 0.6 and held_out[c]["spread"] == pytest.approx(1.0, abs=0.1)
        assert collapsed[c]["recall"] < held_out[c]["recall"] and collapsed[c]["spread"] == 0.0
    wrong_class = per_class_scores(reference, _clusters(400, seed=1)[0], np.roll(labels, 400), labels)
    assert all(s["recall"] == 0.0 and s["consistency"] == 0.0 for s in wrong_class.values())


def test_the_ceiling_of_an_exact_round_trip_is_the_floor(domain_data):
    metric = domain_metric(domain_data, progress=False)
    images = held_out_split(LatentDataset(domain_data))[2]
    np.testing.assert_array_equal(round_trip(NoisyPosterior(1), images, "cpu", batch_size=7), images)
    ceiling, per_class = tokenizer_ceiling(metric, domain_data, NoisyPosterior(1), batch_size=7)
    assert {"fd", "recall", "consistency", "recall_per_class_mean", "spread_mean"} <= set(ceiling)
    assert ceiling == pytest.approx({k: v for k, v in metric.floor.items() if k != "count"})
    assert sorted(per_class) == sorted(metric.floor_per_class) == [0, 1, 2]
    assert all(per_class[c] == pytest.approx(metric.floor_per_class[c]) for c in per_class)


def test_the_floor_is_matched_to_the_sample_count(domain_data):
    metric = domain_metric(domain_data, progress=False)
    images, labels = held_out_split(LatentDataset(domain_data))[2:]
    assert matched_floor(metric, domain_data, len(images)) == (metric.floor, metric.floor_per_class)
    floor, per_class = matched_floor(metric, domain_data, 15)
    expected, expected_per_class = metric.evaluate_nchw(images[:15], labels[:15])
    assert floor == expected and per_class == expected_per_class
    assert floor["fd"] != pytest.approx(metric.floor["fd"])  # fewer images: another floor
    ceiling, _ = tokenizer_ceiling(metric, domain_data, NoisyPosterior(1), batch_size=7, count=15)
    assert ceiling == pytest.approx(floor)  # an exact round trip of the same 15 images


def test_a_cached_reference_without_labels_is_labelled_with_the_cached_classifier(domain_data, tmp_path,
                                                                                 monkeypatch):
    data = shutil.copytree(domain_data, tmp_path / "data")
    cache = data / "eval" / "domain"
    old = ReferenceSet.load(cache / "reference.npz")
    ReferenceSet(old.statistics, old.features).save(cache / "reference.npz")  # as written before labels
    record = json.loads((cache / "floor.json").read_text())
    (cache / "floor.json").write_text(json.dumps({k: v for k, v in record.items() if k != "per_class"}))
    monkeypatch.setattr(suite, "train_domain_classifier", lambda *a, **k: pytest.fail("the classifier was retrained"))

    metric = domain_metric(data, progress=False)
    upgraded = ReferenceSet.load(cache / "reference.npz")
    np.testing.assert_allclose(upgraded.features, old.features, rtol=1e-6)
    np.testing.assert_array_equal(upgraded.labels, held_out_split(LatentDataset(data))[1])  # < SUBSET: all of them
    assert sorted(metric.floor_per_class) == [0, 1, 2] and "spread_mean" in metric.floor
    again = domain_metric(data, progress=False)  # now read from the cache as it is
    assert again.floor_per_class == metric.floor_per_class and again.floor == metric.floor
