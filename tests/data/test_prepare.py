import json

import numpy as np
import pytest
import torch

from gatgan.data.fashion_mnist import DEFAULT_ROOT
from gatgan.data.latents import LatentDataset
from gatgan.data.prepare import encode_moments, prepare_fashion_mnist, write_prepared
from gatgan.tokenizers import load_tokenizer
from gatgan.tokenizers.base import to_signed_unit
from gatgan.tokenizers.identity import IdentityTokenizer


def test_write_prepared_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    path = write_prepared(tmp_path / "out", images=images, labels=labels, class_names=["x", "y", "z"],
                          tokenizer=IdentityTokenizer(1), source="unit", metadata={"note": np.float32(1.5)},
                          progress=False)
    index = json.loads((path / "index.json").read_text())
    assert index["count"] == 7 and index["latent_shape"] == [1, 8, 8] and index["note"] == 1.5
    assert not (tmp_path / "out.partial").exists()
    data = LatentDataset(path)
    assert data.class_names == ["x", "y", "z"] and data.latent_size == 8 and data.latent_channels == 1
    np.testing.assert_array_equal(np.load(path / "images.npy"), images)
    moments = np.load(path / "moments.npy")
    np.testing.assert_allclose(moments[:, :1], to_signed_unit(images).numpy())
    assert np.all(moments[:, 1:] == 0)
    assert isinstance(load_tokenizer(data.tokenizer_path), IdentityTokenizer)


def test_encode_moments_batches_do_not_change_the_result():
    images = np.random.default_rng(1).integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    tokenizer = IdentityTokenizer(1)
    np.testing.assert_array_equal(encode_moments(tokenizer, images, batch_size=3, progress=False),
                                  encode_moments(tokenizer, images, batch_size=10, progress=False))


def test_to_signed_unit_maps_bytes_to_minus_one_one():
    x = to_signed_unit(np.array([0, 255], dtype=np.uint8))
    assert torch.allclose(x, torch.tensor([-1.0, 1.0]))


def test_a_prepared_directory_is_reused(tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "index.json").write_text("{}")
    prepare_fashion_mnist(out, tokenizer="identity", root=tmp_path / "nowhere")
    assert "already prepared" in capsys.readouterr().out


def test_unknown_tokenizer_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="small_vae"):
        prepare_fashion_mnist(tmp_path / "x", tokenizer="sd-vae")


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist")
def test_prepare_fashion_mnist_with_pixels(tmp_path):
    path = prepare_fashion_mnist(tmp_path / "fm", tokenizer="identity", progress=False)
    data = LatentDataset(path, in_memory=False)
    assert len(data) == 60000 and data.num_classes == 10 and data.latent_size == 32
