"""Relativistic pairing loss (docs/method.md §4.2)."""

import math

import torch

from gatgan.losses.adversarial import discriminator_relativistic_loss, generator_relativistic_loss


def logits():
    torch.manual_seed(0)
    return torch.randn(8, dtype=torch.float64) * 3, torch.randn(8, dtype=torch.float64) * 3


def test_discriminator_loss_is_softplus_of_minus_real_minus_fake_per_pair():
    r, f = logits()
    expected = torch.log1p(torch.exp(-(r - f)))
    torch.testing.assert_close(discriminator_relativistic_loss(r, f), expected)


def test_generator_loss_is_softplus_of_minus_fake_minus_real_per_pair():
    r, f = logits()
    expected = torch.log1p(torch.exp(-(f - r)))
    torch.testing.assert_close(generator_relativistic_loss(r, f), expected)


def test_losses_are_mirror_images():
    r, f = logits()
    torch.testing.assert_close(discriminator_relativistic_loss(r, f), generator_relativistic_loss(f, r))
    # softplus(-a) - softplus(a) = -a
    torch.testing.assert_close(discriminator_relativistic_loss(r, f) - generator_relativistic_loss(r, f), f - r)


def test_equal_logits_give_log_2():
    x = torch.tensor([-5.0, 0.0, 3.0, 100.0])
    torch.testing.assert_close(discriminator_relativistic_loss(x, x), torch.full((4,), math.log(2)))
    torch.testing.assert_close(generator_relativistic_loss(x, x), torch.full((4,), math.log(2)))


def test_losses_are_paired_index_wise_not_over_the_batch():
    r = torch.tensor([2.0, -1.0])
    f = torch.tensor([0.0, 1.0])
    out = discriminator_relativistic_loss(r, f)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([math.log1p(math.exp(-2.0)), math.log1p(math.exp(2.0))]))


def test_discriminator_loss_falls_as_real_outranks_fake_and_is_stable_for_large_gaps():
    gap = torch.tensor([-200.0, -1.0, 0.0, 1.0, 200.0])
    loss = discriminator_relativistic_loss(gap, torch.zeros(5))
    assert torch.isfinite(loss).all()
    assert (loss.diff() < 0).all()
    torch.testing.assert_close(loss[0], torch.tensor(200.0))
    assert loss[-1] < 1e-30
