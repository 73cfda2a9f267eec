"""TimmViTTeacher against randomly initialised networks of the real DINOv2 architectures (no weights can be
downloaded here). The original facebookresearch/dinov2 checkpoint layout is written out by hand below, and
the features are checked against an independent re-implementation of DINOv2's forward pass as REPA uses it
(torch.hub DINOv2, pos_embed resampled once to 16x16 with timm's resample_abs_pos_embed)."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402

from gatgan.encoders.timm_vit import (  # noqa: E402
    ALIASES,
    KIND,
    WEIGHTS_FILE,
    TimmViTTeacher,
    convert_state_dict,
    create_model,
    load_weights,
)

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

# DinoVisionTransformer as released (dinov2/hub/backbones.py: img_size=518, patch_size=14, init_values=1.0,
# block_chunks=0): embed_dim, depth, num_heads, ffn ("mlp", or "swiglufused" for ViT-g).
DINOV2 = {"s": (384, 12, 6, "mlp"), "b": (768, 12, 12, "mlp"), "l": (1024, 24, 16, "mlp"),
          "g": (1536, 40, 24, "swiglufused")}


def original_dinov2_shapes(dim: int, depth: int, ffn: str = "mlp", registers: int = 0) -> dict[str, tuple]:
    """Key names and shapes of a released dinov2_vit*14[_reg4]_pretrain.pth, written from the original
    DinoVisionTransformer definition (not from timm)."""
    grid = 518 // 14
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim), "mask_token": (1, dim),
              "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,)}
    if registers:
        shapes["register_tokens"] = (1, registers, dim)
    if ffn == "mlp":
        hidden = 4 * dim
        mlp = {"mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (dim, hidden),
               "mlp.fc2.bias": (dim,)}
    else:  # SwiGLUFFNFused: hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8, w12 packs both halves
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        mlp = {"mlp.w12.weight": (2 * hidden, dim), "mlp.w12.bias": (2 * hidden,), "mlp.w3.weight": (dim, hidden),
               "mlp.w3.bias": (dim,)}
    block = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
             "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
             "ls1.gamma": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,), **mlp, "ls2.gamma": (dim,)}
    for i in range(depth):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


def original_dinov2_state(shapes: dict[str, tuple], seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random values of a sensible scale for every key, so that every weight visibly affects the features."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if device == "meta":
            state[name] = torch.empty(shape, device="meta")
            continue
        x = torch.randn(shape, generator=generator)
        if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            x = 1 + 0.1 * x
        elif name.endswith("gamma"):
            x = 0.3 + 0.1 * x
        elif name.endswith("weight"):
            x = x / math.sqrt(math.prod(shape[1:]))
        else:
            x = 0.1 * x
        state[name] = x
    return state


def reference_dinov2(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, grid: int = 16):
    """DINOv2's forward_features (x_norm_clstoken, x_norm_patchtokens) from the original state dict, after
    REPA's `encoder.pos_embed.data = timm.layers.pos_embed.resample_abs_pos_embed(pos_embed, [16, 16])`."""
    dim = state["cls_token"].shape[-1]
    batch = x.shape[0]
    pos = resample_abs_pos_embed(state["pos_embed"], [grid, grid])
    x = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    x = torch.cat([state["cls_token"].expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + pos
    registers = 0
    if "register_tokens" in state:
        registers = state["register_tokens"].shape[1]
        x = torch.cat([x[:, :1], state["register_tokens"].expand(batch, -1, -1), x[:, 1:]], dim=1)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))

    def norm(t, name):
        return F.layer_norm(t, (dim,), state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    def linear(t, name):
        return F.linear(t, state[f"{name}.weight"], state[f"{name}.bias"])

    for i in range(depth):
        p = f"blocks.{i}."
        qkv = linear(norm(x, p + "norm1"), p + "attn.qkv").reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
        x = x + state[p + "ls1.gamma"] * linear((attention @ v).transpose(1, 2).reshape(batch, -1, dim),
                                                p + "attn.proj")
        h = norm(x, p + "norm2")
        if p + "mlp.w12.weight" in state:
            x1, x2 = linear(h, p + "mlp.w12").chunk(2, dim=-1)
            h = linear(F.silu(x1) * x2, p + "mlp.w3")
        else:
            h = linear(F.gelu(linear(h, p + "mlp.fc1")), p + "mlp.fc2")
        x = x + state[p + "ls2.gamma"] * h
    x = norm(x, "norm")
    return x[:, 0], x[:, 1 + registers:]


def repa_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """REPA's preprocess_raw_image for DINOv2: /255, Normalize(ImageNet), F.interpolate(x, size, 'bicubic')."""
    x = images.float() / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return F.interpolate(x, size, mode="bicubic")


pytestmark = pytest.mark.usefixtures("no_network")  # every test here must work offline


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two 64x64 RGB images, uint8 values stored as float (as the data loader delivers them)."""
    return torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(1)).float()


@pytest.fixture(scope="module")
def vits14_state() -> dict[str, torch.Tensor]:
    return original_dinov2_state(original_dinov2_shapes(*DINOV2["s"][:2]), seed=0)


@pytest.fixture(scope="module")
def vits14_file(vits14_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(vits14_state, path)
    return path


@pytest.fixture(scope="module")
def vits14(vits14_file) -> TimmViTTeacher:
    return TimmViTTeacher.from_spec("dinov2_vits14", weights=vits14_file)


def check_original_weights(teacher: TimmViTTeacher, state: dict[str, torch.Tensor], grid: int = 16) -> None:
    """Every original weight arrives unchanged, except pos_embed (REPA's resample) and the dropped mask_token;
    registers: timm stores cls + pos[0] as its cls_token and the registers as reg_token."""
    loaded = teacher.model.state_dict()
    expected = {k: v for k, v in state.items() if k not in ("mask_token", "pos_embed", "register_tokens")}
    pos = resample_abs_pos_embed(state["pos_embed"], [grid, grid])
    if "register_tokens" in state:
        expected["reg_token"] = state["register_tokens"]
        expected["cls_token"] = state["cls_token"] + pos[:, :1]
        pos = pos[:, 1:]
    expected["pos_embed"] = pos
    expected = {k.replace(".w12.", ".fc1.").replace(".w3.", ".fc2."): v for k, v in expected.items()}
    assert sorted(loaded) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=1e-6, msg=name)


def test_aliases_name_timms_dinov2_models():
    assert ALIASES["dinov2_vits14"] == "vit_small_patch14_dinov2"
    assert ALIASES["dinov2_vitb14"] == "vit_base_patch14_dinov2"
    assert ALIASES["dinov2_vitl14"] == "vit_large_patch14_dinov2"
    assert ALIASES["dinov2_vitg14"] == "vit_giant_patch14_dinov2"
    assert ALIASES["dinov2_vitb14_reg"] == "vit_base_patch14_reg4_dinov2"
    assert all(timm.is_model(name) for name in ALIASES.values())


def test_the_handwritten_vits14_layout_is_the_released_one():
    """Pins the original ViT-S/14 file: 7 non-block keys + 14 per block, 22.06M numbers (21.5M without
    the 518 px position embedding: the DINOv2 paper's "21M")."""
    shapes = original_dinov2_shapes(*DINOV2["s"][:2])
    assert len(shapes) == 7 + 12 * 14
    assert sorted(k for k in shapes if not k.startswith("blocks.")) == sorted(
        ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
         "norm.weight", "norm.bias"])
    assert sorted(k[len("blocks.11."):] for k in shapes if k.startswith("blocks.11.")) == sorted(
        ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
         "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
         "mlp.fc2.bias", "ls2.gamma"])
    assert shapes["pos_embed"] == (1, 1370, 384) and shapes["blocks.0.mlp.fc1.weight"] == (1536, 384)
    numbers = sum(math.prod(s) for s in shapes.values())
    assert numbers == 22_056_576 and 21e6 < numbers - 1370 * 384 < 22e6


@pytest.mark.parametrize("size", ["s", "b", "l", "g"])
@pytest.mark.parametrize("registers", [0, 4])
def test_every_released_layout_converts_to_timms_architecture(size, registers):
    """Key names and shapes only (meta device): original DINOv2 ViT-S/B/L/g (ViT-g: SwiGLU w12/w3), with and
    without registers -> exactly the timm model at 224 px, pos_embed resampled to 16x16."""
    dim, depth, _, ffn = DINOV2[size]
    state = original_dinov2_state(original_dinov2_shapes(dim, depth, ffn, registers), device="meta")
    alias = f"dinov2_vit{size}14{'_reg' if registers else ''}"
    model = create_model(ALIASES[alias], 224)
    converted = convert_state_dict(state, model)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert converted["pos_embed"].shape[1] == 256 + (0 if registers else 1)
    if ffn == "swiglufused":
        assert converted["blocks.0.mlp.fc1.weight"].shape == (8192, 1536)
        assert converted["blocks.0.mlp.fc2.weight"].shape == (1536, 4096)


def test_original_vits14_checkpoint_loads_and_gives_dinov2_features(vits14, vits14_state, images):
    assert vits14.resolution == 224 and vits14.grid == (16, 16) and vits14.dim == 384
    check_original_weights(vits14, vits14_state)
    features = vits14(images)
    assert features.cls.shape == (2, 384) and features.patches.shape == (2, 384, 16, 16)
    cls, patches = reference_dinov2(vits14_state, repa_preprocess(images), heads=6)
    torch.testing.assert_close(features.cls, cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features.patches, patches.transpose(1, 2).reshape(2, 384, 16, 16),
                               rtol=1e-4, atol=1e-4)
    assert features.cls.std() > 0.1 and features.patches.std() > 0.1


@pytest.mark.slow
def test_original_vitb14_checkpoint(tmp_path, images):
    state = original_dinov2_state(original_dinov2_shapes(*DINOV2["b"][:2]), seed=3)
    torch.save(state, tmp_path / "dinov2_vitb14_pretrain.pth")
    teacher = TimmViTTeacher.from_spec("vit_base_patch14_dinov2", weights=tmp_path / "dinov2_vitb14_pretrain.pth")
    check_original_weights(teacher, state)
    features = teacher(images[:1])
    assert features.cls.shape == (1, 768) and features.patches.shape == (1, 768, 16, 16)
    cls, patches = reference_dinov2(state, repa_preprocess(images[:1]), heads=12)
    torch.testing.assert_close(features.cls, cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features.patches.flatten(2).transpose(1, 2), patches, rtol=1e-4, atol=1e-4)


def test_original_register_checkpoint_skips_the_registers(tmp_path, images):
    state = original_dinov2_state(original_dinov2_shapes(384, 12, registers=4), seed=4)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(state, path)
    teacher = TimmViTTeacher.from_spec("vit_small_patch14_reg4_dinov2", weights=path)
    assert teacher.num_prefix_tokens == 5
    check_original_weights(teacher, state)
    features = teacher(images)
    assert features.patches.shape == (2, 384, 16, 16)  # 256 patches: the 4 registers are not among them
    cls, patches = reference_dinov2(state, repa_preprocess(images), heads=6)
    torch.testing.assert_close(features.cls, cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features.patches.flatten(2).transpose(1, 2), patches, rtol=1e-4, atol=1e-4)


def test_swiglu_giant_layout_computes_dinov2s_swiglu(images):
    """ViT-g's w12/w3 (SwiGLUFFNFused: silu(first half) * second half) on a 2-block, 96-wide ViT-g-style
    network, so that the whole forward pass can be compared cheaply."""
    state = original_dinov2_state(original_dinov2_shapes(96, 2, "swiglufused"), seed=5)
    model = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, num_classes=0, img_size=224,
                              embed_dim=96, depth=2, num_heads=4)
    teacher = TimmViTTeacher(load_weights(model, state), name="vit_giant_patch14_dinov2")
    check_original_weights(teacher, state)
    features = teacher(images)
    cls, patches = reference_dinov2(state, repa_preprocess(images), heads=4)
    torch.testing.assert_close(features.cls, cls, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features.patches.flatten(2).transpose(1, 2), patches, rtol=1e-4, atol=1e-4)


def test_preprocess_matches_repa(vits14, images):
    x = vits14.preprocess(images)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x, repa_preprocess(images), rtol=0, atol=1e-5)
    torch.testing.assert_close(vits14.preprocess(images.to(torch.uint8)), x, rtol=0, atol=0)
    same_size = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    torch.testing.assert_close(vits14.preprocess(same_size), repa_preprocess(same_size), rtol=0, atol=1e-5)


def test_preprocess_repeats_grayscale_and_normalises_with_imagenet_statistics(vits14):
    gray = torch.full((1, 1, 32, 32), 200, dtype=torch.uint8)
    x = vits14.preprocess(gray)
    assert x.shape == (1, 3, 224, 224)
    expected = (200 / 255 - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(x, expected.expand(1, 3, 224, 224), rtol=0, atol=1e-5)
    assert len({round(v, 3) for v in x[0, :, 0, 0].tolist()}) == 3  # per-channel statistics
    images = torch.randint(0, 256, (2, 1, 40, 40)).float()
    torch.testing.assert_close(vits14.preprocess(images), vits14.preprocess(images.expand(-1, 3, -1, -1)))
    for bad in (torch.zeros(2, 2, 32, 32), torch.zeros(3, 32, 32)):
        with pytest.raises(ValueError, match="expected images"):
            vits14.preprocess(bad)


def test_features_are_deterministic_frozen_and_never_track_gradients(vits14, images):
    assert not vits14.model.training
    assert not any(p.requires_grad for p in vits14.parameters())
    first, second = vits14(images), vits14(images)
    assert torch.equal(first.cls, second.cls) and torch.equal(first.patches, second.patches)
    assert not first.cls.requires_grad and not first.patches.requires_grad
    vits14.train()
    assert vits14.training and not vits14.model.training  # the wrapped network stays in eval mode
    torch.testing.assert_close(vits14(images).cls, first.cls, rtol=0, atol=0)
    vits14.eval()
    assert vits14.state_dict().keys() == {f"model.{k}" for k in vits14.model.state_dict()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", "/"])
def test_another_timm_vit_with_timm_format_weights(tmp_path, images, suffix):
    """vit_tiny_patch16_224 (augreg: mean/std 0.5) saved with its classifier head (dropped): a file, or a directory
    in timm's Hub layout."""
    torch.manual_seed(6)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    state = source.state_dict()
    assert "head.weight" in state
    path = tmp_path / f"vit_tiny{suffix}"
    if suffix == "/":  # a `hf download timm/...` directory
        path.mkdir()
        save_file(state, str(path / "model.safetensors"))
    else:
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    teacher = TimmViTTeacher.from_spec("vit_tiny_patch16_224", weights=path)
    assert teacher.resolution == 224 and teacher.grid == (14, 14) and teacher.dim == 192
    assert teacher.mean_values == (0.5, 0.5, 0.5) and teacher.std_values == (0.5, 0.5, 0.5)
    features = teacher(images)
    assert features.cls.shape == (2, 192) and features.patches.shape == (2, 192, 14, 14)
    x = F.interpolate((images / 255 - 0.5) / 0.5, 224, mode="bicubic")
    with torch.no_grad():
        tokens = source.forward_features(x)
    torch.testing.assert_close(features.cls, tokens[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features.patches.flatten(2).transpose(1, 2), tokens[:, 1:], rtol=1e-5, atol=1e-5)


def test_other_resolutions_resample_the_position_embedding(vits14_file, vits14_state):
    teacher = TimmViTTeacher.from_spec("dinov2_vits14", weights=vits14_file, resolution=112)
    assert teacher.grid == (8, 8)
    check_original_weights(teacher, vits14_state, grid=8)
    features = teacher(torch.zeros(1, 3, 256, 256))
    assert features.patches.shape == (1, 384, 8, 8)


def test_save_and_reload_offline_gives_identical_features(vits14, images, tmp_path, no_network):
    vits14.save(tmp_path / "teacher")
    saved = json.loads((tmp_path / "teacher" / "teacher.json").read_text())
    assert saved["kind"] == KIND == "timm_vit"
    assert saved["model"] == "vit_small_patch14_dinov2" and saved["resolution"] == 224
    assert (tmp_path / "teacher" / WEIGHTS_FILE).is_file()
    expected = vits14(images)
    for config in (None, {k: v for k, v in saved.items() if k != "kind"}):
        reloaded = TimmViTTeacher.from_directory(tmp_path / "teacher", config)
        features = reloaded(images)
        assert torch.equal(features.cls, expected.cls) and torch.equal(features.patches, expected.patches)
        assert not any(p.requires_grad for p in reloaded.parameters()) and not reloaded.model.training
    assert no_network == []


def test_a_saved_teacher_without_its_weights_is_a_clear_error(vits14, tmp_path):
    vits14.save(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="weight copy .* is missing"):
        TimmViTTeacher.from_directory(tmp_path)
    with pytest.raises(ValueError, match="not a 'timm_vit'"):
        TimmViTTeacher.from_directory(tmp_path, {"kind": "other"})


def test_no_weights_says_what_to_download(no_network):
    with pytest.raises(FileNotFoundError) as error:
        TimmViTTeacher.from_spec("dinov2_vitb14")
    message = str(error.value)
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth" in message
    assert "hf download timm/vit_base_patch14_dinov2.lvd142m" in message
    with pytest.raises(FileNotFoundError, match="do not exist.*dinov2_vits14_reg4_pretrain.pth"):
        TimmViTTeacher.from_spec("dinov2_vits14_reg", weights="/nowhere/dinov2.pth")
    assert no_network == []


@pytest.mark.parametrize("change, message", [
    ("drop", r"1 missing keys \(e.g. \['blocks.3.ls1.gamma'\]\)"),
    ("extra", r"unexpected keys \(e.g. \['blocks.12.norm1.weight'\]\)"),
    ("shape", r"mismatched shapes \(e.g. \['norm.bias \(383,\)"),
    ("patch", r"\(16, 16\) patches, the model \(14, 14\)"),
])
def test_wrong_weights_are_clear_errors(vits14_state, tmp_path, change, message):
    state = dict(vits14_state)
    if change == "drop":
        del state["blocks.3.ls1.gamma"]
    elif change == "extra":
        state["blocks.12.norm1.weight"] = torch.ones(384)
    elif change == "shape":
        state["norm.bias"] = torch.zeros(383)
    else:
        state["patch_embed.proj.weight"] = torch.zeros(384, 3, 16, 16)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=message) as error:
        TimmViTTeacher.from_spec("dinov2_vits14", weights=tmp_path / "w.safetensors")
    assert "does not hold the weights of timm 'vit_small_patch14_dinov2'" in str(error.value)


def test_unreadable_weights_and_unusable_models_are_clear_errors(tmp_path, vits14_file):
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not read weights"):
        TimmViTTeacher.from_spec("dinov2_vits14", weights=tmp_path / "junk.pth")
    torch.save({"step": 3}, tmp_path / "step.pth")
    with pytest.raises(ValueError, match="not hold a state dict of tensors"):
        TimmViTTeacher.from_spec("dinov2_vits14", weights=tmp_path / "step.pth")
    with pytest.raises(FileNotFoundError, match="holds neither"):
        TimmViTTeacher.from_spec("dinov2_vits14", weights=tmp_path)
    with pytest.raises(ValueError, match="unknown timm model 'dinov2_vits16'.*dinov2_vits14"):
        TimmViTTeacher.from_spec("dinov2_vits16", weights=vits14_file)
    with pytest.raises(ValueError, match="is a ResNet, not a timm VisionTransformer"):
        TimmViTTeacher.from_spec("resnet18", weights=vits14_file)
    with pytest.raises(ValueError, match="no \\[cls\\] token"):
        TimmViTTeacher.from_spec("vit_base_patch16_siglip_224", weights=vits14_file)
    with pytest.raises(ValueError, match="multiple of its patch size"):
        TimmViTTeacher.from_spec("dinov2_vits14", weights=vits14_file, resolution=225)


def test_a_hub_request_while_offline_fails_fast_with_download_instructions(monkeypatch, tmp_path, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(FileNotFoundError) as error:
        TimmViTTeacher.from_spec("dinov2_vits14", weights="hub")
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message
    assert "hf download timm/vit_small_patch14_dinov2.lvd142m" in message
    assert "dinov2_vits14_pretrain.pth" in message
    assert time.time() - started < 10
    assert no_network == []


def test_a_failed_hub_download_says_what_to_download(monkeypatch):
    """Online, the download itself is timm's (huggingface_hub retries for ~45 s without a network, so
    it is replaced here by one that fails at once)."""
    from huggingface_hub import constants
    from timm import models

    def unreachable(hub_id, *args, **kwargs):
        raise OSError(f"cannot reach huggingface.co for {hub_id}")

    monkeypatch.setattr(models, "load_state_dict_from_hf", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(FileNotFoundError, match="(?s)downloading them from the Hugging Face Hub failed: cannot reach "
                                                "huggingface.co for timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
                                                ".*hf download timm/vit_tiny_patch16_224"):
        TimmViTTeacher.from_spec("vit_tiny_patch16_224", weights="hub")
    with pytest.raises(FileNotFoundError) as error:
        TimmViTTeacher.from_spec("vit_tiny_patch16_224", weights="hub")
    assert "weights='hub'" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="timm knows no Hugging Face Hub weights for 'vit_large_patch14_224'"):
        TimmViTTeacher.from_spec("vit_large_patch14_224", weights="hub")


def test_timm_is_optional(monkeypatch):
    """Importing the module never needs timm; using it without timm says how to install it."""
    code = "import sys, gatgan.encoders.timm_vit; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match="pip install 'gatgan\\[repa\\]'"):
        TimmViTTeacher.from_spec("dinov2_vits14", weights="x.pth")
