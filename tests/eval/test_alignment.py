"""Representation-alignment scores (gatgan.eval.alignment) against slow loop references, plus
invariances, edge cases and monotonicity in added noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gatgan.eval.alignment import cknna, linear_cka, mutual_knn

# ---------------------------------------------------------------- slow float64 loop references


def _ref_rows(x: np.ndarray, normalize: bool) -> list[list[float]]:
    rows = [[float(v) for v in row] for row in x]
    if normalize:
        rows = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in rows]
    return rows


def _ref_kernel(rows: list[list[float]]) -> list[list[float]]:
    n = len(rows)
    return [[sum(a * b for a, b in zip(rows[i], rows[j])) for j in range(n)] for i in range(n)]


def _ref_knn(kernel: list[list[float]], i: int, k: int) -> set[int]:
    others = [j for j in range(len(kernel)) if j != i]
    return set(sorted(others, key=lambda j: (-kernel[i][j], j))[:k])  # ties: lower index first


def ref_linear_cka(x: np.ndarray, y: np.ndarray, normalize: bool = True) -> float:
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)), H K H written out element by element."""

    def centred(kernel: list[list[float]]) -> list[list[float]]:
        n = len(kernel)
        row = [sum(kernel[i]) / n for i in range(n)]
        col = [sum(kernel[i][j] for i in range(n)) / n for j in range(n)]
        grand = sum(row) / n
        return [[kernel[i][j] - row[i] - col[j] + grand for j in range(n)] for i in range(n)]

    kc = centred(_ref_kernel(_ref_rows(x, normalize)))
    lc = centred(_ref_kernel(_ref_rows(y, normalize)))
    n = len(kc)

    def hsic(a: list[list[float]], b: list[list[float]]) -> float:
        return sum(a[i][j] * b[i][j] for i in range(n) for j in range(n))

    return hsic(kc, lc) / math.sqrt(hsic(kc, kc) * hsic(lc, lc))


def ref_cknna(x: np.ndarray, y: np.ndarray, k: int, normalize: bool = True) -> float:
    """Huh et al. (2024): Σ_ij α(i,j) (K_ij - E_l K_il)(L_ij - E_l L_il), normalised by the
    self-alignments, α(i,j) = [i != j, j in knn_K(i), j in knn_L(i)]."""
    kern = _ref_kernel(_ref_rows(x, normalize))
    lern = _ref_kernel(_ref_rows(y, normalize))
    n = len(kern)

    def align(a: list[list[float]], b: list[list[float]]) -> float:
        total = 0.0
        for i in range(n):
            mean_a, mean_b = sum(a[i]) / n, sum(b[i]) / n
            shared = _ref_knn(a, i, k) & _ref_knn(b, i, k)
            for j in range(n):
                if j != i and j in shared:
                    total += (a[i][j] - mean_a) * (b[i][j] - mean_b)
        return total

    return align(kern, lern) / math.sqrt(align(kern, kern) * align(lern, lern))


def ref_mutual_knn(x: np.ndarray, y: np.ndarray, k: int, normalize: bool = True) -> float:
    kern = _ref_kernel(_ref_rows(x, normalize))
    lern = _ref_kernel(_ref_rows(y, normalize))
    n = len(kern)
    return sum(len(_ref_knn(kern, i, k) & _ref_knn(lern, i, k)) / k for i in range(n)) / n


# ---------------------------------------------------------------- helpers


def _related_pair(n: int, d1: int, d2: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y is a random linear map of x plus noise: partially aligned, not trivially identical."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1))
    y = x @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return x, y


def _t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("n", "d1", "d2"), [(20, 5, 3), (14, 30, 40)])  # feature- and sample-space branches
def test_linear_cka_matches_loop_reference(normalize: bool, n: int, d1: int, d2: int) -> None:
    x, y = _related_pair(n, d1, d2, noise=1.0, seed=n + d1)
    x = x + 0.7  # a common offset: the centring has to remove it
    got = linear_cka(_t(x, torch.float64), _t(y, torch.float64), normalize=normalize)
    want = ref_linear_cka(x, y, normalize=normalize)
    assert 0.05 < want < 0.999  # a non-trivial value
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 3, 7, 23])  # 23 = N-1: every other sample is a neighbour
def test_cknna_matches_loop_reference(normalize: bool, k: int) -> None:
    x, y = _related_pair(24, 6, 9, noise=2.0, seed=k)
    got = cknna(_t(x, torch.float64), _t(y, torch.float64), k=k, normalize=normalize)
    want = ref_cknna(x, y, k, normalize=normalize)
    assert abs(want) > 0.05 and want < 0.999
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_mutual_knn_matches_loop_reference(normalize: bool, k: int) -> None:
    x, y = _related_pair(30, 5, 8, noise=2.0, seed=100 + k)
    got = mutual_knn(_t(x, torch.float64), _t(y, torch.float64), k=k, normalize=normalize)
    want = ref_mutual_knn(x, y, k, normalize=normalize)
    assert 0.0 < want < 1.0
    assert got == pytest.approx(want, abs=1e-12)


def test_cknna_with_every_neighbour_is_the_row_centred_alignment_without_diagonal() -> None:
    """k = N-1 lifts the kNN restriction: a closed form written with matrices, not loops."""
    x, y = _related_pair(18, 4, 7, noise=1.5, seed=5)
    kx, ky = x @ x.T, y @ y.T
    ax = kx - kx.mean(axis=1, keepdims=True)
    ay = ky - ky.mean(axis=1, keepdims=True)
    off = ~np.eye(18, dtype=bool)
    want = (ax * ay)[off].sum() / math.sqrt((ax**2)[off].sum() * (ay**2)[off].sum())
    assert cknna(_t(x), _t(y), k=17, normalize=False) == pytest.approx(want, rel=1e-5)


def test_knn_ties_go_to_the_lower_index_like_the_reference() -> None:
    """Small-integer features make exact kernel ties; both must break them the same way."""
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, size=(16, 3)).astype(np.float64)
    y = rng.integers(-1, 2, size=(16, 2)).astype(np.float64)
    x[3] = x[9]  # duplicates tie with everything they are compared to
    y[4] = y[11] = y[2]
    for k in (1, 2, 5):
        assert mutual_knn(_t(x), _t(y), k=k, normalize=False) == pytest.approx(
            ref_mutual_knn(x, y, k, normalize=False), abs=1e-12
        )
        assert cknna(_t(x), _t(y), k=k, normalize=False) == pytest.approx(
            ref_cknna(x, y, k, normalize=False), rel=1e-10, abs=1e-12
        )


def test_normalize_means_per_sample_l2_normalisation() -> None:
    x, y = _related_pair(40, 6, 6, noise=1.0, seed=3)
    scales_x = np.linspace(0.1, 10.0, 40)[:, None]  # per-sample scales: only normalisation undoes them
    xs = x * scales_x
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    for score in (linear_cka, cknna, mutual_knn):
        normalised = score(_t(xs, torch.float64), _t(y, torch.float64))
        assert normalised == pytest.approx(score(_t(xn, torch.float64), _t(yn, torch.float64), normalize=False))
    assert linear_cka(_t(xs), _t(y), normalize=False) != pytest.approx(linear_cka(_t(xs), _t(y)), abs=1e-3)


# ---------------------------------------------------------------- invariances and fixed points


@pytest.mark.parametrize("normalize", [True, False])
def test_scores_invariant_to_orthogonal_maps_and_isotropic_scaling(normalize: bool) -> None:
    x, y = _related_pair(60, 8, 12, noise=1.0, seed=11)
    xt, yt = _t(x, torch.float64), _t(y, torch.float64)
    xq = 3.7 * xt @ _orthogonal(8, 1)
    yq = 0.02 * yt @ _orthogonal(12, 2)
    base_cka = linear_cka(xt, yt, normalize=normalize)
    for a, b in ((xq, yt), (xt, yq), (xq, yq)):
        assert linear_cka(a, b, normalize=normalize) == pytest.approx(base_cka, rel=1e-9)
        assert cknna(a, b, k=5, normalize=normalize) == pytest.approx(cknna(xt, yt, k=5, normalize=normalize), rel=1e-9)
        assert mutual_knn(a, b, k=5, normalize=normalize) == mutual_knn(xt, yt, k=5, normalize=normalize)


def test_identical_inputs_score_one() -> None:
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    for normalize in (True, False):
        assert linear_cka(x, x, normalize=normalize) == pytest.approx(1.0, abs=1e-12)
        assert linear_cka(x, -2.5 * x @ _orthogonal(16, 3).float(), normalize=normalize) == pytest.approx(1.0, abs=1e-6)
        for k in (1, 10, 49):
            assert cknna(x, x, k=k, normalize=normalize) == pytest.approx(1.0, abs=1e-12)
            assert mutual_knn(x, x, k=k, normalize=normalize) == 1.0


def test_scores_are_bounded_and_symmetric() -> None:
    for seed in range(5):
        x, y = _related_pair(40, 3, 5, noise=3.0, seed=seed)
        xt, yt = _t(x, torch.float64), _t(y, torch.float64)
        assert 0.0 <= linear_cka(xt, yt) <= 1.0
        assert -1.0 <= cknna(xt, yt, k=6) <= 1.0
        assert 0.0 <= mutual_knn(xt, yt, k=6) <= 1.0
        assert linear_cka(xt, yt) == pytest.approx(linear_cka(yt, xt), rel=1e-12)
        assert cknna(xt, yt, k=6) == pytest.approx(cknna(yt, xt, k=6), rel=1e-12)
        assert mutual_knn(xt, yt, k=6) == mutual_knn(yt, xt, k=6)


def test_independent_features_score_near_zero_and_far_below_a_noisy_copy() -> None:
    n, d = 400, 8
    g = torch.Generator().manual_seed(1)
    x, z, noise = (torch.randn(n, d, generator=g) for _ in range(3))
    noisy = x + 0.5 * noise
    # Biased estimators: CKA's null level is about sqrt(d1 d2)/N = 0.02, the kNN scores' about
    # k/(N-1) = 0.025 (chance overlap). A noisy copy (SNR 4) gives about 0.78 / 0.38 / 0.36.
    for score in (linear_cka, cknna, mutual_knn):
        independent, copy = score(x, z), score(x, noisy)
        assert abs(independent) < 0.05, score.__name__
        assert copy > 0.25 and copy > 8 * abs(independent), (score.__name__, independent, copy)


@pytest.mark.parametrize("score", [linear_cka, cknna, mutual_knn])
def test_scores_decrease_as_noise_grows(score) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 16, generator=g)
    noise = torch.randn(200, 16, generator=g)
    values = [score(x, x + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values, values[1:])), values


# ---------------------------------------------------------------- inputs, devices, errors


def test_input_dtype_device_and_grad_do_not_matter() -> None:
    x, y = _related_pair(32, 6, 10, noise=1.0, seed=9)
    x64, y64 = _t(x, torch.float64), _t(y, torch.float64)
    want = (linear_cka(x64, y64), cknna(x64, y64, k=4), mutual_knn(x64, y64, k=4))
    x32 = _t(x).requires_grad_(True)
    got = (linear_cka(x32, _t(y)), cknna(x32, _t(y), k=4), mutual_knn(x32, _t(y), k=4))
    assert all(isinstance(v, float) for v in got)
    assert got == pytest.approx(want, rel=1e-5)
    assert x32.grad is None
    low = (linear_cka(x64.bfloat16(), y64.half()), cknna(x64.bfloat16(), y64.half(), k=4))
    assert low == pytest.approx(want[:2], abs=0.05)  # computed in float64 from rounded inputs
    if torch.cuda.is_available():
        xc, yc = x64.cuda(), y64.cuda()
        on_gpu = (linear_cka(xc, yc), cknna(xc, yc, k=4), mutual_knn(xc, yc, k=4))
        assert on_gpu == pytest.approx(want, rel=1e-9)
        assert linear_cka(xc, y64) == pytest.approx(want[0], rel=1e-9)  # y follows x's device


@pytest.mark.parametrize("score", [cknna, mutual_knn])
def test_k_out_of_range_raises(score) -> None:
    x = torch.randn(12, 4)
    score(x, x, k=11)  # N-1 is the largest valid k
    for bad in (12, 50, 0, -1):
        with pytest.raises(ValueError, match="k must be between 1 and N-1 = 11"):
            score(x, x, k=bad)
    with pytest.raises(TypeError):
        score(x, x, k=2.0)


@pytest.mark.parametrize("score", [linear_cka, cknna, mutual_knn])
def test_bad_shapes_raise(score) -> None:
    kwargs = {} if score is linear_cka else {"k": 2}
    with pytest.raises(ValueError, match="same samples"):
        score(torch.randn(12, 4), torch.randn(13, 4), **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        score(torch.randn(12, 4, 2), torch.randn(12, 4), **kwargs)
    with pytest.raises(ValueError, match="at least 2 samples"):
        score(torch.randn(1, 4), torch.randn(1, 4))


@pytest.mark.parametrize("score", [linear_cka, cknna, mutual_knn])
def test_degenerate_or_non_finite_features_give_nan(score) -> None:
    y = torch.randn(16, 3)
    constant = torch.ones(16, 5)
    assert math.isnan(score(constant, y))
    assert math.isnan(score(y, 2.0 * constant))
    broken = y.clone()
    broken[4, 1] = float("nan")
    assert math.isnan(score(broken, y))
