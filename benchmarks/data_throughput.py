"""Data throughput: how fast `prepare` turns images into moments, and whether the training loader
keeps up with a training step.

Prepare, per stage (one process unless stated):
  decode   JPEG bytes -> ADM centre crop to 256 (the work of one decoding worker)
  encode   SD-VAE encoder (the published sd-vae-ft-mse architecture, random weights) at 256x256,
           fp32, with its FLOPs per image counted (the GPU-side cost; a CPU here is far too slow)
  pipeline `prepare_image_folder` end to end (list, decode, crop, identity tokenizer, statistics,
           shard writes) with 0 and 1 decoding workers, cropping to 32x32: identity moments of a
           32x32x3 image (6x32x32 float32, 24 KiB) are about the size of SD-VAE moments of a 256x256
           image (8x32x32, 32 KiB), so this row is the pipeline's cost without the encoder
Loader: GAT-S/2's data shape (32x32x4 latents, 1000 classes, moments float32) in synthetic shards,
global batch 256: StepBatches through the DataLoader with 0 and 1 workers, batches/s per process,
next to the FLOPs of one GAT-S/2 training step at that batch.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gatgan.data.imaging import decode_image
from gatgan.data.inputs import prepare_arrays, prepare_image_folder
from gatgan.data.latents import BatchSchedule, LatentDataset
from gatgan.data.loader import StepBatches, step_loader
from gatgan.data.prepare import PrepareOptions
from gatgan.tokenizers import IdentityTokenizer


def jpeg_bytes(count: int, seed: int = 0) -> list[bytes]:
    """ImageNet-like JPEGs (500x375 and 375x500, quality 90) of smooth random content."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375) if i % 2 == 0 else (375, 500), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bench_decode(images: list[bytes], resolution: int) -> float:
    start = time.perf_counter()
    for data in images:
        decode_image(data, resolution)
    return len(images) / (time.perf_counter() - start)


def bench_encode(batch: int, repeats: int) -> tuple[float, float]:
    """(images/s, GFLOP per image) of the SD-VAE encoder at 256x256 in fp32."""
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from gatgan.tokenizers.sd_vae import DEFAULT_CONFIG, SDVAETokenizer
    tokenizer = SDVAETokenizer(AutoencoderKL.from_config(AutoencoderKL.load_config(str(DEFAULT_CONFIG))).eval())
    x = torch.rand(batch, 3, 256, 256) * 2 - 1
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tokenizer.encode_moments(x[:1])
    with torch.no_grad():
        tokenizer.encode_moments(x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            tokenizer.encode_moments(x)
    return batch * repeats / (time.perf_counter() - start), counter.get_total_flops() / 1e9


def bench_pipeline(images: list[bytes], root: Path, workers: int, resolution: int) -> float:
    folder = root / "images"
    if not folder.is_dir():
        for i, data in enumerate(images):
            (folder / f"class{i % 10}").mkdir(parents=True, exist_ok=True)
            (folder / f"class{i % 10}" / f"{i}.jpg").write_bytes(data)
    out = root / f"prepared-{workers}"
    options = PrepareOptions(progress=False, workers=workers, shard_size=500, batch_size=64)
    start = time.perf_counter()
    prepare_image_folder(folder, out, resolution=resolution, tokenizer="identity", options=options)
    return len(images) / (time.perf_counter() - start)


def bench_loader(root: Path, examples: int, batch: int, steps: int, workers: int) -> float:
    data_dir = root / "s2-latents"
    if not data_dir.is_dir():  # identity moments of 4x32x32 uint8 arrays: [8, 32, 32] float32 each
        rng = np.random.default_rng(0)
        arrays = rng.integers(0, 256, (examples, 4, 32, 32), dtype=np.uint8)
        prepare_arrays(data_dir, arrays, np.arange(examples) % 1000, [str(i) for i in range(1000)],
                       IdentityTokenizer(4), "synthetic", PrepareOptions(progress=False, store_images=False))
    data = LatentDataset(data_dir)
    steps_ds = StepBatches(data, BatchSchedule(len(data), batch, seed=0), rank=0, world_size=1, accumulation=1,
                           start_step=0, total_steps=steps + 2, seed=0)
    iterator = iter(step_loader(steps_ds, workers))
    next(iterator), next(iterator)  # start-up and first permutation
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps / (time.perf_counter() - start)


def gat_s2_step_gflop(batch: int) -> float:
    """FLOPs of one GAT-S/2 train_step at this batch, from a batch-2 count (linear in the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from gatgan.losses.objective import GATObjective
    from gatgan.models import build_discriminator, build_generator
    from gatgan.train.config import Config
    config = Config()
    G = build_generator("GAT-S/2", input_size=32, channels=4, num_classes=1000, num_exits=config.loss.mng.num_levels)
    D = build_discriminator("GAT-S/2", input_size=32, channels=4, num_classes=1000,
                            num_levels=config.loss.mng.num_levels)
    objective = GATObjective(config.loss.augment, config.loss.mng, config.loss.penalty)
    real, y, z = torch.randn(2, 4, 32, 32), torch.tensor([1, 2]), torch.randn(2, 64)
    generator = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        fake = G(z, y, all_exits=True)
        loss, _ = objective.discriminator_loss(D, real, fake.detach(), y, generator)
        loss.backward()
        fake = G(z, y, all_exits=True)
        loss, _ = objective.generator_loss(D, real, fake, y, generator)
        loss.backward()
    return counter.get_total_flops() / 2 * batch / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="JPEGs for the decode and pipeline rows")
    parser.add_argument("--resolution", type=int, default=256, help="crop size of the decode row")
    parser.add_argument("--pipeline-resolution", type=int, default=32, help="crop size of the pipeline rows")
    parser.add_argument("--encode-batch", type=int, default=4)
    parser.add_argument("--encode-repeats", type=int, default=2)
    parser.add_argument("--loader-examples", type=int, default=10_000)
    parser.add_argument("--loader-batch", type=int, default=256)
    parser.add_argument("--loader-steps", type=int, default=30)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    images = jpeg_bytes(args.images)
    rows = [("prepare: decode + centre crop (1 process)", f"{bench_decode(images, args.resolution):.0f} images/s")]
    encode_rate, encode_gflop = bench_encode(args.encode_batch, args.encode_repeats)
    rows.append(("prepare: SD-VAE encode 256x256 fp32 (CPU)",
                 f"{encode_rate:.2f} images/s ({encode_gflop:.0f} GFLOP/image)"))
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (0, 1):
            rate = bench_pipeline(images, Path(tmp), workers, args.pipeline_resolution)
            rows.append((f"prepare: whole pipeline to {args.pipeline_resolution}x{args.pipeline_resolution}, "
                         f"identity tokenizer, {workers} workers", f"{rate:.0f} images/s"))
        for workers in (0, 1):
            rate = bench_loader(Path(tmp), args.loader_examples, args.loader_batch, args.loader_steps, workers)
            rows.append((f"loader: GAT-S/2 shape, batch {args.loader_batch}, {workers} workers",
                         f"{rate:.1f} batches/s ({rate * args.loader_batch:.0f} examples/s)"))
    step = gat_s2_step_gflop(args.loader_batch)
    rows.append((f"GAT-S/2 train step at batch {args.loader_batch} (FLOPs)", f"{step / 1e3:.1f} TFLOP"))
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
