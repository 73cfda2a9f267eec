import pytest
import torch

from gatgan.tokenizers import load_tokenizer
from gatgan.tokenizers.identity import IdentityTokenizer


def test_moments_are_the_images_with_zero_spread():
    tokenizer = IdentityTokenizer(image_channels=3)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    mean, std = tokenizer.encode_moments(images)
    assert torch.equal(mean, images)
    assert torch.equal(std, torch.zeros_like(images))
    assert torch.equal(tokenizer.decode(mean + std * torch.randn_like(std)), images)
    assert (tokenizer.image_channels, tokenizer.latent_channels, tokenizer.downsample) == (3, 3, 1)


def test_save_and_load_round_trip(tmp_path):
    IdentityTokenizer(image_channels=3).save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, IdentityTokenizer)
    assert loaded.config() == {"image_channels": 3}


def test_load_tokenizer_names_a_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_tokenizer(missing)


def test_load_tokenizer_rejects_an_unknown_kind(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"kind": "mystery"}')
    with pytest.raises(ValueError, match="mystery"):
        load_tokenizer(tmp_path)
