import json

import numpy as np
import pytest
import torch

from gatgan.data.inputs import prepare_arrays
from gatgan.data.latents import BatchSchedule, LatentDataset
from gatgan.data.prepare import PrepareOptions
from gatgan.data.shards import array_path
from gatgan.tokenizers.identity import IdentityTokenizer


def _prepared(tmp_path, count=23, shard_size=5, **options):
    images = np.random.default_rng(0).integers(0, 256, (count, 1, 4, 4), dtype=np.uint8)
    labels = np.arange(count) % 3
    path = prepare_arrays(tmp_path / "d", images, labels, ["a", "b", "c"], IdentityTokenizer(1), "test",
                          PrepareOptions(progress=False, shard_size=shard_size, **options))
    return path, images, labels


def test_every_epoch_visits_each_example_once():
    schedule = BatchSchedule(num_examples=10, global_batch=4, seed=3)
    stream = torch.cat([schedule.global_indices(step) for step in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # each epoch is shuffled anew


def test_schedule_is_a_function_of_seed_and_step_only():
    a = BatchSchedule(100, 8, seed=1)
    b = BatchSchedule(100, 8, seed=1)
    b.global_indices(7)  # visiting other steps first must not matter
    assert torch.equal(a.global_indices(3), b.global_indices(3))
    assert not torch.equal(a.global_indices(3), BatchSchedule(100, 8, seed=2).global_indices(3))


def test_gather_across_shards_returns_rows_in_the_order_asked(tmp_path):
    path, images, labels = _prepared(tmp_path)
    data = LatentDataset(path)
    assert len(data.index["shards"]) == 5 and data.offsets.tolist() == [0, 5, 10, 15, 20, 23]
    indices = np.array([22, 0, 7, 7, 14, 3, 19])
    np.testing.assert_array_equal(data.gather("images", indices), images[indices])
    np.testing.assert_array_equal(data.labels(indices).numpy(), labels[indices])
    with pytest.raises(IndexError):
        data.gather("labels", np.array([23]))


def test_latents_are_a_normalised_posterior_sample(tmp_path):
    path, images, _ = _prepared(tmp_path)
    for shard in range(5):  # give the identity posterior a known std
        moments = np.load(array_path(path, shard, "moments"))
        moments[:, 1:] = 0.5
        np.save(array_path(path, shard, "moments"), moments)
    data = LatentDataset(path)
    indices = np.array([5, 2, 5])
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    latents = data.latents(indices, noise)
    raw_mean = torch.from_numpy(images[indices]).float() / 127.5 - 1
    torch.testing.assert_close(data.scaling.denormalize(latents), raw_mean + 0.5 * noise, rtol=1e-5, atol=1e-5)


def test_flipped_moments_are_read_where_asked(tmp_path):
    path, images, _ = _prepared(tmp_path, flip=True)
    data = LatentDataset(path)
    assert data.has_flipped
    indices, flip = np.array([1, 2, 3]), np.array([False, True, False])
    latents = data.scaling.denormalize(data.latents(indices, torch.zeros(3, 1, 4, 4), flip))
    expected = torch.from_numpy(images[indices]).float() / 127.5 - 1
    expected[1] = expected[1].flip(-1)
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-5)
    mirrored = data.images(indices, flip)
    np.testing.assert_array_equal(mirrored[1].numpy(), images[2][..., ::-1])
    np.testing.assert_array_equal(mirrored[0].numpy(), images[1])


def test_per_channel_scaling_gives_unit_variance_latents(tmp_path):
    path, _, _ = _prepared(tmp_path, count=400, shard_size=64)
    data = LatentDataset(path)
    latents = data.latents(np.arange(400), torch.zeros(400, 1, 4, 4))
    assert latents.mean().item() == pytest.approx(0.0, abs=0.02)
    assert latents.std().item() == pytest.approx(1.0, abs=0.02)


def test_missing_or_inconsistent_data_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="gatgan prepare"):
        LatentDataset(tmp_path)
    path, _, _ = _prepared(tmp_path)
    index = json.loads((path / "index.json").read_text())
    index["shards"][0]["count"] = 4
    (path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="22 examples"):
        LatentDataset(path)
    index["format"] = 1
    (path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="prepare` again"):
        LatentDataset(path)


def test_an_interrupted_prepare_is_named_in_the_error(tmp_path):
    (tmp_path / "d.partial").mkdir()
    with pytest.raises(FileNotFoundError, match="interrupted prepare"):
        LatentDataset(tmp_path / "d")
