import pytest
import torch

from gatgan.train.ema import EMA, ema_decay
from gatgan.train.optim import build_optimizer, width_aware_lr


@pytest.mark.parametrize("width, lr", [(384, 4e-4), (768, 2e-4), (1024, 1.5e-4), (1152, 1.3333e-4)])
def test_width_aware_lr_matches_the_papers_values(width, lr):
    assert width_aware_lr(2e-4, width) == pytest.approx(lr, rel=1e-4)


def test_width_aware_lr_can_be_switched_off():
    assert width_aware_lr(2e-4, 1152, enabled=False) == 2e-4


def test_optimizer_is_adam_without_momentum_or_decay():
    model = torch.nn.Linear(3, 3)
    opt = build_optimizer(model, 1e-3, (0.0, 0.99), 1e-8, 0.0)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.0, 0.99), 1e-8, 0.0)


def test_ema_averages_parameters_and_copies_buffers():
    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2,), 0.9 * 1.0 + 0.1 * 2.0))
    assert torch.equal(ema.model.running_mean, model.running_mean)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_decay_is_the_fixed_per_step_decay_without_a_half_life():
    assert ema_decay(step=7, batch=32, fixed_decay=0.99) == 0.99


def test_ema_half_life_halves_the_weight_of_the_past_after_that_many_images():
    decay = ema_decay(step=10_000, batch=32, fixed_decay=0.99, half_life_kimg=10.0)
    assert decay ** (10_000 / 32) == pytest.approx(0.5)


def test_ema_rampup_shortens_the_half_life_early_in_training():
    early = ema_decay(step=100, batch=32, fixed_decay=0.99, half_life_kimg=10.0, rampup=0.05)
    assert early ** (100 * 32 * 0.05 / 32) == pytest.approx(0.5)  # half-life 5% of the 3,200 images seen
    late = ema_decay(step=100_000, batch=32, fixed_decay=0.99, half_life_kimg=10.0, rampup=0.05)
    assert late == ema_decay(step=100_000, batch=32, fixed_decay=0.99, half_life_kimg=10.0)
