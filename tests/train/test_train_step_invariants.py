"""Invariants of one `Trainer.train_step` and of `GATObjective.generator_loss` that a plausible
one-line bug would break while every end-to-end test still passes (found by mutation testing):

- the G step sees the D step's z, labels and reals, micro-batch by micro-batch;
- the G step's real and fake branches get independent augmentation and MNG noise draws;
- gradient accumulation averages the micro-batches (the same gradients and logged losses as one
  full batch), it does not sum them;
- D is frozen during the G step, and the D step's fakes come from the trained G, not its EMA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gatgan.losses.augment import DiffAugment
from gatgan.losses.mng import MNG
from gatgan.losses.objective import GATObjective, PenaltySettings
from gatgan.models.discriminator import Discriminator
from gatgan.train.trainer import Trainer

from tinyrun import tiny_config

GLOBAL_BATCH = 12  # tiny_config's global batch


@pytest.fixture
def make_trainer(tiny_data, tmp_path):
    """Builds tiny GAT-Nano/2 trainers (each in its own run directory) and releases them."""
    built = []

    def make(name: str = "run", **overrides: object) -> Trainer:
        trainer = Trainer(tiny_config(tiny_data, tmp_path / name, **overrides), progress=False)
        built.append(trainer)
        return trainer

    yield make
    for trainer in built:
        trainer.close()


def wrap_method(monkeypatch, obj, name: str, before):
    """Replaces obj.name (on the instance) by a wrapper that calls before(*args, **kwargs) first."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        before(*args, **kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)


# ---------------------------------------------------------------------------------------------
# 1. The G step reuses the D step's z (and labels, and reals)
# ---------------------------------------------------------------------------------------------

def test_g_step_feeds_the_generator_the_d_steps_z_and_labels_in_every_micro_batch(make_trainer, monkeypatch):
    """Catches a G step that draws a fresh z (or reuses another micro-batch's z or labels) instead of
    the z the D step's fakes were generated from: docs/method.md §4.1 pairs both steps on the same z."""
    trainer = make_trainer(**{"train.batch_per_device": 6})
    assert trainer.plan.accumulation == 2
    calls = []  # every call of the generator network, in order

    def record(module, args, kwargs):
        z, y = (args + (None, None))[:2]
        z, y = kwargs.get("z", z), kwargs.get("y", y)
        calls.append({"z": z.detach().clone(), "y": y.clone(), "grad": torch.is_grad_enabled()})

    d_inputs, g_inputs = [], []
    wrap_method(monkeypatch, trainer.objective, "discriminator_loss",
                lambda D, real, fake, y, *a, **k: d_inputs.append((real.clone(), y.clone())))
    wrap_method(monkeypatch, trainer.objective, "generator_loss",
                lambda D, real, fake, y, *a, **k: g_inputs.append((real.clone(), y.clone())))
    handle = trainer.G.register_forward_pre_hook(record, with_kwargs=True)
    try:
        trainer.train_step()
    finally:
        handle.remove()

    d_phase = [c for c in calls if not c["grad"]]  # the D step generates its fakes without gradient
    g_phase = [c for c in calls if c["grad"]]
    assert len(d_phase) == len(g_phase) == 2, [c["grad"] for c in calls]
    assert [c["grad"] for c in calls] == [False, False, True, True]  # the whole D step first
    assert not torch.equal(d_phase[0]["z"], d_phase[1]["z"])  # micro-batches have their own z
    for micro, (d, g) in enumerate(zip(d_phase, g_phase)):
        assert torch.equal(g["z"], d["z"]), f"the G step's z differs from the D step's in micro-batch {micro}"
        assert torch.equal(g["y"], d["y"]), f"the G step's labels differ from the D step's in micro-batch {micro}"
    assert len(d_inputs) == len(g_inputs) == 2
    for micro, ((d_real, d_y), (g_real, g_y)) in enumerate(zip(d_inputs, g_inputs)):
        assert torch.equal(g_real, d_real) and torch.equal(g_y, d_y), f"micro-batch {micro}"
        assert torch.equal(g_y, d_phase[micro]["y"])  # the fakes are conditioned on the reals' labels


# ---------------------------------------------------------------------------------------------
# 2. generator_loss: independent draws for the real and the fake branch
# ---------------------------------------------------------------------------------------------

SIZE, CHANNELS, CLASSES, K = 8, 4, 10, 4


class Recorder(nn.Module):
    """Wraps D and keeps a copy of every input it is called with."""

    def __init__(self, D: nn.Module):
        super().__init__()
        self.D = D
        self.calls: list[torch.Tensor] = []

    def forward(self, x, y, **kwargs):
        self.calls.append(x.detach().clone())
        return self.D(x, y, **kwargs)


def tiny_discriminator() -> Discriminator:
    torch.manual_seed(0)
    return Discriminator(input_size=SIZE, channels=CHANNELS, patch_size=2, width=32, depth=2, num_heads=2,
                         num_classes=CLASSES, num_levels=K, cmap_dim=32)


def by_level(stacked: torch.Tensor) -> torch.Tensor:
    """[B, K*C, H, W] -> [K, B, C, H, W]"""
    B, _, H, W = stacked.shape
    return stacked.view(B, K, CHANNELS, H, W).transpose(0, 1)


def generator_loss_inputs(objective: GATObjective, real: torch.Tensor, fake_levels: torch.Tensor):
    """(real branch, fake branch) of D's inputs in one generator_loss call, each [K, B, C, H, W]."""
    recorder = Recorder(tiny_discriminator().requires_grad_(False))
    y = torch.zeros(real.shape[0], dtype=torch.long)
    objective.generator_loss(recorder, real, fake_levels, y, torch.Generator().manual_seed(0))
    real_in, fake_in = torch.cat(recorder.calls).chunk(2)  # real first, as in the D step
    return by_level(real_in), by_level(fake_in)


def test_generator_loss_draws_independent_mng_noise_for_the_real_and_the_fake_branch():
    """Catches a G step whose real and fake branches share one MNG noise draw (the D step has the
    same check, test_main_inputs_are_mng_noise_with_independent_real_and_fake_draws): with zero
    latents and no augmentation D's inputs are pure noise, which must be two independent draws."""
    batch = 16
    objective = GATObjective(DiffAugment(policy=""), MNG(num_levels=K), PenaltySettings(mode="none"))
    real_in, fake_in = generator_loss_inputs(objective, torch.zeros(batch, CHANNELS, SIZE, SIZE),
                                             torch.zeros(K, batch, CHANNELS, SIZE, SIZE))
    t = objective.mng.t.float()
    for noise in (real_in, fake_in):
        torch.testing.assert_close(noise.flatten(1).std(1), t, rtol=0.06, atol=0)
    assert not torch.allclose(real_in, fake_in)
    for k in range(K - 1):  # the last level's noise (std 0.01) is as large as float error would be
        corr = torch.corrcoef(torch.stack([real_in[k].flatten(), fake_in[k].flatten()]))[0, 1].item()
        assert abs(corr) < 0.1, f"level {k}: real and fake noise correlate ({corr:.3f})"


def test_generator_loss_draws_independent_augmentations_for_the_real_and_the_fake_branch():
    """Catches a G step whose real and fake branches share one augmentation draw: with MNG's
    noise-free form ("msg") and a fake identical to the real latent, D's two inputs differ only by
    their augmentation, and they must differ for (nearly) every sample."""
    batch = 16
    objective = GATObjective(DiffAugment(), MNG(num_levels=K, form="msg"), PenaltySettings(mode="none"))
    real = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    real_in, fake_in = generator_loss_inputs(objective, real, objective.real_levels(real).clone())
    unaugmented = by_level(GATObjective(DiffAugment(policy=""), objective.mng, objective.penalty).perturb(
        objective.real_levels(real), objective.augment.sample(batch, SIZE, torch.Generator().manual_seed(0)),
        torch.zeros(K, *real.shape)))
    assert not torch.allclose(real_in, unaugmented)  # the augmentation is really applied
    differs = (real_in - fake_in).transpose(0, 1).flatten(1).abs().amax(1) > 1e-6
    assert differs.float().mean() > 0.75, f"only {int(differs.sum())} of {batch} samples are augmented differently"


# ---------------------------------------------------------------------------------------------
# 3. Gradient accumulation averages the micro-batches
# ---------------------------------------------------------------------------------------------

def test_gradient_accumulation_gives_the_gradients_and_losses_of_one_full_batch(make_trainer, monkeypatch):
    """Catches accumulation that sums the micro-batches' gradients and stats (scale 1 instead of
    1/accumulation): 2 or 3 micro-batches must give the full batch's gradients (as the optimizer
    gets them, before clipping) and logged losses. Adam would hide a constant gradient factor in the
    updated weights, so the gradients themselves are compared.

    The losses' randomness is removed so that it cannot depend on the micro-batching: no
    augmentation, zero MNG noise and the deterministic (exact) penalty, and the same z per sample."""
    deterministic = {"loss.augment.policy": "''", "loss.penalty.mode": "exact"}
    z_table = torch.randn(GLOBAL_BATCH, 64, generator=torch.Generator().manual_seed(7))
    recorded: dict[str, dict] = {}

    original_step = Trainer._optimizer_step

    def optimizer_step(self, model, optimizer, *args, **kwargs):
        recorded[self.config.run.dir]["D" if model is self.D else "G"] = {
            name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        return original_step(self, model, optimizer, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_optimizer_step", optimizer_step)

    def one_step(name: str, per_device: int) -> dict:
        trainer = make_trainer(name, **deterministic, **{"train.batch_per_device": per_device})
        assert trainer.plan.accumulation == GLOBAL_BATCH // per_device
        assert trainer.config.model.z_dim == z_table.shape[1]
        reals, labels = [], []
        original_batches = trainer._micro_batches

        def micro_batches():
            batches, start = [], 0
            for real, y, z, repa_input in original_batches():
                batches.append((real, y, z_table[start:start + len(y)].to(z), repa_input))
                reals.append(real)
                labels.append(y)
                start += len(y)
            return batches

        monkeypatch.setattr(trainer, "_micro_batches", micro_batches)
        objective = trainer.objective
        monkeypatch.setattr(objective, "_draw", lambda like, generator: (
            objective.augment.sample(like.shape[1], like.shape[-1], torch.Generator().manual_seed(0)),
            torch.zeros_like(like)))
        recorded[trainer.config.run.dir] = {}
        stats = {k: float(v) for k, v in trainer.train_step().items()}
        return {"stats": stats, "real": torch.cat(reals), "y": torch.cat(labels),
                "names": {net: {n for n, _ in getattr(trainer, net).named_parameters()} for net in ("D", "G")},
                **recorded[trainer.config.run.dir]}

    full = one_step("full", GLOBAL_BATCH)
    assert set(full["D"]) == full["names"]["D"]  # every D parameter is compared
    for per_device in (6, 4):
        split = one_step(f"split{per_device}", per_device)
        assert torch.equal(split["real"], full["real"]) and torch.equal(split["y"], full["y"])  # same global batch
        assert split["stats"].keys() == full["stats"].keys()
        for key, value in full["stats"].items():
            assert split["stats"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (per_device, key)
        for net in ("D", "G"):
            assert split[net].keys() == full[net].keys()
            # some gradients are ~0 (D's head bias cancels in the relativistic loss): the tolerance
            # is relative to the whole network's gradient, not to each tensor's
            scale = max(grad.abs().max().item() for grad in full[net].values())
            for name, grad in full[net].items():
                torch.testing.assert_close(split[net][name], grad, rtol=1e-3, atol=1e-4 * scale,
                                           msg=lambda m: f"{net}.{name} with {per_device} per micro-batch: {m}")


# ---------------------------------------------------------------------------------------------
# 4. D is frozen in the G step; the D step's fakes come from the trained G
# ---------------------------------------------------------------------------------------------

def test_d_is_frozen_during_the_g_step_and_gets_no_gradient_from_it(make_trainer, monkeypatch):
    """Catches a G step that forgets to freeze D: G's loss would then backpropagate into D's
    parameters, whose gradients would leak into (be added to) the next D step. D's parameters must
    not require gradients while the G loss is computed, keep no gradient, be unchanged by the G
    step, and be trainable again afterwards."""
    trainer = make_trainer(**{"train.batch_per_device": 6})
    requires_grad = []
    wrap_method(monkeypatch, trainer.objective, "generator_loss",
                lambda *a, **k: requires_grad.append([p.requires_grad for p in trainer.D.parameters()]))
    seen = {}
    original_step = Trainer._optimizer_step

    def optimizer_step(self, model, optimizer, *args, **kwargs):
        if model is self.G:
            seen["D grads at the G update"] = [name for name, p in self.D.named_parameters() if p.grad is not None]
            seen["G grads"] = [p.grad is not None for p in self.G.parameters()]
        norm = original_step(self, model, optimizer, *args, **kwargs)
        if model is self.D:
            seen["D after its update"] = copy.deepcopy(self.D.state_dict())
        return norm

    monkeypatch.setattr(Trainer, "_optimizer_step", optimizer_step)
    trainer.train_step()

    assert len(requires_grad) == trainer.plan.accumulation == 2
    for micro, flags in enumerate(requires_grad):
        assert not any(flags), f"micro-batch {micro}: {sum(flags)} D parameters require grad during the G loss"
    assert seen["D grads at the G update"] == []
    assert any(seen["G grads"])  # the G step does train G
    assert [name for name, p in trainer.D.named_parameters() if p.grad is not None] == []
    assert all(p.requires_grad for p in trainer.D.parameters())  # trainable again for the next D step
    after = trainer.D.state_dict()
    for name, value in seen["D after its update"].items():
        assert torch.equal(after[name], value), f"the G step changed D's {name}"


def test_d_step_fakes_come_from_the_trained_generator_not_the_ema(make_trainer, monkeypatch):
    """Catches a D step that generates its fakes with the EMA copy (trainer.ema.model) instead of
    the trained G. The EMA starts as an exact copy of G, so it is perturbed first to tell them apart."""
    trainer = make_trainer(**{"train.batch_per_device": 6})
    noise = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trainer.ema.model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=noise).to(p) * p.abs().mean().clamp_min(1e-3))
    G_before, ema_before = copy.deepcopy(trainer.G).eval(), copy.deepcopy(trainer.ema.model).eval()

    batches = []
    original_batches = trainer._micro_batches

    def micro_batches():
        current = original_batches()
        batches.extend(current)
        return current

    monkeypatch.setattr(trainer, "_micro_batches", micro_batches)
    fakes = []
    wrap_method(monkeypatch, trainer.objective, "discriminator_loss",
                lambda D, real, fake, *a, **k: fakes.append(fake.detach().clone()))
    ema_calls = []
    handle = trainer.ema.model.register_forward_pre_hook(lambda module, args: ema_calls.append(1))
    try:
        trainer.train_step()
    finally:
        handle.remove()

    assert ema_calls == [], "the EMA generator was run during a training step"
    assert len(fakes) == len(batches) == 2
    with torch.no_grad():
        for micro, ((real, y, z, _), fake) in enumerate(zip(batches, fakes)):
            from_G, from_ema = G_before(z, y, all_exits=True), ema_before(z, y, all_exits=True)
            assert (from_G - from_ema).abs().max() > 1e-2  # the perturbation makes them distinguishable
            torch.testing.assert_close(fake, from_G, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"micro-batch {micro}: the D step's fakes are not G's: {m}")


# ---------------------------------------------------------------------------------------------
# 5. One generator forward per iteration is the two-pass step
# ---------------------------------------------------------------------------------------------

def test_a_single_generator_pass_trains_exactly_like_two_passes(make_trainer):
    """The D step's fakes taken (detached) from the G step's forward: same losses, same weights."""
    single = make_trainer("single", **{"train.single_generator_pass": True})
    double = make_trainer("double")
    for _ in range(3):
        a, b = single.train_step(), double.train_step()
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    for (name, p), q in zip(single.G.named_parameters(), double.G.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(single.G.w_avg, double.G.w_avg)


def test_a_single_generator_pass_runs_the_generator_once_and_feeds_d_its_output(make_trainer, monkeypatch):
    trainer = make_trainer(**{"train.single_generator_pass": True})
    outputs, d_fakes = [], []
    handle = trainer.G.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    wrap_method(monkeypatch, trainer.objective, "discriminator_loss",
                lambda D, real, fake, y, *a, **k: d_fakes.append(fake.clone()))
    try:
        trainer.train_step()
    finally:
        handle.remove()
    assert len(outputs) == 1 and len(d_fakes) == 1
    assert torch.equal(d_fakes[0], outputs[0].float())
