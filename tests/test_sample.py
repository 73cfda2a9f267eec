import re
import shutil

import numpy as np
import pytest
import torch
from tinyrun import TINY_CLASSES, tiny_config

from gatgan.data.card import DATA_CARD
from gatgan.sample import Sampler, class_balanced_labels, seeded_normal, write_npz
from gatgan.train.checkpoint import (
    BEST, CHECKPOINT_DIR, MANIFEST, DamagedCheckpointError, load_network, write_checkpoint_dir)
from gatgan.train.trainer import train


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    train(tiny_config(tiny_data, run_dir), progress=False)
    return run_dir / "tiny"


def test_an_image_depends_only_on_its_seed_and_class(tiny_run):
    sampler = Sampler.from_run(tiny_run)
    seeds, labels = [3, 4, 5, 6, 7], [0, 1, 2, 0, 1]
    together = sampler.images(seeds, labels, batch_size=5)
    in_pieces = sampler.images(seeds, labels, batch_size=2)
    alone = sampler.images([5], [2])
    np.testing.assert_array_equal(together, in_pieces)
    np.testing.assert_array_equal(together[2], alone[0])
    assert together.dtype == np.uint8 and together.shape == (5, 8, 8, 1)


def test_seeded_normal_uses_one_generator_per_seed():
    torch.testing.assert_close(seeded_normal([9, 1], 4)[1], seeded_normal([1], 4)[0])


def test_truncation_zero_collapses_a_class_to_its_average(tiny_run):
    sampler = Sampler.from_run(tiny_run)
    collapsed = sampler.latents([1, 2, 3], [1, 1, 1], truncation=0.0)
    torch.testing.assert_close(collapsed[0], collapsed[2])
    free = sampler.latents([1, 2], [1, 1], truncation=1.0)
    assert not torch.allclose(free[0], free[1])


def test_class_balanced_labels_cover_every_class_evenly():
    labels = class_balanced_labels(25, 10)
    assert np.bincount(labels).tolist() == [3] * 5 + [2] * 5


def test_classes_can_be_asked_for_by_name_or_index(tiny_run):
    sampler = Sampler.from_run(tiny_run)
    assert sampler.class_index("bright") == 2 and sampler.class_index("1") == 1
    with pytest.raises(ValueError, match=", ".join(TINY_CLASSES)):
        sampler.class_index("purple")
    with pytest.raises(ValueError, match="out of range"):
        sampler.class_index(7)


def test_npz_follows_the_adm_layout(tmp_path):
    images = np.zeros((4, 8, 8, 1), np.uint8)
    write_npz(tmp_path / "s.npz", images, [0, 1, 2, 0])
    data = np.load(tmp_path / "s.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (4, 8, 8, 1)
    assert data["arr_1"].dtype == np.int64 and data["arr_1"].tolist() == [0, 1, 2, 0]


def test_a_run_without_checkpoints_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="gatgan train"):
        Sampler.from_run(tmp_path)


def test_a_run_with_another_mapping_lr_multiplier_samples_what_it_trained(tiny_data, tmp_path):
    """Equalised-lr weights are stored divided by the multiplier: rebuilding the generator with the
    default multiplier would silently rescale the mapping network."""
    trainer = train(tiny_config(tiny_data, tmp_path, **{"model.mapping_lr_mult": 1.0}), progress=False)
    sampler = Sampler.from_run(tmp_path / "tiny")
    assert sampler.generator.mapping.fc1.lr_mult == 1.0
    z, y = torch.randn(4, sampler.generator.z_dim), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(sampler.generator.mapping(z, y), trainer.ema.model.mapping(z, y))


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run (checkpoints 00000003 and 00000006) that a test may damage."""
    return shutil.copytree(tiny_run, tmp_path / "tiny")


def assert_samples_from(sampler, checkpoint):
    expected = load_network(checkpoint, "generator_ema")
    for name, tensor in sampler.generator.state_dict().items():
        torch.testing.assert_close(tensor, expected[name])


def test_a_damaged_latest_checkpoint_falls_back_unless_asked_for(run_copy, capsys):
    checkpoints = run_copy / CHECKPOINT_DIR
    damaged = checkpoints / "00000006" / "generator_ema.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert_samples_from(Sampler.from_run(run_copy), checkpoints / "00000003")
    assert f"{damaged} is damaged" in capsys.readouterr().err
    with pytest.raises(DamagedCheckpointError, match=re.escape(str(damaged))):
        Sampler.from_run(run_copy, checkpoints / "00000006")


def test_a_checkpoint_without_checksums_still_samples(run_copy):
    latest = run_copy / CHECKPOINT_DIR / "00000006"
    (latest / MANIFEST).unlink()  # as written by an older gatgan
    assert_samples_from(Sampler.from_run(run_copy), latest)


def test_non_finite_weights_are_refused(run_copy):
    weights = load_network(run_copy / CHECKPOINT_DIR / "00000006", "generator_ema")
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name][...] = float("nan")
    best = write_checkpoint_dir(run_copy / CHECKPOINT_DIR / BEST, {"generator_ema": weights}, extra_files={
        file: (run_copy / file).read_text() for file in ("config.yaml", DATA_CARD)})
    with pytest.raises(ValueError, match=re.escape(f"{best / 'generator_ema.safetensors'} holds non-finite "
                                                   f"weights ({name}: the run diverged)")):
        Sampler.from_run(run_copy, best)
