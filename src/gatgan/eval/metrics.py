"""Sample-quality statistics computed on feature arrays: FID, KID, precision/recall and IS.

All functions take ``[N, d]`` features (numpy arrays or torch tensors, any float dtype, any
device) produced by the same network for real and generated images; extracting those features
(the FID Inception-v3, :mod:`gatgan.eval.inception`) is a separate step so that reference
statistics can be cached and several metrics share one pass over the images.

Numbers are meant to be comparable with the published evaluators (pytorch-fid, torch-fidelity,
the StyleGAN and ADM evaluators): the formulas, kernel, neighbourhood size, split convention and
numerical fall-backs follow theirs, and the docstrings say where a choice matters.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.special
import torch

__all__ = [
    "FeatureStatistics",
    "frechet_distance",
    "kernel_inception_distance",
    "precision_recall",
    "inception_score",
]

# Rows per chunk when accumulating statistics, so that a 50k x 2048 float32 array is never
# copied whole to float64 (nor centred whole).
_STATS_CHUNK = 4096

# The ridge added to both covariances when the matrix square root of their product is not finite
# (singular products), and the largest imaginary part of its diagonal that is still rounding
# noise; pytorch-fid and the StyleGAN/ADM evaluators use the same two numbers.
_FID_EPS = 1e-6
_FID_IMAG_ATOL = 1e-3


def _as_float64(features: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A float64 numpy view/copy of 2-D features, rejecting shapes that would silently broadcast."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d] features, got shape {array.shape}")
    if array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature dimension, got shape {array.shape}")
    return array


def _check_same_dim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names} must have the same feature dimension, got {a.shape[1]} and {b.shape[1]}")


@dataclass
class FeatureStatistics:
    """Mean and covariance of a feature set: all FID needs, and small enough to cache.

    ``count`` is the number of samples the statistics were computed from, kept so that a cache
    can tell a 10k-sample reference from a 50k one. Statistics loaded from a file without a
    ``count`` entry (e.g. the ADM reference batches) have ``count == -1``, meaning unknown;
    0 is not used for that because it would read as "computed from nothing".
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        self.count = int(self.count)
        if self.mu.ndim != 1:
            raise ValueError(f"mu must be 1-D [d], got shape {self.mu.shape}")
        d = self.mu.shape[0]
        if self.sigma.shape != (d, d):
            raise ValueError(f"sigma must be [d, d] = [{d}, {d}] to match mu, got shape {self.sigma.shape}")

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> FeatureStatistics:
        """Mean and unbiased covariance (``numpy.cov(rowvar=False)``) of ``[N, d]`` features.

        Accumulated in float64 in two chunked passes (mean, then centred outer products), which
        is as accurate as ``numpy.cov`` without holding a float64 copy of all N rows.
        """
        features = features.detach().cpu() if isinstance(features, torch.Tensor) else np.asarray(features)
        if features.ndim != 2 or features.shape[1] == 0:
            raise ValueError(f"features must be 2-D [N, d], got shape {tuple(features.shape)}")
        n, d = features.shape
        if n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got N={n}")

        def chunks():
            for i in range(0, n, _STATS_CHUNK):
                yield _as_float64(features[i : i + _STATS_CHUNK], "features")

        mu = sum(chunk.sum(axis=0) for chunk in chunks()) / n
        scatter = np.zeros((d, d))
        for chunk in chunks():
            centred = chunk - mu
            scatter += centred.T @ centred
        return cls(mu=mu, sigma=scatter / (n - 1), count=n)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``, ``sigma`` and ``count`` to an .npz at exactly ``path`` (no suffix added)."""
        with open(path, "wb") as f:
            np.savez(f, mu=self.mu, sigma=self.sigma, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Read statistics written by :meth:`save`, or an ADM reference batch (``mu``/``sigma`` only)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature statistics file not found: {path}")
        data = np.load(path, allow_pickle=False)  # lazy: an ADM batch's images are never read
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not an .npz with mu and sigma")
        with data:
            missing = [key for key in ("mu", "sigma") if key not in data.files]
            if missing:
                raise ValueError(
                    f"{path} is not a feature statistics file: it lacks {missing} (keys present: {sorted(data.files)})"
                )
            count = int(data["count"]) if "count" in data.files else -1
            return cls(mu=data["mu"], sigma=data["sigma"], count=count)


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """Fréchet distance between the Gaussians ``N(mu_a, Σa)`` and ``N(mu_b, Σb)`` (FID on Inception features).

    ``||mu_a - mu_b||² + tr(Σa + Σb - 2 (Σa Σb)^½)``. The square root of the product is taken
    with ``scipy.linalg.sqrtm`` as in the reference implementations; when it is not finite
    (rank-deficient covariances, e.g. fewer samples than dimensions) it is recomputed with a
    1e-6 ridge on both covariances. A residual imaginary part comes from rounding and is dropped,
    unless it is large on the diagonal, which means the inputs are not covariance matrices.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"statistics have different dimensions: {a.mu.shape[0]} and {b.mu.shape[0]}")
    with warnings.catch_warnings():  # singular is common (dead ReLU units, n < d); finiteness is checked below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        ridge = _FID_EPS * np.eye(a.mu.shape[0])
        covmean = scipy.linalg.sqrtm((a.sigma + ridge) @ (b.sigma + ridge))
    if np.iscomplexobj(covmean):
        largest = np.abs(np.diagonal(covmean).imag).max()
        if largest > _FID_IMAG_ATOL:
            raise ValueError(
                f"the square root of the covariance product has an imaginary diagonal component of {largest:.3g}; "
                "the statistics are not valid covariance matrices"
            )
        covmean = covmean.real
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))


def kernel_inception_distance(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al., 2018): unbiased MMD² with the kernel ``(x·y / d + 1)³``; (mean, std).

    Averaged over ``subsets`` random subsets of ``subset_size`` samples drawn without
    replacement from each set, as the StyleGAN and torch-fidelity evaluators do (their defaults
    too), because the estimator's cost is quadratic in the sample size. ``subset_size`` is capped
    at the smaller set. The std is over subsets (not a standard error). Seeded, hence
    reproducible. Unlike FID it is unbiased: about 0 for two samples of one distribution.
    """
    real, fake = _as_float64(real, "real"), _as_float64(fake, "fake")
    _check_same_dim(real, fake, "real and fake")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError(
            f"KID needs subsets of at least 2 samples, got subset_size={subset_size}, "
            f"N_real={real.shape[0]}, N_fake={fake.shape[0]}"
        )
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = real[rng.choice(real.shape[0], m, replace=False)]
        y = fake[rng.choice(fake.shape[0], m, replace=False)]
        k_xx = (x @ x.T / d + 1.0) ** 3
        k_yy = (y @ y.T / d + 1.0) ** 3
        k_xy = (x @ y.T / d + 1.0) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values[s] = within - 2.0 * k_xy.mean()
    return float(values.mean()), float(values.std())


def _blocks(x: torch.Tensor, size: int) -> list[tuple[int, torch.Tensor]]:
    return [(i, x[i : i + size]) for i in range(0, x.shape[0], size)]


def _knn_radii(x: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row, in ``batch_size``² blocks.

    A running top-k over column blocks keeps memory at one block instead of N². The sample's
    own column is set to +inf rather than relying on its computed distance being the smallest,
    because the matmul form of ``cdist`` does not return exactly 0 for it.
    """
    radii = []
    for i, rows in _blocks(x, batch_size):
        best = rows.new_empty((rows.shape[0], 0))
        for j, cols in _blocks(x, batch_size):
            dist = torch.cdist(rows, cols)
            if i == j:  # rows and columns share one blocking, so a sample meets itself only here
                dist.fill_diagonal_(float("inf"))
            nearest = dist.topk(min(k, dist.shape[1]), dim=1, largest=False).values
            candidates = torch.cat([best, nearest], dim=1)
            best = candidates.topk(min(k, candidates.shape[1]), dim=1, largest=False).values
        radii.append(best[:, k - 1])
    return torch.cat(radii)


def _ball_membership(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(for each query, how many balls ``manifold[j]`` of radius ``radii[j]`` hold it; for each ball,
    whether it holds any query), boundaries included."""
    counts = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    held = torch.zeros(manifold.shape[0], dtype=torch.bool, device=queries.device)
    for i, rows in _blocks(queries, batch_size):
        for j, cols in _blocks(manifold, batch_size):
            inside = torch.cdist(rows, cols) <= radii[j : j + cols.shape[0]]
            counts[i : i + rows.shape[0]] += inside.sum(dim=1)
            held[j : j + cols.shape[0]] |= inside.any(dim=0)
    return counts, held


def _feature_pair(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int, batch_size: int,
                  device: str | torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets as 2-D tensors on one device (float64 on the CPU, float32 on accelerators), checked."""
    if device is None:
        device = real.device if isinstance(real, torch.Tensor) else "cpu"
    device = torch.device(device)
    dtype = torch.float64 if device.type == "cpu" else torch.float32
    tensors = []
    for name, features in (("real", real), ("fake", fake)):
        features = torch.as_tensor(features).detach().to(device, dtype)
        if features.ndim != 2 or features.shape[1] == 0:
            raise ValueError(f"{name} must be 2-D [N, d] features, got shape {tuple(features.shape)}")
        if not 1 <= k < features.shape[0]:
            raise ValueError(
                f"k must be between 1 and N-1 (a sample is not its own neighbour), "
                f"got k={k} with N_{name}={features.shape[0]}"
            )
        tensors.append(features)
    _check_same_dim(*tensors, "real and fake")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return tensors[0], tensors[1]


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    batch_size: int = 10000,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN hyperspheres.

    Each sample's ball has the radius of its k-th nearest neighbour in its own set (itself
    excluded). Precision is the fraction of fake samples inside at least one real ball (fidelity);
    recall the fraction of real samples inside at least one fake ball (coverage). ``k=3`` as in
    the ADM evaluator. Distances are computed in ``batch_size`` x ``batch_size`` blocks, so 50k
    samples per set need one block of memory, not N².

    ``device`` defaults to that of ``real`` when it is a tensor, else the CPU. Distances are
    float64 on the CPU, where that costs about twice float32, and float32 on accelerators (as in
    the reference evaluators), where float64 is much slower or missing; a point within rounding
    of a ball's boundary may therefore count differently across devices.
    """
    real_t, fake_t = _feature_pair(real, fake, k, batch_size, device)
    fakes_inside, _ = _ball_membership(real_t, _knn_radii(real_t, k, batch_size), fake_t, batch_size)
    reals_inside, _ = _ball_membership(fake_t, _knn_radii(fake_t, k, batch_size), real_t, batch_size)
    return (fakes_inside > 0).double().mean().item(), (reals_inside > 0).double().mean().item()


def density_coverage(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 5,
    batch_size: int = 10000,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """Density and coverage (Naeem et al., 2020), with k-NN balls around the real samples only.

    Coverage is the fraction of real balls that hold at least one fake sample (diversity); density
    the mean number of real balls a fake sample falls in, divided by k (fidelity; about 1 for fakes
    distributed like the reals, above 1 for fakes crowded where the reals are dense). Recall builds
    its balls from the fakes, so a generator whose samples cluster tightly gets tiny balls and a
    recall near 0 even when its samples lie all over the real data, and a larger sample shrinks
    them further; coverage keeps the real balls, so it reads the same spread more steadily. ``k=5``
    as in the paper. Blocking, devices and precision as in `precision_recall`.
    """
    real_t, fake_t = _feature_pair(real, fake, k, batch_size, device)
    counts, held = _ball_membership(real_t, _knn_radii(real_t, k, batch_size), fake_t, batch_size)
    return counts.double().sum().item() / (k * fake_t.shape[0]), held.double().mean().item()


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al., 2016) from classifier logits; (mean, std over splits).

    ``exp(E_x KL(p(y|x) || p(y)))`` within each of ``splits`` consecutive chunks (sizes differ
    by at most one), with ``p(y)`` the chunk's mean prediction, as in the original code; the
    split count changes the value, so compare scores at the same split count (10 is standard).
    Works in log space so that saturated softmaxes (probabilities underflowing to 0) stay finite.
    """
    logits = _as_float64(logits, "logits")
    n = logits.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and N={n}, got {splits}")
    log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    scores = np.empty(splits)
    for s in range(splits):
        chunk = log_p[s * n // splits : (s + 1) * n // splits]
        log_marginal = scipy.special.logsumexp(chunk, axis=0) - np.log(chunk.shape[0])
        kl = (np.exp(chunk) * (chunk - log_marginal)).sum(axis=1)
        scores[s] = np.exp(kl.mean())
    return float(scores.mean()), float(scores.std())
