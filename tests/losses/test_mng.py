"""Multi-level Noise-perturbed image Guidance (docs/method.md §4.5)."""

import pytest
import torch

from gatgan.losses.mng import MNG, noise_levels

T_CODE = [0.885, 0.76, 0.51, 0.01]
SAMPLES = 200_000


def measure(mng: MNG, levels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Applies `mng` to [K, N, 1, 1, 1] scalars with fresh standard-normal eps; returns [K, N]."""
    eps = torch.randn(levels.shape, generator=torch.Generator().manual_seed(seed), dtype=levels.dtype)
    return mng(levels, eps).flatten(1)


def zeros(num_levels: int = 4) -> torch.Tensor:
    return torch.zeros(num_levels, SAMPLES, 1, 1, 1, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

def test_exponential_schedule_matches_the_code_values():
    t = noise_levels(4)
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, torch.tensor(T_CODE, dtype=torch.float64), rtol=0, atol=1e-12)
    # the signal coefficient doubles per level, ending at 0.99
    signal = 1 - t + 0.01
    torch.testing.assert_close(signal[1:] / signal[:-1], torch.full((3,), 2.0, dtype=torch.float64))


def test_linear_schedule_spans_the_same_endpoints_with_evenly_spaced_signal():
    t = noise_levels(4, "linear")
    assert t[0].item() == pytest.approx(0.885) and t[-1].item() == pytest.approx(0.01)
    steps = (1 - t).diff()
    torch.testing.assert_close(steps, torch.full((3,), (1 - 0.125) / 3, dtype=torch.float64))
    t6 = noise_levels(6, "linear")
    assert t6[0].item() == pytest.approx(0.885) and t6[-1].item() == pytest.approx(0.01)


def test_one_level_keeps_only_the_floor_noise():
    torch.testing.assert_close(noise_levels(1), torch.tensor([0.01], dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [dict(num_levels=0), dict(num_levels=4, schedule="cosine")])
def test_bad_schedule_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        noise_levels(**kwargs)


def test_unknown_form_raises():
    with pytest.raises(ValueError):
        MNG(form="ddpm")


# ---------------------------------------------------------------------------------------------
# Cumulative (code) form
# ---------------------------------------------------------------------------------------------

def test_cumulative_noise_has_std_t_and_the_reference_adjacent_correlations():
    out = measure(MNG(), zeros())
    std = out.std(dim=1)
    torch.testing.assert_close(std, torch.tensor(T_CODE, dtype=torch.float64), rtol=0.01, atol=0)
    corr = torch.corrcoef(out)
    assert corr[2, 3].item() == pytest.approx(0.0097, abs=0.01)  # L3 - L4
    assert corr[1, 2].item() == pytest.approx(0.329, abs=0.01)  # L2 - L3
    assert corr[0, 1].item() == pytest.approx(0.412, abs=0.01)  # L1 - L2


def test_cumulative_noise_covariance_is_exact():
    signal, mixing = MNG().noise_coefficients()
    t = torch.tensor(T_CODE, dtype=torch.float64)
    cov = mixing @ mixing.T
    torch.testing.assert_close(cov.diagonal().sqrt(), t, rtol=1e-9, atol=1e-12)
    corr = cov / torch.outer(t, t)
    for (a, b), value in {(2, 3): 0.0097, (1, 2): 0.329, (0, 1): 0.412}.items():
        assert corr[a, b].item() == pytest.approx(value, abs=6e-4)
    torch.testing.assert_close(signal, 1 - t)


def test_cumulative_real_copies_form_a_markov_noising_chain():
    """For K copies of one latent: x~_k = decay_k x~_{k+1} + fresh_k eps_k (docs/method.md §4.5 numbers),
    and the cleanest level uses only its own noise."""
    torch.manual_seed(0)
    x = torch.randn(1, 5, 4, 6, 6, dtype=torch.float64).expand(4, -1, -1, -1, -1)
    eps = torch.randn(4, 5, 4, 6, 6, dtype=torch.float64)
    out = MNG()(x, eps)
    t = T_CODE
    torch.testing.assert_close(out[3], 0.99 * x[3] + 0.01 * eps[3])
    decay = [(1 - t[k]) / (1 - t[k + 1]) for k in range(3)]
    assert [round(d, 4) for d in decay] == [0.4792, 0.4898, 0.4949]
    fresh = [(t[k] ** 2 - (t[k + 1] * decay[k]) ** 2) ** 0.5 for k in range(3)]
    assert [round(f, 3) for f in fresh] == [0.807, 0.718, 0.510]
    for k in range(3):
        torch.testing.assert_close(out[k], decay[k] * out[k + 1] + fresh[k] * eps[k])


def test_signal_coefficient_is_one_minus_t_per_level():
    levels = torch.arange(1.0, 5.0, dtype=torch.float64).view(4, 1, 1, 1, 1).expand(4, 2, 3, 4, 4)
    out = MNG()(levels, torch.zeros_like(levels))
    expected = torch.tensor([(1 - t) * v for t, v in zip(T_CODE, [1.0, 2.0, 3.0, 4.0])], dtype=torch.float64)
    torch.testing.assert_close(out, expected.view(4, 1, 1, 1, 1).expand_as(out))


def test_noise_is_linear_in_eps_and_keeps_dtype():
    torch.manual_seed(0)
    mng = MNG()
    x = torch.randn(4, 2, 3, 4, 4)
    e1, e2 = torch.randn_like(x), torch.randn_like(x)
    out = mng(x, e1 + e2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mng(x, e1) + mng(torch.zeros_like(x), e2), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Independent and VP forms
# ---------------------------------------------------------------------------------------------

def test_independent_form_has_std_t_and_no_correlation():
    out = measure(MNG(form="independent"), zeros(), seed=1)
    torch.testing.assert_close(out.std(dim=1), torch.tensor(T_CODE, dtype=torch.float64), rtol=0.01, atol=0)
    corr = torch.corrcoef(out)
    off_diagonal = corr - torch.diag(corr.diagonal())
    assert off_diagonal.abs().max() < 0.01
    signal, _ = MNG(form="independent").noise_coefficients()
    torch.testing.assert_close(signal, 1 - torch.tensor(T_CODE, dtype=torch.float64))


def test_vp_form_preserves_unit_variance_and_keeps_the_last_level_clean():
    mng = MNG(form="vp")
    alpha, _ = mng.noise_coefficients()
    torch.testing.assert_close(alpha, torch.tensor([0.125, 0.25, 0.5, 1.0], dtype=torch.float64))
    x = torch.randn(4, SAMPLES, 1, 1, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = measure(mng, x, seed=6)
    torch.testing.assert_close(out.var(dim=1), torch.ones(4, dtype=torch.float64), rtol=0.02, atol=0)
    assert torch.equal(out[3], x[3].flatten())  # alpha_K = 1, no noise
    # noise is independent across levels
    noise = out - alpha[:, None] * x.flatten(1)
    corr = torch.corrcoef(noise[:3])
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 0.01


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["cumulative", "independent"])
def test_one_level_works(form):
    torch.manual_seed(0)
    mng = MNG(num_levels=1, form=form)
    x, eps = torch.randn(1, 2, 4, 4, 4), torch.randn(1, 2, 4, 4, 4)
    torch.testing.assert_close(mng(x, eps), 0.99 * x + 0.01 * eps)


@pytest.mark.parametrize("x_shape, eps_shape", [
    ((3, 2, 4, 4, 4), (3, 2, 4, 4, 4)),  # wrong number of levels
    ((4, 2, 4, 4, 4), (4, 2, 4, 4, 2)),  # eps shape differs
])
def test_shape_mismatch_raises(x_shape, eps_shape):
    with pytest.raises(ValueError):
        MNG()(torch.zeros(x_shape), torch.zeros(eps_shape))


# ---------------------------------------------------------------------------------------------
# MSG negative control
# ---------------------------------------------------------------------------------------------

def test_msg_form_shows_each_level_at_its_own_scale_without_noise():
    torch.manual_seed(0)
    levels = torch.randn(4, 2, 3, 8, 8)
    out = MNG(form="msg")(levels, torch.randn_like(levels))
    for k, size in enumerate([1, 2, 4, 8]):  # exit 1 at the coarsest scale
        block = 8 // size
        for i in range(size):
            for j in range(size):
                patch = levels[k, :, :, i * block:(i + 1) * block, j * block:(j + 1) * block]
                expected = patch.mean(dim=(-2, -1), keepdim=True).expand_as(patch)
                torch.testing.assert_close(out[k, :, :, i * block:(i + 1) * block, j * block:(j + 1) * block],
                                           expected)
    torch.testing.assert_close(out[-1], levels[-1])


def test_msg_form_makes_a_consistent_pyramid_of_one_real_image():
    """Why MSG is a shortcut: the real pyramid is exactly consistent across scales."""
    real = torch.randn(1, 2, 3, 8, 8).expand(4, 2, 3, 8, 8)
    out = MNG(form="msg")(real, torch.zeros(4, 2, 3, 8, 8))
    for k in range(3):
        torch.testing.assert_close(torch.nn.functional.avg_pool2d(out[k + 1], 2 ** (3 - k)),
                                   torch.nn.functional.avg_pool2d(out[k], 2 ** (3 - k)))


def test_msg_form_needs_divisible_latents_and_has_no_noise_coefficients():
    with pytest.raises(ValueError, match="divisible"):
        MNG(form="msg")(torch.zeros(4, 1, 1, 6, 6), torch.zeros(4, 1, 1, 6, 6))
    with pytest.raises(ValueError, match="no noise"):
        MNG(form="msg").noise_coefficients()
