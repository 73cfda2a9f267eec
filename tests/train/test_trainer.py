import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gatgan.train.checkpoint import latest_checkpoint, load_network
from gatgan.train.trainer import BatchPlan, Trainer, check_resumable, train

from tinyrun import TINY_LEVELS, tiny_config


def read_stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_batch_plan_splits_the_global_batch_into_devices_and_accumulation():
    assert BatchPlan.resolve(512, 0, 4) == BatchPlan(512, 128, 1)
    assert BatchPlan.resolve(512, 32, 4) == BatchPlan(512, 32, 4)
    with pytest.raises(ValueError, match="multiple"):
        BatchPlan.resolve(100, 32, 2)


def test_a_lazy_penalty_is_logged_on_its_own_steps_with_its_own_average(tiny_data, tmp_path):
    every_step = tiny_config(tiny_data, tmp_path / "a", **{"loss.penalty.every": 2})
    train(every_step, progress=False)
    per_step = read_stats(tmp_path / "a" / "tiny")
    assert ["loss/R1" in s for s in per_step] == [True, False] * 3  # steps 1..6; the penalty on steps 1, 3, 5
    train(tiny_config(tiny_data, tmp_path / "b", **{"loss.penalty.every": 2, "train.log_every": 2}), progress=False)
    windows = read_stats(tmp_path / "b" / "tiny")
    # a 2-step window holds one penalty step: its R1 is that step's value, not diluted by the other
    assert [s["loss/R1"] for s in windows] == pytest.approx([s["loss/R1"] for s in per_step[::2]], rel=1e-5)


def test_a_short_run_writes_stats_samples_and_checkpoints(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    trainer = train(config, progress=False)
    run_dir = tmp_path / "tiny"
    stats = read_stats(run_dir)
    assert [s["step"] for s in stats] == list(range(1, 7))
    assert all(math.isfinite(s["loss/D"]) and math.isfinite(s["loss/G"]) for s in stats)
    assert {"loss/R1", "loss/R2", "grad_norm/D", "grad_norm/G"} <= set(stats[0])
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["00000003.png", "00000006.png"]
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.name == "00000006"
    assert {p.name for p in checkpoint.iterdir()} == {
        "generator.safetensors", "discriminator.safetensors", "generator_ema.safetensors", "state.pt", "config.yaml",
        "data.json", "checksums.json"}
    ema = load_network(checkpoint, "generator_ema")
    assert torch.equal(ema["w_avg"], trainer.G.w_avg)  # buffers are copied into the EMA, not averaged
    assert trainer.G.w_avg.abs().sum() > 0


def test_resume_continues_with_the_identical_loss_sequence(tiny_data, tmp_path):
    straight = tmp_path / "straight"
    train(tiny_config(tiny_data, straight, **{"train.kimg": 0.096}), progress=False)
    interrupted = tmp_path / "interrupted"
    train(tiny_config(tiny_data, interrupted, **{"train.kimg": 0.048}), progress=False)  # stops at step 4
    with open(interrupted / "tiny" / "stats.jsonl", "a") as f:  # a line written after the last checkpoint
        f.write(json.dumps({"step": 5, "loss/D": -1.0}) + "\n")
    resumed = Trainer(tiny_config(tiny_data, interrupted, **{"train.kimg": 0.096}), progress=False)
    assert resumed.step == 3 * 4 // 3  # the latest checkpoint (every 3 steps, plus the final step 4)
    resumed.train()
    expected, got = read_stats(straight / "tiny"), read_stats(interrupted / "tiny")
    assert [s["step"] for s in got] == list(range(1, 9))
    for a, b in zip(expected, got):
        for key in ("loss/D", "loss/G", "loss/R1", "loss/R2", "grad_norm/G"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
    final_a = load_network(latest_checkpoint(straight / "tiny"), "generator_ema")
    final_b = load_network(latest_checkpoint(interrupted / "tiny"), "generator_ema")
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=1e-5, atol=1e-6)


def test_resuming_with_different_settings_is_refused(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path, **{"train.kimg": 0.012}), progress=False)
    check_resumable(tiny_config(tiny_data, tmp_path), tiny_config(tiny_data, tmp_path, **{"train.kimg": 9}))
    with pytest.raises(ValueError, match="optim.base_lr"):
        Trainer(tiny_config(tiny_data, tmp_path, **{"optim.base_lr": 1e-3}), progress=False)


def test_every_eval_setting_may_change_on_resume(tiny_data, tmp_path):
    saved = tiny_config(tiny_data, tmp_path)
    check_resumable(saved, tiny_config(tiny_data, tmp_path, **{"eval.every": 3, "eval.metric": "domain",
                                                               "eval.samples": 64, "eval.inception": "/w.pth"}))
    with pytest.raises(ValueError, match=r"eval\.\*"):  # the message lists the section as changeable
        check_resumable(saved, tiny_config(tiny_data, tmp_path, **{"loss.mng.num_levels": 1}))


def test_width_aware_learning_rates_are_applied_per_network(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path, **{"model.discriminator": "GAT-Micro/2"}), progress=False)
    assert trainer.lr_G == pytest.approx(2e-4 * 768 / 64)
    assert trainer.lr_D == pytest.approx(2e-4 * 768 / 128)
    assert trainer.opt_D.param_groups[0]["lr"] == pytest.approx(trainer.lr_D)
    assert trainer.opt_G.param_groups[0]["betas"] == (0.0, 0.99)


def test_gradient_accumulation_reads_the_same_global_batch(tiny_data, tmp_path, monkeypatch):
    split = Trainer(tiny_config(tiny_data, tmp_path, **{"train.batch_per_device": 4}), progress=False)
    assert split.plan.accumulation == 3
    seen = []
    original = split.data.labels
    monkeypatch.setattr(split.data, "labels", lambda indices: seen.append(indices) or original(indices))
    stats = split.train_step()
    assert [len(i) for i in seen] == [4, 4, 4]
    assert np.array_equal(np.concatenate(seen), split.schedule.global_indices(0).numpy())
    assert math.isfinite(stats["loss/D"].item()) and math.isfinite(stats["loss/G"].item())


@pytest.mark.slow
def test_training_learns_the_class_conditional_intensity(tiny_data, tmp_path):
    """Each tiny class has its own brightness; after a short run the EMA generator must order its
    per-class outputs like the data does. An untrained or broken GAN does not."""
    config = tiny_config(tiny_data, tmp_path, **{"train.kimg": 4.8, "train.global_batch": 32,
                                                 "train.log_every": 50, "train.sample_every": 1000,
                                                 "train.checkpoint_every": 1000, "optim.ema_decay": 0.99})
    trainer = train(config, progress=False)
    G = trainer.ema.model
    z = torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(1))
    means = []
    with torch.no_grad():
        for c in range(len(TINY_LEVELS)):
            latents = G(z, torch.full((64,), c))
            means.append(trainer.data.scaling.denormalize(latents).mean().item())
    targets = (np.asarray(TINY_LEVELS) / 127.5 - 1).tolist()
    assert means == sorted(means), (means, targets)
    assert max(abs(m - t) for m, t in zip(means, targets)) < 0.35, (means, targets)
