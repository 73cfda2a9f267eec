"""optim.lr_decay: the schedule's shape, the rates the optimisers really step with, and that a
resume or a divergence roll-back keeps the schedule (and the back-off) where it was."""

import math

import numpy as np
import pytest
import torch

from gatgan.train.checkpoint import latest_checkpoint, load_network, load_state
from gatgan.train.optim import lr_factor
from gatgan.train.trainer import Trainer

from tinyrun import poison, tiny_config

DECAY = {"optim.lr_decay": "linear", "optim.lr_decay_start": 0.25, "optim.lr_final": 0.2}  # 8 steps of 12 images
BATCH = 12


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_the_factor_is_one_until_the_start_then_falls_to_the_final_value(decay):
    assert [lr_factor(k, 100, decay, 0.5, 0.1) for k in (0, 25, 50)] == [1.0, 1.0, 1.0]
    assert lr_factor(100, 100, decay, 0.5, 0.1) == pytest.approx(0.1)
    assert lr_factor(400, 100, decay, 0.5, 0.1) == pytest.approx(0.1)  # flat past the budget
    assert lr_factor(75, 100, decay, 0.5, 0.1) == pytest.approx(0.55)  # both shapes are halfway at the midpoint
    values = [lr_factor(k, 100, decay, 0.5, 0.1) for k in range(50, 101)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_cosine_and_linear_differ_between_start_and_end():
    assert lr_factor(60, 100, "cosine", 0.5, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(60, 100, "linear", 0.5, 0.0) == pytest.approx(0.8)
    assert lr_factor(60, 100, "none", 0.5, 0.0) == 1.0


def test_an_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="lr decay must be one of"):
        lr_factor(1, 2, "step")
    with pytest.raises(ValueError, match="optim.lr_final"):
        tiny_config(".", ".", **{"optim.lr_final": 0})


def record_rates(trainer: Trainer) -> list[tuple[float, float]]:
    """(G's lr, D's lr) at every optimiser step of G (the last of each training step)."""
    rates, original = [], trainer.opt_G.step

    def step(*args, **kwargs):
        rates.append((trainer.opt_G.param_groups[0]["lr"], trainer.opt_D.param_groups[0]["lr"]))
        return original(*args, **kwargs)

    trainer.opt_G.step = step
    return rates


def expected_rates(trainer: Trainer, steps: range, scale: float = 1.0) -> list[tuple[float, float]]:
    factors = [scale * lr_factor(s * BATCH / 1000, 0.096, "linear", 0.25, 0.2) for s in steps]
    return [(trainer.lr_G * f, trainer.lr_D * f) for f in factors]


def test_the_optimisers_step_with_the_scheduled_rates(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path, **{"train.kimg": 0.096, **DECAY}), progress=False)
    rates = record_rates(trainer)
    trainer.train()
    trainer.close()
    np.testing.assert_allclose(rates, expected_rates(trainer, range(8)), rtol=1e-12)
    assert rates[0] == pytest.approx((trainer.lr_G, trainer.lr_D)) and rates[-1][0] < 0.34 * trainer.lr_G  # (1 - 5/6) of the way from 1 to 0.2


def test_a_resumed_run_continues_the_schedule_exactly(tiny_data, tmp_path):
    config = {"train.kimg": 0.096, **DECAY}
    straight = Trainer(tiny_config(tiny_data, tmp_path / "straight", **config), progress=False)
    straight.train()
    straight.close()
    interrupted = Trainer(tiny_config(tiny_data, tmp_path / "interrupted", **config), progress=False)
    for _ in range(3):
        interrupted.train_step()
    interrupted.save()
    interrupted.close()
    interrupted.release_lock()
    resumed = Trainer(tiny_config(tiny_data, tmp_path / "interrupted", **config), progress=False)
    assert resumed.step == 3
    rates = record_rates(resumed)
    resumed.train()
    resumed.close()
    np.testing.assert_allclose(rates, expected_rates(resumed, range(3, 8)), rtol=1e-12)
    a = load_network(latest_checkpoint(tmp_path / "straight" / "tiny"), "generator_ema")
    b = load_network(latest_checkpoint(tmp_path / "interrupted" / "tiny"), "generator_ema")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_a_roll_back_lowers_the_scheduled_rates_and_the_checkpoint_keeps_the_back_off(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path, **{"train.kimg": 0.096, **DECAY}), progress=False)
    fired = poison(trainer, {5})
    rates = record_rates(trainer)
    trainer.train()
    trainer.close()
    assert fired == [5]
    # steps 1-4 (the 5th is undone), then back at the checkpoint of step 3: steps 4-8 at half the rates
    np.testing.assert_allclose(rates, expected_rates(trainer, range(4)) + expected_rates(trainer, range(3, 8), 0.5),
                               rtol=1e-12)
    assert load_state(latest_checkpoint(tmp_path / "tiny"))["lr_scale"] == 0.5


def test_a_checkpoint_from_before_the_decay_keeps_the_back_off_its_optimisers_held(tiny_data, tmp_path):
    """Such checkpoints have no `lr_scale`: an earlier roll-back lives only in the optimisers' rates."""
    old = Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    for _ in range(3):
        old.train_step()
    old.save()
    old.close()
    old.release_lock()
    checkpoint = latest_checkpoint(tmp_path / "tiny")
    state = load_state(checkpoint)
    del state["lr_scale"]
    for name in ("opt_G", "opt_D"):
        for group in state[name]["param_groups"]:
            group["lr"] *= 0.5
    torch.save(state, checkpoint / "state.pt")
    (checkpoint / "checksums.json").unlink()  # the layout of that time
    resumed = Trainer(tiny_config(tiny_data, tmp_path, **{"train.kimg": 0.06}), progress=False)
    rates = record_rates(resumed)
    resumed.train()
    resumed.close()
    assert resumed.step == 5 and resumed._lr_scale == pytest.approx(0.5)
    np.testing.assert_allclose(rates, [(0.5 * resumed.lr_G, 0.5 * resumed.lr_D)] * 2, rtol=1e-12)
