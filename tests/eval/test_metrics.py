"""Sample-quality statistics (gatgan.eval.metrics) against independent float64 references,
closed forms and toy distributions whose answers are known."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from gatgan.eval import metrics
from gatgan.eval.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    density_coverage,
    precision_recall,
)


def _gaussian(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Correlated Gaussian samples, so covariances are not near-diagonal."""
    mixing = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing + shift


# ------------------------------------------------------------------------------------------ FID


def _fid_reference(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """tr (Σa Σb)^½ = Σ sqrt(eigenvalues of Σa^½ Σb Σa^½), a symmetric PSD matrix (eigh, no sqrtm)."""
    w, v = np.linalg.eigh(a.sigma)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ b.sigma @ root_a)
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


@pytest.mark.parametrize("d", [16, 64])
def test_fid_matches_eigendecomposition_reference(d: int) -> None:
    rng = np.random.default_rng(d)
    a = FeatureStatistics.from_features(_gaussian(rng, 400, d))
    b = FeatureStatistics.from_features(_gaussian(rng, 300, d, shift=0.3))
    assert frechet_distance(a, b) == pytest.approx(_fid_reference(a, b), rel=1e-9)


def test_fid_closed_form_for_diagonal_covariances() -> None:
    rng = np.random.default_rng(1)
    var_a, var_b = rng.uniform(0.1, 4.0, size=24), rng.uniform(0.1, 4.0, size=24)
    mu_a, mu_b = rng.normal(size=24), rng.normal(size=24)
    a = FeatureStatistics(mu_a, np.diag(var_a), count=10)
    b = FeatureStatistics(mu_b, np.diag(var_b), count=10)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_fid_is_zero_for_identical_statistics_and_symmetric() -> None:
    rng = np.random.default_rng(2)
    a = FeatureStatistics.from_features(_gaussian(rng, 500, 32))
    b = FeatureStatistics.from_features(_gaussian(rng, 500, 32, shift=1.0))
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(a, b) > 1.0


def test_fid_rank_deficient_covariances_stay_finite() -> None:
    """Fewer samples than dimensions (as with a small eval set) makes both covariances singular."""
    rng = np.random.default_rng(3)
    a = FeatureStatistics.from_features(_gaussian(rng, 10, 48))
    b = FeatureStatistics.from_features(_gaussian(rng, 12, 48, shift=0.5))
    value = frechet_distance(a, b)
    assert math.isfinite(value)
    assert value == pytest.approx(_fid_reference(a, b), rel=1e-4)
    assert abs(frechet_distance(a, a)) < 1e-3


def test_fid_retries_with_ridge_when_sqrtm_is_not_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    a = FeatureStatistics.from_features(_gaussian(rng, 200, 8))
    b = FeatureStatistics.from_features(_gaussian(rng, 200, 8, shift=0.2))
    calls, sqrtm = [], scipy.linalg.sqrtm

    def flaky_sqrtm(matrix: np.ndarray) -> np.ndarray:
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else sqrtm(matrix)

    monkeypatch.setattr(metrics.scipy.linalg, "sqrtm", flaky_sqrtm)
    value = frechet_distance(a, b)
    ridge = 1e-6 * np.eye(8)
    np.testing.assert_allclose(calls[1], (a.sigma + ridge) @ (b.sigma + ridge))
    assert value == pytest.approx(_fid_reference(a, b), rel=1e-5)


def test_fid_rejects_bad_input() -> None:
    a = FeatureStatistics(np.zeros(2), np.diag([1.0, -1.0]), count=2)  # not a covariance
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(a, FeatureStatistics(np.zeros(2), np.eye(2), count=2))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(FeatureStatistics(np.zeros(3), np.eye(3), 2), FeatureStatistics(np.zeros(2), np.eye(2), 2))
    with pytest.raises(ValueError, match="sigma must be"):
        FeatureStatistics(np.zeros(3), np.eye(2), count=2)


# ---------------------------------------------------------------------------- FeatureStatistics


def test_statistics_match_numpy_across_chunks_and_input_types() -> None:
    rng = np.random.default_rng(5)
    x = _gaussian(rng, metrics._STATS_CHUNK + 900, 6, shift=3.0).astype(np.float32)
    for features in (x, torch.from_numpy(x)):
        stats = FeatureStatistics.from_features(features)
        assert stats.count == x.shape[0]
        assert stats.mu.dtype == stats.sigma.dtype == np.float64
        np.testing.assert_allclose(stats.mu, x.astype(np.float64).mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 samples"):
        FeatureStatistics.from_features(x[:1])
    with pytest.raises(ValueError, match="2-D"):
        FeatureStatistics.from_features(x[0])


def test_statistics_round_trip_keeps_exact_path(tmp_path) -> None:
    stats = FeatureStatistics.from_features(np.random.default_rng(6).normal(size=(50, 5)))
    path = tmp_path / "reference.stats"  # no .npz suffix: must not be renamed
    stats.save(path)
    loaded = FeatureStatistics.load(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.count == 50


def test_load_adm_reference_batch_without_count(tmp_path) -> None:
    rng = np.random.default_rng(7)
    path = tmp_path / "VIRTUAL_batch.npz"
    images = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    np.savez(path, arr_0=images, mu=rng.normal(size=4), sigma=np.eye(4), mu_s=np.zeros(3), sigma_s=np.eye(3))
    stats = FeatureStatistics.load(path)
    assert stats.count == -1
    assert stats.mu.shape == (4,) and stats.sigma.shape == (4, 4)


def test_load_errors_are_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        FeatureStatistics.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 4, 4, 3), dtype=np.uint8), mu=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks \['sigma'\]"):
        FeatureStatistics.load(tmp_path / "images.npz")
    np.save(tmp_path / "mu.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        FeatureStatistics.load(tmp_path / "mu.npy")


# ----------------------------------------------------------------------------- precision/recall


def _precision_recall_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> list[float]:
        return [
            sorted(math.dist(x[i], x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))
        ]

    def coverage(manifold: np.ndarray, queries: np.ndarray) -> float:
        r = radii(manifold)
        inside = [any(math.dist(q, m) <= r[j] for j, m in enumerate(manifold)) for q in queries]
        return sum(inside) / len(queries)

    return coverage(real, fake), coverage(fake, real)


def test_precision_recall_matches_brute_force_loop() -> None:
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(35, 3)) + 0.7
    for k in (1, 3, 5):
        expected = _precision_recall_reference(real, fake, k)
        assert precision_recall(real, fake, k=k, batch_size=16) == expected
        assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the check is not vacuous


def test_precision_recall_independent_of_batch_size() -> None:
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.3
    results = {precision_recall(real, fake, batch_size=b) for b in (7, 50, 10000)}
    assert len(results) == 1
    assert precision_recall(torch.from_numpy(real).float(), torch.from_numpy(fake).float()) == pytest.approx(
        results.pop(), abs=2 / 250
    )


def _density_coverage_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    radii = [sorted(math.dist(r, other) for j, other in enumerate(real) if j != i)[k - 1] for i, r in enumerate(real)]
    inside = [[math.dist(f, r) <= radii[j] for j, r in enumerate(real)] for f in fake]
    density = sum(map(sum, inside)) / (k * len(fake))
    coverage = sum(any(row[j] for row in inside) for j in range(len(real))) / len(real)
    return density, coverage


def test_density_coverage_match_brute_force_loop_and_do_not_depend_on_the_blocking() -> None:
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(40, 3)), rng.normal(size=(35, 3)) + 0.7
    for k in (1, 3, 5):
        expected = _density_coverage_reference(real, fake, k)
        for batch_size in (7, 16, 10000):
            assert density_coverage(real, fake, k=k, batch_size=batch_size) == pytest.approx(expected, rel=1e-12)
        assert 0 < expected[1] < 1  # the check is not vacuous


def test_coverage_sees_the_spread_that_recall_misses_in_tight_clusters() -> None:
    """Fakes in tight clusters around reals spread all over the data: recall, whose balls are the
    fakes' own (tiny) ones, is near 0; coverage, whose balls are the reals', sees the spread. A set
    collapsed to one region is low on both."""
    rng = np.random.default_rng(13)
    real = rng.normal(size=(2000, 4))
    centres = real[rng.choice(2000, 500, replace=False)]
    clustered = np.repeat(centres, 4, axis=0) + 0.001 * rng.normal(size=(2000, 4))
    _, recall = precision_recall(real, clustered)
    _, coverage = density_coverage(real, clustered)
    assert recall < 0.35 and coverage > 0.6
    _, collapsed = density_coverage(real, 0.1 * rng.normal(size=(2000, 4)) + 2.0)
    assert collapsed < 0.1


def test_density_coverage_identical_distributions() -> None:
    rng = np.random.default_rng(14)
    density, coverage = density_coverage(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)))
    assert density == pytest.approx(1.0, abs=0.1) and coverage > 0.9


def test_precision_recall_identical_distributions() -> None:
    """Both near 1; in low dimension only: with k=3 the balls cover less as d grows (~0.6 at d=64)."""
    rng = np.random.default_rng(10)
    precision, recall = precision_recall(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)))
    assert precision > 0.9 and recall > 0.9


def test_precision_recall_disjoint_distributions() -> None:
    rng = np.random.default_rng(11)
    assert precision_recall(rng.normal(size=(500, 8)), rng.normal(size=(500, 8)) + 50.0) == (0.0, 0.0)


def test_precision_recall_mode_collapse() -> None:
    """Fake covers one of four real modes: every fake is realistic, a quarter of the reals are covered."""
    rng = np.random.default_rng(12)
    centres = 40.0 * np.eye(4)
    real = np.concatenate([rng.normal(size=(500, 4)) + c for c in centres])
    fake = rng.normal(size=(500, 4)) + centres[0]
    precision, recall = precision_recall(real, fake)
    assert precision > 0.9
    assert recall == pytest.approx(0.25, abs=0.02)


def test_precision_recall_rejects_bad_input() -> None:
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="N_fake=3"):
        precision_recall(x, x[:3], k=3)
    with pytest.raises(ValueError, match="same feature dimension"):
        precision_recall(x, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="2-D"):
        precision_recall(x[0], x)


# -------------------------------------------------------------------------------------------- KID


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / d + 1) ** 3

    same = sum(k(x[i], x[j]) + k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return same - 2 * cross


def test_kid_matches_loop_reference_for_one_full_subset() -> None:
    """One subset capped at the set size is a permutation of each set; the estimator ignores order."""
    rng = np.random.default_rng(13)
    real, fake = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 0.5
    mean, std = kernel_inception_distance(real, fake, subsets=1, subset_size=1000)
    assert mean == pytest.approx(_mmd2_reference(real, fake), rel=1e-10)
    assert std == 0.0


def test_kid_near_zero_for_same_distribution_and_positive_for_shift() -> None:
    rng = np.random.default_rng(14)
    real, same, shifted = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16)) + 1
    mean_same, std_same = kernel_inception_distance(real, same, subsets=20, subset_size=500)
    mean_shift, _ = kernel_inception_distance(real, shifted, subsets=20, subset_size=500)
    assert abs(mean_same) < 0.05
    assert mean_shift > 1.0 and mean_shift > 20 * abs(mean_same)
    assert std_same > 0


def test_kid_is_seeded() -> None:
    rng = np.random.default_rng(15)
    real, fake = rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 0.2
    first = kernel_inception_distance(real, fake, subsets=5, subset_size=50, seed=3)
    assert kernel_inception_distance(torch.from_numpy(real), fake, subsets=5, subset_size=50, seed=3) == first
    assert kernel_inception_distance(real, fake, subsets=5, subset_size=50, seed=4) != first
    with pytest.raises(ValueError, match="same feature dimension"):
        kernel_inception_distance(real, fake[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(real, fake[:1])


# --------------------------------------------------------------------------------------------- IS


def test_inception_score_uniform_predictions_score_one() -> None:
    assert inception_score(np.zeros((50, 1008)), splits=5) == pytest.approx((1.0, 0.0), abs=1e-12)


@pytest.mark.parametrize("splits", [1, 4])
def test_inception_score_confident_balanced_predictions_score_class_count(splits: int) -> None:
    classes = 10
    labels = np.tile(np.arange(classes), 8)  # every consecutive chunk of 20 (splits=4) is balanced
    logits = torch.from_numpy(200.0 * np.eye(classes)[labels]).float()  # saturated: p(y|x) underflows
    mean, std = inception_score(logits, splits=splits)
    assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_splits_are_consecutive_chunks() -> None:
    logits = 50.0 * np.eye(2)[[0] * 5 + [1] * 5]
    assert inception_score(logits, splits=1) == pytest.approx((2.0, 0.0))
    assert inception_score(logits, splits=2) == pytest.approx((1.0, 0.0))  # each half is one class
    mean, std = inception_score(logits, splits=3)  # chunks of 3, 3, 4: [0 0 0], [0 0 1], [1 1 1 1]
    per_split = np.array([1.0, math.exp(math.log(3) - 2 / 3 * math.log(2)), 1.0])
    assert (mean, std) == pytest.approx((per_split.mean(), per_split.std()))
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits, splits=11)
