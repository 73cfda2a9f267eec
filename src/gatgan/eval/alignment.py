"""Representation-alignment scores for REPA-style monitoring.

They measure how well per-sample features of one network (e.g. a GAN discriminator's hidden
tokens, pooled) align with those of a frozen teacher (e.g. DINOv2) on the same N inputs:

- `linear_cka`: linear Centered Kernel Alignment (Kornblith et al., 2019), a global score;
- `cknna`: Centered Kernel Nearest-Neighbour Alignment (Huh et al., 2024, "The Platonic
  Representation Hypothesis"), CKA restricted to pairs that are near neighbours in both spaces;
- `mutual_knn`: the fraction of k nearest neighbours the two spaces share (same paper).

Conventions shared by all three:

- inputs are ``x: [N, d1]`` and ``y: [N, d2]``, row i of each describing sample i; the caller
  flattens or pools tokens first. Any float dtype, any device: both are copied to float64 on
  ``x``'s device (CPU when that is MPS, which has no float64) and detached, so no graph is kept;
- ``normalize=True`` (default) L2-normalises each sample's feature vector before the kernels are
  built, as the Platonic-representation code does (``measure_alignment.compute_score``), so the
  kernels are cosine similarities. Pass ``normalize=False`` for the raw linear kernel, e.g. the
  textbook Kornblith CKA. Nothing else is normalised implicitly;
- nearest neighbours come from the linear kernel ``K = x xᵀ`` (after the optional
  normalisation), excluding the sample itself; ties go to the lower sample index;
- a representation whose centred features vanish (all samples identical up to rounding) has no
  defined alignment, and NaN/inf features (a diverged run) have none either: the score is NaN
  rather than an exception, so monitoring code keeps going. Bad shapes or k raise ValueError;
- each returns a Python float. Memory is O(N²) for the kNN scores (N×N float64 kernels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["linear_cka", "cknna", "mutual_knn"]

# Centred features with squared norm below this fraction of the raw features' are "all equal".
_DEGENERATE_RTOL = 1e-20


def _prepare(x: torch.Tensor, y: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; return float64, detached copies on one device, optionally L2-normalised."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{name} must be 2-D [N, d] (flatten or pool tokens first), got shape {tuple(t.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same samples: got N={x.shape[0]} and N={y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got N={x.shape[0]}")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError(f"features must have at least one dimension, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    device = x.device if x.device.type != "mps" else torch.device("cpu")
    x = x.detach().to(device=device, dtype=torch.float64)
    y = y.detach().to(device=device, dtype=torch.float64)
    if normalize:
        x = F.normalize(x, p=2.0, dim=1)
        y = F.normalize(y, p=2.0, dim=1)
    return x, y


def _centre(x: torch.Tensor) -> torch.Tensor | None:
    """Column-centred features (so ``xc xcᵀ = H x xᵀ H``); None when they vanish or x is not finite."""
    if not bool(torch.isfinite(x).all()):
        return None
    xc = x - x.mean(dim=0, keepdim=True)
    if float(xc.square().sum()) <= _DEGENERATE_RTOL * float(x.square().sum()):
        return None
    return xc


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be between 1 and N-1 = {n - 1} (a sample is not its own neighbour), got k={k}")


def _knn_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [N, N]: row i is True at the k largest ``kernel[i, j]``, j != i (ties: lower j first).

    ``topk`` finds each row's k-th largest value; everything above it is in, and of the entries
    equal to it the lowest-index ones fill the remaining places. Same result as a stable
    descending sort, without the O(N² log N) sort.
    """
    scores = kernel.clone()
    scores.fill_diagonal_(float("-inf"))
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(dim=1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=1) <= room))


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, normalize: bool = True) -> float:
    """Linear CKA (Kornblith et al., 2019) between ``x: [N, d1]`` and ``y: [N, d2]``.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels ``K = x xᵀ``,
    ``L = y yᵀ`` and the biased HSIC ``tr(K H L H)``, ``H = I - 11ᵀ/N`` (the 1/(N-1)² factors
    cancel). Equivalently ``‖ycᵀ xc‖²_F / (‖xcᵀ xc‖_F ‖ycᵀ yc‖_F)`` for column-centred features;
    whichever of the two forms is cheaper for the shapes is used.

    With ``normalize=True`` (default) each sample is L2-normalised first (Platonic-representation
    convention); ``normalize=False`` gives the textbook linear CKA. Either way the score lies in
    [0, 1], is 1 for identical inputs and is invariant to orthogonal transforms and isotropic
    scaling of either input. Biased: independent features score about ``sqrt(d1 d2) / N`` > 0.
    NaN when either representation's centred features vanish (or are not finite).
    """
    x, y = _prepare(x, y, normalize)
    xc, yc = _centre(x), _centre(y)
    if xc is None or yc is None:
        return math.nan
    n, d1, d2 = x.shape[0], x.shape[1], y.shape[1]
    if d1 * d2 <= n * n:  # feature space: d1×d2, d1×d1 and d2×d2 cross-covariances
        hsic_xy = (yc.T @ xc).square().sum()
        hsic_xx = (xc.T @ xc).square().sum()
        hsic_yy = (yc.T @ yc).square().sum()
    else:  # sample space: N×N centred kernels
        kx, ky = xc @ xc.T, yc @ yc.T
        hsic_xy = (kx * ky).sum()
        hsic_xx = kx.square().sum()
        hsic_yy = ky.square().sum()
    return float(hsic_xy / torch.sqrt(hsic_xx * hsic_yy))


def cknna(x: torch.Tensor, y: torch.Tensor, k: int = 10, *, normalize: bool = True) -> float:
    """Centered Kernel Nearest-Neighbour Alignment (Huh et al., 2024) of ``x: [N, d1]``, ``y: [N, d2]``.

    Written from the paper's definition::

        Align_knn(K, L) = Σ_i Σ_j α(i, j) (K_ij - mean_l K_il) (L_ij - mean_l L_il)
        α(i, j) = 1[i != j, j ∈ knn_K(i, k), j ∈ knn_L(i, k)]
        CKNNA = Align_knn(K, L) / sqrt(Align_knn(K, K) Align_knn(L, L))

    with linear kernels ``K = x xᵀ``, ``L = y yᵀ``, each centred by subtracting its row mean
    (over all N columns, i.e. ``K H``). ``knn_K(i, k)`` are the k samples j != i with the largest
    ``K_ij`` (ties: lower index first). The self-alignments in the denominator use the same
    construction, so their mask is each representation's own k-NN graph (α with both arguments
    equal); this is what makes the score a cosine in [-1, 1] (Cauchy-Schwarz, as the mutual mask
    is contained in both self masks) and equal to 1 for identical inputs.

    With ``normalize=True`` (default) samples are L2-normalised first, as the Platonic-
    representation code does, so neighbours are by cosine similarity. ``1 <= k <= N-1``
    (ValueError otherwise). NaN when either representation's centred features vanish (or are
    not finite) or a self-alignment is zero. Like CKA it is biased upwards: mutual neighbours
    have above-average similarity in both spaces, so independent features score roughly the
    chance overlap ``k / (N-1)``, not 0.

    Note: the reference code (``platonic-rep/metrics.py``) instead plugs the masked, uncentred
    kernels into the *unbiased* HSIC estimator; that estimator's values differ from this
    definition (and are not bounded by 1), so do not compare numbers across the two.
    """
    x, y = _prepare(x, y, normalize)
    n = x.shape[0]
    _check_k(k, n)
    if _centre(x) is None or _centre(y) is None:
        return math.nan
    kx, ky = x @ x.T, y @ y.T
    mask_x, mask_y = _knn_mask(kx, k), _knn_mask(ky, k)
    ax = kx - kx.mean(dim=1, keepdim=True)  # row-centred kernels: K_ij - mean_l K_il
    ay = ky - ky.mean(dim=1, keepdim=True)
    zero = ax.new_zeros(())
    align_xy = torch.where(mask_x & mask_y, ax * ay, zero).sum()
    align_xx = torch.where(mask_x, ax.square(), zero).sum()
    align_yy = torch.where(mask_y, ay.square(), zero).sum()
    den = torch.sqrt(align_xx * align_yy)
    if float(den) == 0.0:
        return math.nan
    return float(align_xy / den)


def mutual_knn(x: torch.Tensor, y: torch.Tensor, k: int = 10, *, normalize: bool = True) -> float:
    """Mutual k-NN alignment (Huh et al., 2024) of ``x: [N, d1]`` and ``y: [N, d2]``.

    ``mean_i |knn_x(i, k) ∩ knn_y(i, k)| / k``: the average fraction of each sample's k nearest
    neighbours (by the linear kernel, self excluded, ties to the lower index) that the two
    representations share. In [0, 1]; 1 when the neighbour sets coincide; about ``k / (N-1)``
    for independent features. With ``normalize=True`` (default) samples are L2-normalised first,
    so neighbours are by cosine similarity. ``1 <= k <= N-1`` (ValueError otherwise). NaN when
    either representation's centred features vanish (every neighbour set would be a tie).
    """
    x, y = _prepare(x, y, normalize)
    n = x.shape[0]
    _check_k(k, n)
    if _centre(x) is None or _centre(y) is None:
        return math.nan
    shared = _knn_mask(x @ x.T, k) & _knn_mask(y @ y.T, k)
    return float(shared.sum(dtype=torch.float64) / (n * k))
