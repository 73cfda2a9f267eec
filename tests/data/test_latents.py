import numpy as np
import pytest
import torch

from gatgan.data.latents import BatchSchedule, LatentDataset
from gatgan.data.prepare import latent_scaling, write_prepared
from gatgan.tokenizers.identity import IdentityTokenizer


def test_every_epoch_visits_each_example_once():
    schedule = BatchSchedule(num_examples=10, global_batch=4, seed=3)
    stream = torch.cat([schedule.global_indices(step) for step in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # each epoch is shuffled anew


def test_global_batches_do_not_depend_on_devices_or_accumulation():
    schedule = BatchSchedule(num_examples=50, global_batch=12, seed=0)
    for step in (0, 4, 9):
        whole = schedule.global_indices(step)
        for world, accumulation in ((1, 1), (2, 1), (2, 3), (4, 3)):
            parts = [schedule.micro_batch(step, rank, world, micro, accumulation)
                     for micro in range(accumulation) for rank in range(world)]
            assert torch.equal(torch.cat(parts), whole)


def test_schedule_is_a_function_of_seed_and_step_only():
    a = BatchSchedule(100, 8, seed=1)
    b = BatchSchedule(100, 8, seed=1)
    b.global_indices(7)  # visiting other steps first must not matter
    assert torch.equal(a.global_indices(3), b.global_indices(3))
    assert not torch.equal(a.global_indices(3), BatchSchedule(100, 8, seed=2).global_indices(3))


def test_reading_draws_a_fresh_posterior_sample_and_normalises(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (20, 1, 4, 4), dtype=np.uint8)
    path = write_prepared(tmp_path / "d", images=images, labels=np.arange(20) % 2, class_names=["a", "b"],
                          tokenizer=IdentityTokenizer(1), source="test", progress=False)
    data = LatentDataset(path)
    moments = np.load(path / "moments.npy")
    moments[:, 1:] = 0.5  # give the posterior a known std
    np.save(path / "moments.npy", moments)
    data = LatentDataset(path)
    generator = torch.Generator().manual_seed(0)
    indices = torch.tensor([5, 2, 5])
    first, labels = data.read(indices, generator)
    second, _ = data.read(indices, generator)
    assert labels.tolist() == [1, 0, 1]
    raw_mean = torch.from_numpy(moments[[5, 2, 5], :1])
    noise = (data.scaling.denormalize(first) - raw_mean) / 0.5
    assert noise.std().item() == pytest.approx(1.0, abs=0.3)
    assert not torch.equal(first, second)  # a new eps each read
    assert not torch.equal(first[0], first[2])  # and per occurrence


def test_latent_scaling_gives_unit_variance_latents():
    rng = np.random.default_rng(123)  # not latent_scaling's own seed, or its noise would equal `mean`'s
    mean = rng.normal(3.0, 2.0, (4000, 2, 2, 2))
    std = np.full_like(mean, 0.5)
    scaling = latent_scaling(np.concatenate([mean, std], axis=1))
    samples = torch.from_numpy(mean + std * rng.standard_normal(mean.shape)).float()
    normalised = scaling.normalize(samples)
    assert normalised.mean().item() == pytest.approx(0.0, abs=0.05)
    assert normalised.std().item() == pytest.approx(1.0, abs=0.05)
    torch.testing.assert_close(scaling.denormalize(normalised), samples, rtol=1e-5, atol=1e-5)


def test_missing_or_inconsistent_data_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="gatgan prepare"):
        LatentDataset(tmp_path)
    images = np.zeros((6, 1, 4, 4), dtype=np.uint8)
    path = write_prepared(tmp_path / "d", images=images, labels=np.zeros(6), class_names=["a"],
                          tokenizer=IdentityTokenizer(1), source="test", progress=False)
    np.save(path / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="6 examples"):
        LatentDataset(path)
