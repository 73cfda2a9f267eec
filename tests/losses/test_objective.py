"""The GAT objectives on a tiny generator and discriminator (docs/method.md §4)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatgan.losses.augment import DiffAugment
from gatgan.losses.mng import MNG
from gatgan.losses.objective import GATObjective, PenaltySettings
from gatgan.models.discriminator import Discriminator
from gatgan.models.generator import Generator

SIZE, CHANNELS, CLASSES, K = 8, 4, 10, 4
SIGNAL = torch.tensor([0.115, 0.24, 0.49, 0.99])  # 1 - t_k, docs/method.md §4.5
T = 1 - SIGNAL
APPROX_KEYS = {"loss/D_adv", "D/real_logit", "D/fake_logit", "loss/R1", "loss/R2", "loss/D"}


def make_models(seed: int = 0):
    torch.manual_seed(seed)
    G = Generator(input_size=SIZE, channels=CHANNELS, patch_size=2, width=32, depth=4, num_heads=2,
                  num_classes=CLASSES, z_dim=16, num_exits=K)
    D = Discriminator(input_size=SIZE, channels=CHANNELS, patch_size=2, width=32, depth=2, num_heads=2,
                      num_classes=CLASSES, num_levels=K, cmap_dim=32)
    return G, D


def make_objective(mode: str = "approx", sigma: float = 0.01, policy: str = "color,translation,cutout,flip"):
    return GATObjective(DiffAugment(policy=policy), MNG(num_levels=K), PenaltySettings(mode=mode, sigma=sigma))


def make_batch(G: Generator, batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    z = torch.randn(batch, 16, generator=g)
    with torch.no_grad():
        fake_levels = G(z, y, all_exits=True)
    return real, fake_levels, y, z


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder(nn.Module):
    """Wraps D and keeps a copy of every input it is called with."""

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, y):
        self.calls.append((x.detach().clone(), y.clone()))
        return self.D(x, y)


def by_level(stacked: torch.Tensor) -> torch.Tensor:
    """[B, K*C, H, W] -> [K, B, C, H, W]"""
    B, _, H, W = stacked.shape
    return stacked.view(B, K, CHANNELS, H, W).transpose(0, 1)


# ---------------------------------------------------------------------------------------------
# Discriminator loss: composition
# ---------------------------------------------------------------------------------------------

def test_approx_discriminator_loss_is_adv_plus_005_r1_plus_005_r2():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    loss, stats = make_objective().discriminator_loss(D, real, fake_levels, y, rng())
    assert set(stats) == APPROX_KEYS
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())
    expected = stats["loss/D_adv"] + 0.05 * stats["loss/R1"] + 0.05 * stats["loss/R2"]
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(stats["loss/D"], loss.detach())
    assert stats["loss/R1"] > 0 and stats["loss/R2"] > 0


def test_penalty_weights_are_half_of_gamma_for_each_term():
    G, D = make_models()
    with torch.no_grad():
        D.head.weight.mul_(300.0)  # large input gradients, so the penalty terms dominate the loss
    real, fake_levels, y, _ = make_batch(G)
    assert (PenaltySettings().gamma_r1, PenaltySettings().gamma_r2, PenaltySettings().sigma) == (0.1, 0.1, 0.01)
    for gamma_r1, gamma_r2 in [(0.1, 0.1), (0.2, 0.6)]:
        objective = GATObjective(DiffAugment(), MNG(num_levels=K),
                                 PenaltySettings(mode="approx", gamma_r1=gamma_r1, gamma_r2=gamma_r2))
        loss, stats = objective.discriminator_loss(D, real, fake_levels, y, rng())
        assert stats["loss/R1"] > 1 and stats["loss/R2"] > 1
        penalty = loss.detach() - stats["loss/D_adv"]
        expected = gamma_r1 / 2 * stats["loss/R1"] + gamma_r2 / 2 * stats["loss/R2"]
        torch.testing.assert_close(penalty, expected, rtol=1e-4, atol=1e-4)


def test_augmentation_is_applied_before_mng_noise():
    """Cutout and translation zero-fill the latent, and the noise comes after: D never sees exact
    zeros, and every level keeps its noise std t_k."""
    G, D = make_models()
    batch = 16
    real = torch.zeros(batch, CHANNELS, SIZE, SIZE)
    fake_levels = torch.zeros(K, batch, CHANNELS, SIZE, SIZE)
    recorder = Recorder(D)
    make_objective(mode="none", policy="translation,cutout").discriminator_loss(
        recorder, real, fake_levels, torch.zeros(batch, dtype=torch.long), rng())
    x = recorder.calls[0][0]
    assert (x != 0).all()
    for part in x.chunk(2):
        torch.testing.assert_close(by_level(part).flatten(1).std(1), T, rtol=0.06, atol=0)


def test_approx_mode_runs_one_forward_over_real_fake_and_both_perturbed_copies():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G, batch=4)
    recorder = Recorder(D)
    _, stats = make_objective().discriminator_loss(recorder, real, fake_levels, y, rng())
    assert len(recorder.calls) == 1
    x, labels = recorder.calls[0]
    assert x.shape == (4 * 4, K * CHANNELS, SIZE, SIZE)
    assert torch.equal(labels, y.repeat(4))
    with torch.no_grad():
        real_main, fake_main, real_pert, fake_pert = D(x, labels).chunk(4)
    torch.testing.assert_close(stats["loss/D_adv"], F.softplus(-(real_main - fake_main)).mean())
    torch.testing.assert_close(stats["loss/R1"], ((real_main - real_pert) / 0.01).square().mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["loss/R2"], ((fake_main - fake_pert) / 0.01).square().mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["D/real_logit"], real_main.mean())
    torch.testing.assert_close(stats["D/fake_logit"], fake_main.mean())


def test_main_inputs_are_mng_noise_with_independent_real_and_fake_draws():
    """With zero latents and no augmentation, D's inputs are pure MNG noise: level-major channels
    with std t_k, real copies correlated like the cumulative chain, real and fake draws distinct."""
    G, D = make_models()
    batch = 16
    real = torch.zeros(batch, CHANNELS, SIZE, SIZE)
    fake_levels = torch.zeros(K, batch, CHANNELS, SIZE, SIZE)
    y = torch.zeros(batch, dtype=torch.long)
    recorder = Recorder(D)
    make_objective(mode="none", policy="").discriminator_loss(recorder, real, fake_levels, y, rng())
    real_in, fake_in = (by_level(part) for part in recorder.calls[0][0].chunk(2))
    for noise in (real_in, fake_in):
        torch.testing.assert_close(noise.flatten(1).std(1), T, rtol=0.06, atol=0)
    assert not torch.allclose(real_in, fake_in)
    corr = torch.corrcoef(real_in.flatten(1))
    assert corr[0, 1].item() == pytest.approx(0.412, abs=0.06)
    assert corr[1, 2].item() == pytest.approx(0.329, abs=0.06)


def test_approx_penalty_reuses_augmentation_and_mng_noise_of_the_main_pass():
    """perturbed - main = signal_k * A(delta) with the SAME augmentation A and the noise cancelling.
    R1 perturbs the clean real latent once (identical across levels after dividing by the signal
    coefficient); R2 perturbs each fake level independently."""
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G, batch=8)
    sigma = 0.01
    recorder = Recorder(D)
    make_objective(sigma=sigma).discriminator_loss(recorder, real, fake_levels, y, rng(3))
    real_main, fake_main, real_pert, fake_pert = (by_level(p) for p in recorder.calls[0][0].chunk(4))
    signal = SIGNAL.view(K, 1, 1, 1, 1)
    real_delta = (real_pert - real_main) / signal
    fake_delta = (fake_pert - fake_main) / signal
    # O(sigma), not O(t_k): the MNG noise and the augmentation were reused exactly
    assert real_delta.abs().max() < 20 * sigma and fake_delta.abs().max() < 20 * sigma
    assert real_delta.abs().max() > 0.5 * sigma and fake_delta.abs().max() > 0.5 * sigma
    for k in range(1, K):
        torch.testing.assert_close(real_delta[k], real_delta[0], rtol=0, atol=2e-5)
        assert (fake_delta[k] - fake_delta[0]).abs().max() > 0.5 * sigma


def test_penalty_perturbation_has_std_sigma_in_latent_space_before_mng():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G, batch=16)
    sigma = 0.01
    recorder = Recorder(D)
    make_objective(sigma=sigma, policy="").discriminator_loss(recorder, real, fake_levels, y, rng(4))
    real_main, fake_main, real_pert, fake_pert = (by_level(p) for p in recorder.calls[0][0].chunk(4))
    signal = SIGNAL.view(K, 1, 1, 1, 1)
    assert ((real_pert - real_main) / signal).std().item() == pytest.approx(sigma, rel=0.06)
    assert ((fake_pert - fake_main) / signal).std().item() == pytest.approx(sigma, rel=0.06)


def test_none_mode_has_no_penalty_terms():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    recorder = Recorder(D)
    loss, stats = make_objective(mode="none").discriminator_loss(recorder, real, fake_levels, y, rng())
    assert "loss/R1" not in stats and "loss/R2" not in stats
    assert set(stats) == APPROX_KEYS - {"loss/R1", "loss/R2"}
    torch.testing.assert_close(loss.detach(), stats["loss/D_adv"])
    assert recorder.calls[0][0].shape[0] == 2 * 4


def test_exact_mode_gives_finite_penalties():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    loss, stats = make_objective(mode="exact").discriminator_loss(D, real, fake_levels, y, rng())
    assert set(stats) == APPROX_KEYS
    for key in ("loss/R1", "loss/R2"):
        assert torch.isfinite(stats[key]) and stats[key] > 0
    torch.testing.assert_close(loss.detach(), stats["loss/D_adv"] + 0.05 * (stats["loss/R1"] + stats["loss/R2"]))
    assert loss.requires_grad


def test_exact_mode_loss_can_be_backpropagated():
    """The exact penalty needs double backprop through D's attention, which the fused SDPA
    kernels (CPU flash, CUDA flash / memory-efficient) do not implement."""
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    loss, _ = make_objective(mode="exact").discriminator_loss(D, real, fake_levels, y, rng())
    loss.backward()  # double backprop through D
    grads = [p.grad for p in D.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not real.requires_grad and real.grad is None  # the caller's tensors are left alone


def test_approx_and_exact_penalties_agree_in_expectation():
    """E[((D(x) - D(x + sigma eps)) / sigma)^2] = ||grad D||^2: averaged over batches and seeds the
    approximated R1/R2 match the autograd ones (the main pass is the same given the seed)."""
    G, D = make_models()
    totals = {"approx": torch.zeros(2), "exact": torch.zeros(2)}
    for seed in range(10):  # 640 samples: sampling error of the ratio ~6%
        real, fake_levels, y, _ = make_batch(G, batch=64, seed=seed)
        for mode in totals:
            _, stats = make_objective(mode=mode, sigma=1e-3).discriminator_loss(D, real, fake_levels, y, rng(seed))
            totals[mode] += torch.stack([stats["loss/R1"], stats["loss/R2"]])
    ratio = totals["approx"] / totals["exact"]
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), ratio


# ---------------------------------------------------------------------------------------------
# Discriminator loss: gradients and determinism
# ---------------------------------------------------------------------------------------------

def test_discriminator_loss_trains_every_discriminator_parameter_and_not_the_generator():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    loss, _ = make_objective().discriminator_loss(D, real, fake_levels, y, rng())
    loss.backward()
    for name, p in D.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in G.parameters())


@pytest.mark.parametrize("mode", ["approx", "exact", "none"])
def test_discriminator_loss_is_deterministic_given_the_generator_seed(mode):
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    objective = make_objective(mode=mode)
    torch.manual_seed(100)
    loss_a, stats_a = objective.discriminator_loss(D, real, fake_levels, y, rng(5))
    torch.manual_seed(200)  # the global RNG must not matter
    loss_b, stats_b = objective.discriminator_loss(D, real, fake_levels, y, rng(5))
    loss_c, _ = objective.discriminator_loss(D, real, fake_levels, y, rng(6))
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(stats_a[k], stats_b[k]) for k in stats_a)
    assert not torch.equal(loss_a, loss_c)


def test_unknown_penalty_mode_raises():
    with pytest.raises(ValueError):
        PenaltySettings(mode="r1")


def test_real_levels_are_k_copies_of_the_real_latent():
    real = torch.randn(3, CHANNELS, SIZE, SIZE)
    levels = make_objective().real_levels(real)
    assert levels.shape == (K, 3, CHANNELS, SIZE, SIZE)
    for k in range(K):
        assert torch.equal(levels[k], real)


# ---------------------------------------------------------------------------------------------
# Generator loss
# ---------------------------------------------------------------------------------------------

def test_generator_loss_flows_to_every_exit_of_the_generator_with_d_frozen():
    G, D = make_models()
    real, _, y, z = make_batch(G)
    D.requires_grad_(False)
    fake_levels = G(z, y, all_exits=True)
    real = real.requires_grad_(True)
    recorder = Recorder(D)
    loss, stats = make_objective().generator_loss(recorder, real, fake_levels, y, rng())
    assert set(stats) == {"loss/G", "loss/G_adv"}
    torch.testing.assert_close(stats["loss/G"], loss.detach())
    loss.backward()
    assert all(p.grad is None for p in D.parameters())
    assert real.grad is None  # real logits are computed without gradient
    for k, exit_layer in enumerate(G.exits):
        assert exit_layer.linear.weight.grad.abs().sum() > 0, f"exit {k}"
    assert G.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert G.mapping.fc1.weight.grad.abs().sum() > 0
    # the loss is softplus(-(D(fake) - D(real))) over the recorded inputs: real first, then fake
    assert len(recorder.calls) == 2
    with torch.no_grad():
        real_logits = D(*recorder.calls[0])
        fake_logits = D(*recorder.calls[1])
    torch.testing.assert_close(loss.detach(), F.softplus(real_logits - fake_logits).mean())


def test_generator_loss_gradient_reaches_each_fake_level():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    fake_levels = fake_levels.clone().requires_grad_(True)
    loss, _ = make_objective().generator_loss(D, real, fake_levels, y, rng())
    (grad,) = torch.autograd.grad(loss, fake_levels)
    assert all(grad[k].abs().sum() > 0 for k in range(K))
    assert torch.isfinite(grad).all()


def test_generator_loss_is_deterministic_given_the_generator_seed():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    objective = make_objective()
    a, _ = objective.generator_loss(D, real, fake_levels, y, rng(9))
    b, _ = objective.generator_loss(D, real, fake_levels, y, rng(9))
    c, _ = objective.generator_loss(D, real, fake_levels, y, rng(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lazy_penalty_skips_the_perturbed_copies_and_weights_the_penalty_steps_by_the_interval():
    G, D = make_models()
    real, fake_levels, y, _ = make_batch(G)
    lazy = GATObjective(DiffAugment(), MNG(num_levels=K), PenaltySettings(mode="approx", every=4))
    recorder = Recorder(D)
    loss, stats = lazy.discriminator_loss(recorder, real, fake_levels, y, rng(), penalize=False)
    assert "loss/R1" not in stats and len(recorder.calls[0][0]) == 2 * len(real)  # real and fake only
    torch.testing.assert_close(loss.detach(), stats["loss/D_adv"])
    loss, stats = lazy.discriminator_loss(D, real, fake_levels, y, rng())
    expected = stats["loss/D_adv"] + 4 * 0.05 * stats["loss/R1"] + 4 * 0.05 * stats["loss/R2"]
    torch.testing.assert_close(loss.detach(), expected)
    with pytest.raises(ValueError, match="every"):
        PenaltySettings(every=0)
