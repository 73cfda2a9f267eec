import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gatgan.data.fashion_mnist import DEFAULT_ROOT
from gatgan.data.inputs import prepare_arrays, prepare_fashion_mnist, prepare_image_folder
from gatgan.data.latents import LatentDataset
from gatgan.data.prepare import PrepareOptions, choose_scaling, encode_moments
from gatgan.data.shards import SHARDS_DIR
from gatgan.tokenizers import load_tokenizer
from gatgan.tokenizers.base import LatentScaling, to_signed_unit
from gatgan.tokenizers.identity import IdentityTokenizer

WORKER = Path(__file__).with_name("prepare_worker.py")
QUIET = PrepareOptions(progress=False)


def test_arrays_round_trip_through_shards(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    path = prepare_arrays(tmp_path / "out", images, labels, ["x", "y", "z"], IdentityTokenizer(1), "unit",
                          PrepareOptions(progress=False, shard_size=3))
    index = json.loads((path / "index.json").read_text())
    assert index["count"] == 7 and index["latent_shape"] == [1, 8, 8] and index["image_shape"] == [1, 8, 8]
    assert [s["count"] for s in index["shards"]] == [3, 3, 1]
    assert index["tokenizer"]["kind"] == "identity" and index["summary"]["prepared"] == 7
    assert not (tmp_path / "out.partial").exists()
    data = LatentDataset(path)
    assert data.class_names == ["x", "y", "z"] and data.latent_size == 8 and data.latent_channels == 1
    np.testing.assert_array_equal(data.gather("images", np.arange(7)), images)
    np.testing.assert_array_equal(data.labels(np.arange(7)).numpy(), labels)
    moments = data.gather("moments", np.arange(7))
    np.testing.assert_allclose(moments[:, :1], to_signed_unit(images).numpy())
    assert np.all(moments[:, 1:] == 0)
    assert isinstance(load_tokenizer(data.tokenizer_path), IdentityTokenizer)


def test_latent_statistics_and_per_channel_scaling(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (50, 1, 4, 4), dtype=np.uint8)
    path = prepare_arrays(tmp_path / "out", images, np.zeros(50), ["only"], IdentityTokenizer(1), "unit",
                          PrepareOptions(progress=False, shard_size=7))
    index = json.loads((path / "index.json").read_text())
    pixels = to_signed_unit(images).double()
    assert index["latent_stats"]["mean"][0] == pytest.approx(pixels.mean().item(), abs=1e-9)
    assert index["latent_stats"]["std"][0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-9)
    assert index["scaling"]["scale"][0] == pytest.approx(1 / index["latent_stats"]["std"][0])


class _Published(IdentityTokenizer):
    def fixed_scaling(self) -> LatentScaling:
        return LatentScaling(shift=[0.0], scale=[0.18215])


def test_the_published_scaling_wins_unless_per_channel_is_asked_for():
    stats = ([1.0, 2.0], [4.0, 0.5])
    assert choose_scaling(_Published(2), "auto", *stats).scale == [0.18215]
    assert choose_scaling(_Published(2), "fixed", *stats).scale == [0.18215]
    assert choose_scaling(_Published(2), "per-channel", *stats) == LatentScaling([1.0, 2.0], [0.25, 2.0])
    assert choose_scaling(IdentityTokenizer(2), "auto", *stats).shift == [1.0, 2.0]
    with pytest.raises(ValueError, match="per-channel"):
        choose_scaling(IdentityTokenizer(2), "fixed", *stats)


def test_float16_moments_and_no_images(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    path = prepare_arrays(tmp_path / "out", images, np.zeros(5), ["only"], IdentityTokenizer(1), "unit",
                          PrepareOptions(progress=False, moments_dtype="float16", store_images=False))
    data = LatentDataset(path)
    assert data.gather("moments", np.arange(5)).dtype == np.float16 and not data.has_images
    assert not any(p.name.endswith("images.npy") for p in (path / SHARDS_DIR).iterdir())


def test_encode_moments_batches_do_not_change_the_result():
    images = np.random.default_rng(1).integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    tokenizer = IdentityTokenizer(1)
    np.testing.assert_array_equal(encode_moments(tokenizer, images[:3]), encode_moments(tokenizer, images)[:3])


def test_to_signed_unit_maps_bytes_to_minus_one_one():
    x = to_signed_unit(np.array([0, 255], dtype=np.uint8))
    assert torch.allclose(x, torch.tensor([-1.0, 1.0]))


def test_a_prepared_directory_is_reused(tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "index.json").write_text("{}")
    prepare_fashion_mnist(out, tokenizer="identity", root=tmp_path / "nowhere")
    assert "already prepared" in capsys.readouterr().out


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="small_vae"):
        prepare_fashion_mnist(tmp_path / "x", tokenizer="sd-vae")
    with pytest.raises(ValueError, match="power of two"):
        prepare_image_folder(tmp_path, tmp_path / "y", resolution=100, tokenizer="identity")
    with pytest.raises(ValueError, match="latent norm"):
        prepare_arrays(tmp_path / "z", np.zeros((1, 1, 4, 4), np.uint8), np.zeros(1), ["a"], IdentityTokenizer(1),
                       "unit", PrepareOptions(latent_norm="sometimes"))


def _png_folder(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for i in range(13):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(16, 40)), int(rng.integers(16, 40)))
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


def _run_worker(folder: Path, out: Path, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] \
        if processes > 1 else []
    result = subprocess.run([sys.executable, *launcher, str(WORKER), str(folder), str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_prepare_exactly_what_one_process_prepares(tmp_path):
    folder = _png_folder(tmp_path / "images")
    _run_worker(folder, tmp_path / "one", 1)
    _run_worker(folder, tmp_path / "two", 2)
    one, two = LatentDataset(tmp_path / "one"), LatentDataset(tmp_path / "two")
    assert len(one) == len(two) == 13 and len(one.index["shards"]) == 3
    for name in ("moments", "moments_flip", "labels", "images"):
        np.testing.assert_array_equal(one.gather(name, np.arange(13)), two.gather(name, np.arange(13)))
    for key in ("scaling", "latent_stats", "class_names", "tokenizer", "settings"):
        assert one.index[key] == two.index[key], key
    assert not np.array_equal(one.gather("moments", [0]), one.gather("moments_flip", [0]))


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist")
def test_prepare_fashion_mnist_with_pixels(tmp_path):
    path = prepare_fashion_mnist(tmp_path / "fm", tokenizer="identity", teacher="none", options=QUIET)
    data = LatentDataset(path)
    assert len(data) == 60000 and data.num_classes == 10 and data.latent_size == 32
    assert data.index["source"].startswith("fashion-mnist:")
