"""Scoring against a reference set (gatgan.eval.suite): reference caching, ADM reference batches,
metric selection, and the Inception metric end to end on random weights in the real layout."""

from __future__ import annotations

import numpy as np
import pytest

from gatgan.data.inputs import prepare_arrays
from gatgan.data.prepare import PrepareOptions
from gatgan.eval.inception import InceptionFeatures
from gatgan.eval.metrics import FeatureStatistics, frechet_distance
from gatgan.eval.suite import (SUBSET, InceptionMetric, ReferenceSet, format_scores, held_out_split,
                               inception_reference, resolve_metric_kind)
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


def test_reference_set_round_trips_and_keeps_a_fixed_subset(tmp_path):
    features = np.random.default_rng(0).normal(size=(SUBSET + 50, 3))
    reference = ReferenceSet.from_features(features, seed=1)
    assert len(reference.features) == SUBSET
    np.testing.assert_array_equal(reference.features, ReferenceSet.from_features(features, seed=1).features)
    assert reference.statistics.count == SUBSET + 50
    reference.save(tmp_path / "ref.npz")
    loaded = ReferenceSet.load(tmp_path / "ref.npz")
    np.testing.assert_allclose(loaded.statistics.sigma, reference.statistics.sigma)
    np.testing.assert_allclose(loaded.features, reference.features, rtol=1e-6)  # stored as float32


def test_inception_reference_from_data_is_cached_and_scores_its_own_images_perfectly(tmp_path, inception,
                                                                                     monkeypatch):
    data = _data(tmp_path)
    reference = inception_reference(data, inception, count=12, progress=False)
    assert reference.statistics.count == 12 and (data / "eval").is_dir()
    images = LatentDataset(data).images(np.arange(40)).permute(0, 2, 3, 1).numpy()
    chosen = np.sort(np.random.default_rng(0).choice(40, 12, replace=False))
    scores = InceptionMetric(inception, reference).score(images[chosen])
    assert abs(scores["fid"]) < 1e-3 and scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert set(scores) == {"fid", "precision", "recall", "kid", "kid_std", "is", "is_std"}

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


def test_scores_are_printed_beside_their_floor():
    text = format_scores({"fd": 12.5, "consistency": 0.9}, {"fd": 0.4})
    assert "real-vs-real floor 0.4000" in text.splitlines()[0] and "floor" not in text.splitlines()[1]
