import numpy as np
import torch

from gatgan.data.inputs import prepare_arrays
from gatgan.data.latents import BatchSchedule, LatentDataset
from gatgan.data.loader import StepBatches, step_loader
from gatgan.data.prepare import PrepareOptions
from gatgan.tokenizers.small_vae import SmallVAE


def _data(tmp_path, flip=True):
    """A random small VAE gives a real posterior (std > 0), so the noise matters."""
    torch.manual_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    path = prepare_arrays(tmp_path / "d", images, np.arange(40) % 4, list("abcd"), SmallVAE(1, 2, 8, 2), "test",
                          PrepareOptions(progress=False, shard_size=16, flip=flip))
    return LatentDataset(path)


def _steps(data, world_size=1, rank=0, accumulation=1, start=0, total=6, **kwargs):
    return StepBatches(data, BatchSchedule(len(data), 12, seed=5), rank=rank, world_size=world_size,
                       accumulation=accumulation, start_step=start, total_steps=total, seed=5, **kwargs)


def _global_step(data, step, world_size, accumulation):
    parts = [_steps(data, world_size, rank, accumulation, start=step, total=step + 1)[micro]
             for micro in range(accumulation) for rank in range(world_size)]
    return torch.cat([p.latents for p in parts]), torch.cat([p.labels for p in parts])


def test_a_step_is_the_same_on_any_number_of_processes(tmp_path):
    data = _data(tmp_path)
    for step in (0, 3, 7):
        reference = _global_step(data, step, 1, 1)
        for world_size, accumulation in ((2, 1), (3, 2), (4, 3)):
            latents, labels = _global_step(data, step, world_size, accumulation)
            torch.testing.assert_close(latents, reference[0], rtol=0, atol=0)
            assert torch.equal(labels, reference[1])


def test_noise_and_flips_change_from_step_to_step_but_not_between_reads(tmp_path):
    data = _data(tmp_path)
    steps = _steps(data)
    assert torch.equal(steps[2].latents, steps[2].latents)
    noise_a, flip_a = steps.step_noise(0)
    noise_b, flip_b = steps.step_noise(1)
    assert not torch.equal(noise_a, noise_b)
    assert flip_a.any() and not flip_a.all() and not np.array_equal(flip_a, flip_b)
    assert not _steps(data, xflip=False).step_noise(0)[1].any()


def test_workers_give_the_batches_of_the_main_process(tmp_path):
    data = _data(tmp_path)
    in_process = [b.latents for b in step_loader(_steps(data, start=2), workers=0)]
    with_workers = [b.latents for b in step_loader(_steps(data, start=2), workers=2)]
    assert len(in_process) == 4
    for a, b in zip(in_process, with_workers):
        assert torch.equal(a, b)


def test_starting_at_a_step_continues_the_same_sequence(tmp_path):
    data = _data(tmp_path)
    full = [b.latents for b in step_loader(_steps(data, accumulation=2), workers=0)]
    resumed = [b.latents for b in step_loader(_steps(data, accumulation=2, start=4), workers=0)]
    assert len(full) == 12 and len(resumed) == 4
    for a, b in zip(full[8:], resumed):
        assert torch.equal(a, b)


def test_images_come_with_the_same_flips_as_the_latents(tmp_path):
    data = _data(tmp_path)
    steps = _steps(data, with_images=True)
    batch = steps[0]
    indices = steps.schedule.global_indices(0).numpy()
    _, flip = steps.step_noise(0)
    stored = data.gather("images", indices)
    expected = np.where(flip[:, None, None, None], stored[..., ::-1], stored)
    np.testing.assert_array_equal(batch.images.numpy(), expected)
