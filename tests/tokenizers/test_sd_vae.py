"""SDVAETokenizer against a randomly initialised AutoencoderKL of the real sd-vae-ft-mse architecture
(no weights can be downloaded here), including the original LDM key layout of the released files."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

from gatgan.tokenizers import load_tokenizer  # noqa: E402
from gatgan.tokenizers.sd_vae import DEFAULT_CONFIG, WEIGHTS_DIR, SDVAETokenizer  # noqa: E402

TINY_CONFIG = {"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
               "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 8,
               "latent_channels": 4}


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """Full-size sd-vae-ft-mse architecture from the shipped config, random weights, float32."""
    torch.manual_seed(0)
    return AutoencoderKL.from_config(AutoencoderKL.load_config(str(DEFAULT_CONFIG))).eval()


@pytest.fixture(scope="module")
def tokenizer(vae) -> SDVAETokenizer:
    return SDVAETokenizer(vae, source="random")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def diffusers_dir(vae, tmp_path_factory) -> Path:
    """A full-pipeline-like directory: <root>/vae/{config.json, diffusion_pytorch_model.safetensors}."""
    root = tmp_path_factory.mktemp("pipeline")
    vae.save_pretrained(root / "vae", safe_serialization=True)
    (root / "model_index.json").write_text("{}")
    return root


pytestmark = pytest.mark.usefixtures("no_network")  # every test here must work offline


def to_ldm_keys(state: dict[str, torch.Tensor], up_blocks: int = 4) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> the original CompVis/LDM layout of the released
    vae-ft-mse-840000-ema-pruned weights (written independently of diffusers' converter)."""
    rules = [
        (r"(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
         lambda m: f"decoder.up.{up_blocks - 1 - int(m[1])}.block.{m[2]}."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{up_blocks - 1 - int(m[1])}.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm."),
        (r"mid_block\.attentions\.0\.to_([qkv])\.", r"mid.attn_1.\1."),
        (r"mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
    ]
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if ".attn_1." in key and key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM attention projections are 1x1 convolutions
        out[key] = value.clone()
    return out


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_shapes_dtypes_and_attributes(tokenizer, images):
    with torch.no_grad():
        mean, std = tokenizer.encode_moments(images)
        decoded = tokenizer.decode(mean)
    assert mean.shape == std.shape == (2, 4, 4, 4)
    assert mean.dtype == std.dtype == decoded.dtype == torch.float32
    assert (std > 0).all() and torch.isfinite(mean).all()
    assert decoded.shape == images.shape
    assert (tokenizer.image_channels, tokenizer.latent_channels, tokenizer.downsample) == (3, 4, 8)
    assert not any(p.requires_grad for p in tokenizer.parameters())


def test_fixed_scaling_is_the_published_sd_factor(tokenizer):
    scaling = tokenizer.fixed_scaling()
    assert scaling.scale == [pytest.approx(0.18215)] and scaling.shift == [0.0]
    raw = torch.randn(1, 4, 2, 2)
    assert torch.allclose(scaling.normalize(raw), raw * 0.18215)


def test_fixed_scaling_follows_shift_factor_and_per_channel_statistics():
    shifted = SDVAETokenizer(AutoencoderKL(**TINY_CONFIG, scaling_factor=0.3611, shift_factor=0.1159))
    assert shifted.fixed_scaling().to_dict() == {"shift": [0.1159], "scale": [0.3611]}
    per_channel = SDVAETokenizer(AutoencoderKL(**TINY_CONFIG, scaling_factor=0.5, latents_mean=[1, 2, 3, 4],
                                               latents_std=[1, 2, 4, 5]))
    assert per_channel.fixed_scaling().to_dict() == {"shift": [1, 2, 3, 4], "scale": [0.5, 0.25, 0.125, 0.1]}


def test_wraps_the_diffusers_model_exactly_and_deterministically(tokenizer, vae, images):
    with torch.no_grad():
        mean, std = tokenizer.encode_moments(images)
        again = tokenizer.encode_moments(images)
        posterior = vae.encode(images).latent_dist
        latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
        decoded, reference = tokenizer.decode(latents), vae.decode(latents).sample
    assert torch.equal(mean, posterior.mean) and torch.equal(std, posterior.std)
    assert torch.equal(mean, again[0]) and torch.equal(std, again[1])
    assert torch.equal(decoded, reference)


def test_sampling_from_the_moments_has_the_posterior_spread(tokenizer, images):
    with torch.no_grad():
        mean, std = tokenizer.encode_moments(images)
    assert std.std() > 0  # a per-element spread, not a constant

    def draw(seed: int) -> torch.Tensor:
        eps = torch.randn((4000, *mean.shape), generator=torch.Generator().manual_seed(seed))
        return mean + std * eps

    samples = draw(0)
    assert torch.equal(samples, draw(0)) and not torch.equal(samples, draw(1))
    assert torch.allclose(samples.std(0) / std, torch.ones_like(std), atol=0.1)
    assert ((samples.mean(0) - mean).abs() < 5 * std / 4000 ** 0.5).all()


def test_runs_in_the_modules_reduced_precision_and_returns_float32():
    torch.manual_seed(0)
    full = SDVAETokenizer(AutoencoderKL(**TINY_CONFIG).eval())
    half = SDVAETokenizer(AutoencoderKL(**TINY_CONFIG).eval())
    half.load_state_dict(full.state_dict())
    half.to(torch.bfloat16)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected, actual = full.encode_moments(images), half.encode_moments(images)
        decoded = half.decode(expected[0])
    assert all(t.dtype == torch.float32 for t in (*actual, decoded))
    for e, a in zip(expected, actual):
        assert torch.allclose(e, a, rtol=0.05, atol=0.05) and not torch.equal(e, a)


def test_save_and_load_round_trip_uses_a_self_contained_copy(tokenizer, vae, images, diffusers_dir, tmp_path):
    source = SDVAETokenizer.from_source(diffusers_dir, subfolder="vae")
    source.save(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert saved == {"kind": "sd_vae", "source": str(diffusers_dir), "subfolder": "vae", "config": None,
                     "weights": WEIGHTS_DIR}
    copy = load_file(str(tmp_path / "tok" / WEIGHTS_DIR / "diffusion_pytorch_model.safetensors"))
    assert copy.keys() == vae.state_dict().keys()

    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SDVAETokenizer) and not loaded.training
    assert loaded.source == str(diffusers_dir)
    assert_same_weights(loaded.vae, vae)
    with torch.no_grad():
        for expected, actual in zip(tokenizer.encode_moments(images), loaded.encode_moments(images)):
            assert torch.equal(expected, actual)
        latents = torch.randn(1, 4, 2, 2)
        assert torch.equal(tokenizer.decode(latents), loaded.decode(latents))

    for file in (tmp_path / "tok" / WEIGHTS_DIR).iterdir():
        file.unlink()
    with pytest.raises(FileNotFoundError, match="weight copy"):
        load_tokenizer(tmp_path / "tok")


def test_loads_a_diffusers_directory_and_a_pipeline_subfolder(vae, diffusers_dir, no_network):
    assert_same_weights(SDVAETokenizer.from_source(str(diffusers_dir / "vae")).vae, vae)
    assert_same_weights(SDVAETokenizer.from_source(diffusers_dir, subfolder="vae").vae, vae)
    with pytest.raises(FileNotFoundError, match="subfolder='vae'"):
        SDVAETokenizer.from_source(diffusers_dir)
    assert no_network == []


@pytest.mark.slow
def test_loads_the_released_ldm_single_file_layout(vae, tmp_path, no_network):
    """The key layout of vae-ft-mse-840000-ema-pruned.safetensors, alone and inside a full SD checkpoint."""
    ldm = to_ldm_keys(vae.state_dict())
    assert "encoder.down.0.block.0.norm1.weight" in ldm and "decoder.up.3.upsample.conv.weight" in ldm
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert len(ldm) == len(vae.state_dict())
    save_file(ldm, str(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"))
    loaded = SDVAETokenizer.from_source(tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors")
    assert_same_weights(loaded.vae, vae)
    assert loaded.fixed_scaling().scale == [pytest.approx(0.18215)]

    full = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3)  # the UNet is ignored
    torch.save({"state_dict": full, "global_step": 840000}, tmp_path / "sd-v1.ckpt")
    assert_same_weights(SDVAETokenizer.from_source(str(tmp_path / "sd-v1.ckpt")).vae, vae)
    assert no_network == []


def test_loads_a_diffusers_single_file_with_a_local_config(vae, diffusers_dir, tmp_path, no_network):
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    assert_same_weights(SDVAETokenizer.from_source(tmp_path / "vae.safetensors").vae, vae)
    assert_same_weights(SDVAETokenizer.from_source(tmp_path / "vae.safetensors", config=str(diffusers_dir),
                                                   subfolder="vae").vae, vae)
    assert no_network == []


def test_incomplete_or_mismatched_weights_are_an_error_not_random_layers(tmp_path):
    torch.manual_seed(0)
    tiny = AutoencoderKL(**TINY_CONFIG)
    tiny.save_pretrained(tmp_path / "tiny", safe_serialization=True)
    state = {k: v.contiguous() for k, v in tiny.state_dict().items() if not k.startswith("decoder.conv_out")}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="missing keys.*decoder.conv_out"):
        SDVAETokenizer.from_source(tmp_path / "partial.safetensors", config=str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="does not match"):  # tiny weights, default full-size architecture
        SDVAETokenizer.from_source(tmp_path / "partial.safetensors")
    save_file(state, str(tmp_path / "tiny" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="missing keys"):
        SDVAETokenizer.from_source(tmp_path / "tiny")


def test_a_hub_id_while_offline_fails_fast_with_download_instructions(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(FileNotFoundError, match="hf download gatgan-test/no-such-vae") as error:
        SDVAETokenizer.from_source("gatgan-test/no-such-vae", subfolder="vae")
    assert "HF_HUB_OFFLINE" in str(error.value) and "subfolder='vae'" in str(error.value)
    assert time.time() - started < 10
    assert no_network == []


@pytest.mark.parametrize("name", ["nowhere", "nowhere/vae.safetensors", "nowhere/a/b"])
def test_a_missing_path_is_a_clear_error(tmp_path, name, no_network):
    with pytest.raises(FileNotFoundError, match="does not exist.*hf download"):
        SDVAETokenizer.from_source(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        SDVAETokenizer.from_source(tmp_path)
    assert no_network == []


def test_diffusers_is_optional(monkeypatch):
    """`import gatgan` never needs diffusers; asking for the SD VAE without it says how to install it."""
    code = "import sys, gatgan.tokenizers; assert 'diffusers' not in sys.modules and 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `from diffusers import ...` raise ImportError
    with pytest.raises(ImportError, match=re.escape("pip install 'gatgan[vae]'")):
        SDVAETokenizer.from_source("stabilityai/sd-vae-ft-mse")
