"""Launched by test_prepare.py (under torchrun, or as one plain process): prepares the same
folder of PNGs through a seeded random small VAE, so the test can compare 1- and 2-process output."""

import sys

import torch

from gatgan.data.prepare import PrepareOptions, prepare
from gatgan.data.sources import ImageSource
from gatgan.tokenizers.small_vae import SmallVAE


def random_vae() -> tuple[SmallVAE, dict]:
    torch.manual_seed(0)
    return SmallVAE(image_channels=3, latent_channels=2, base_channels=8, downsample=2), {}


if __name__ == "__main__":
    folder, out = sys.argv[1:3]
    torch.set_num_threads(1)
    options = PrepareOptions(shard_size=5, batch_size=3, flip=True, workers=0, progress=False)
    prepare(ImageSource(folder, resolution=16), out, random_vae, "random small vae", options)
