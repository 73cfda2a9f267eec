"""REPA in the training loop: the loss is logged, the alignment is monitored (also with REPA off),
G can be aligned too, and resuming stays exact."""

import json

import numpy as np
import pytest
import torch

from gatgan.data.latents import LatentDataset
from gatgan.encoders import load_teacher
from gatgan.sample import Sampler
from gatgan.train.trainer import Trainer, train
from tinyrun import tiny_config


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "tiny" / "stats.jsonl").read_text().splitlines()]


def test_repa_on_logs_its_loss_and_the_alignment(tiny_data_with_teacher, tmp_path):
    config = tiny_config(tiny_data_with_teacher, tmp_path, **{"loss.repa.teacher": "data", "train.align_every": 3})
    trainer = train(config, progress=False)
    assert trainer.D.projector is not None and trainer.G.projector is None
    records = _records(tmp_path)
    assert all(0 < r["loss/REPA"] < 4 for r in records)
    aligned = [r for r in records if "align/cknna_real" in r]
    assert [r["step"] for r in aligned] == [3, 6]
    for r in aligned:
        for key in ("align/cknna_real", "align/cknna_fake", "align/cka_real", "align/cka_fake"):
            assert -1 <= r[key] <= 1, key


def test_weight_zero_keeps_the_teacher_for_monitoring_only(tiny_data_with_teacher, tmp_path):
    config = tiny_config(tiny_data_with_teacher, tmp_path, **{"loss.repa.teacher": "data",
                                                               "loss.repa.weight": 0.0, "train.align_every": 3})
    trainer = train(config, progress=False)
    assert trainer.D.projector is None and trainer.objective.repa is None
    records = _records(tmp_path)
    assert not any("loss/REPA" in r for r in records)
    assert sum("align/cknna_real" in r for r in records) == 2


def test_aligning_the_generator_too_trains_its_projector_and_samples_still_load(tiny_data_with_teacher, tmp_path):
    config = tiny_config(tiny_data_with_teacher, tmp_path, **{"loss.repa.teacher": "data",
                                                               "loss.repa.align_generator": True})
    trainer = Trainer(config, progress=False)
    before = [p.detach().clone() for p in trainer.G.projector.parameters()]
    stats = trainer.train_step()
    assert "loss/REPA_G" in stats and "loss/REPA" in stats
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.G.projector.parameters()))
    trainer.save()
    trainer.close()
    sampler = Sampler.from_run(tmp_path / "tiny")
    assert sampler.images([0, 1], [0, 2]).shape == (2, 8, 8, 1)


@pytest.mark.slow
def test_resuming_a_repa_run_repeats_the_uninterrupted_losses(tiny_data_with_teacher, tmp_path):
    extra = {"loss.repa.teacher": "data", "train.log_every": 1}
    whole = train(tiny_config(tiny_data_with_teacher, tmp_path / "a", **extra), progress=False)
    whole.close()
    first = train(tiny_config(tiny_data_with_teacher, tmp_path / "b", **extra, **{"train.kimg": 0.036}),
                  progress=False)
    first.close()
    resumed = train(tiny_config(tiny_data_with_teacher, tmp_path / "b", **extra), progress=False)
    resumed.close()
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for key in ("loss/D", "loss/G", "loss/REPA"):
        assert [r[key] for r in a] == pytest.approx([r[key] for r in b], rel=1e-6), key


def test_a_teacher_needs_the_images(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no teacher"):
        Trainer(tiny_config(tiny_data, tmp_path, **{"loss.repa.teacher": "data"}), progress=False)


def test_stored_teacher_features_are_the_teachers_features_of_each_image_and_its_mirror(tiny_data_with_teacher):
    data = LatentDataset(tiny_data_with_teacher)
    teacher = load_teacher("data", tiny_data_with_teacher)
    indices = np.array([0, 5, 9])
    images = data.images(indices)
    as_read, mirrored = data.teacher_features(indices)
    expected, expected_mirrored = teacher(images), teacher(images.flip(-1))
    torch.testing.assert_close(as_read.cls.float(), expected.cls, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(mirrored.patches.float(), expected_mirrored.patches, rtol=2e-3, atol=2e-3)
    flip = np.array([True, False, True])  # read flipped: the two orientations swap where flipped
    swapped, unswapped = data.teacher_features(indices, flip)
    assert torch.equal(swapped.cls[0], mirrored.cls[0]) and torch.equal(unswapped.cls[0], as_read.cls[0])
    assert torch.equal(swapped.cls[1], as_read.cls[1])


def test_precomputed_features_train_like_the_online_teacher(tiny_data_with_teacher, tmp_path):
    """Without translation the stored features are exact (up to float16): the REPA losses agree."""
    extra = {"loss.repa.teacher": "data", "loss.augment.policy": "flip", "train.kimg": 0.036}
    online = train(tiny_config(tiny_data_with_teacher, tmp_path / "a", **extra), progress=False)
    online.close()
    stored = train(tiny_config(tiny_data_with_teacher, tmp_path / "b", **extra, **{"loss.repa.precomputed": True}),
                   progress=False)
    stored.close()
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["loss/REPA"] for r in a] == pytest.approx([r["loss/REPA"] for r in b], rel=1e-2)
    with pytest.raises(ValueError, match="translation"):
        Trainer(tiny_config(tiny_data_with_teacher, tmp_path / "c", **{
            "loss.repa.teacher": "data", "loss.repa.precomputed": True}), progress=False)
