"""`gatgan convert`: checkpoints written here in the authors' exact layout (their key names, shapes,
the unused patch embedding and the buffers), checked against reference forwards of their networks
written directly on their tensors."""

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from gatgan import GAT
from gatgan.cli import main
from gatgan.convert import (convert_discriminator_state, convert_generator_state, infer_discriminator_architecture,
                            infer_generator_architecture)
from gatgan.models import Discriminator
from gatgan.models.layers import sincos_position_embedding

WIDTH, DEPTH, HEADS, PATCH, CHANNELS, GRID, CLASSES, EXITS, LEVELS = 64, 4, 2, 2, 4, 4, 10, 4, 4  # GAT-Nano/2
Z_DIM = EMBED_DIM = 64
CMAP, PROJECTOR, TEACHER = 128, 256, 32
LR_MULT = 0.01
TOLERANCE = 1e-5


# ---------------------------------------------------------------------- their layout
def their_block_shapes(prefix: str, width: int, head_dim: int) -> dict[str, tuple]:
    hidden = int(2 / 3 * 4 * width)
    return {f"{prefix}attn.qkv.weight": (3 * width, width), f"{prefix}attn.qkv.bias": (3 * width,),
            f"{prefix}attn.q_norm.weight": (head_dim,), f"{prefix}attn.k_norm.weight": (head_dim,),
            f"{prefix}attn.proj.weight": (width, width), f"{prefix}attn.proj.bias": (width,),
            f"{prefix}mlp.w12.weight": (2 * hidden, width), f"{prefix}mlp.w12.bias": (2 * hidden,),
            f"{prefix}mlp.w3.weight": (width, hidden), f"{prefix}mlp.w3.bias": (width,)}


def their_generator_shapes(depth=DEPTH, width=WIDTH, heads=HEADS, patch=PATCH, channels=CHANNELS, grid=GRID,
                           classes=CLASSES, exits=EXITS) -> dict[str, tuple]:
    shapes = {"y_embedder.embedding_table.weight": (classes, EMBED_DIM),
              "latent_embedder.0.weight": (width, EMBED_DIM + Z_DIM), "latent_embedder.0.bias": (width,),
              "latent_embedder.2.weight": (width, width), "latent_embedder.2.bias": (width,),
              "x_embedder.proj.weight": (width, channels, patch, patch), "x_embedder.proj.bias": (width,),
              "pos_embed": (1, grid * grid, width),
              "feat_rope.freqs_cos": (grid * grid, width // heads), "feat_rope.freqs_sin": (grid * grid, width // heads),
              "w_avg": (classes, width)}
    for i in range(depth):
        shapes |= their_block_shapes(f"blocks.{i}.", width, width // heads)
        shapes |= {f"blocks.{i}.adaLN_modulation.1.weight": (4 * width, width),
                   f"blocks.{i}.adaLN_modulation.1.bias": (4 * width,)}
    for k in range(exits):
        shapes |= {f"final_layers.{k}.linear.weight": (patch * patch * channels, width),
                   f"final_layers.{k}.linear.bias": (patch * patch * channels,),
                   f"final_layers.{k}.adaLN_modulation.1.weight": (width, width),
                   f"final_layers.{k}.adaLN_modulation.1.bias": (width,)}
    return shapes


def their_discriminator_shapes() -> dict[str, tuple]:
    shapes = {"x_embedder.proj.weight": (WIDTH, LEVELS * CHANNELS, PATCH, PATCH), "x_embedder.proj.bias": (WIDTH,),
              "cls_token": (1, 1, WIDTH), "pos_embed": (1, GRID * GRID, WIDTH),
              "feat_rope.freqs_cos": (GRID * GRID, WIDTH // HEADS), "feat_rope.freqs_sin": (GRID * GRID, WIDTH // HEADS),
              "final_layer.0.weight": (WIDTH,), "final_layer.1.weight": (CMAP, WIDTH), "final_layer.1.bias": (CMAP,),
              "y_embedder.embedding_table.weight": (CLASSES, CMAP),
              "y_embedder.latent_embedder.0.weight": (CMAP, CMAP), "y_embedder.latent_embedder.0.bias": (CMAP,),
              "y_embedder.latent_embedder.2.weight": (CMAP, CMAP), "y_embedder.latent_embedder.2.bias": (CMAP,),
              "proj.0.weight": (PROJECTOR, WIDTH), "proj.0.bias": (PROJECTOR,),
              "proj.2.weight": (PROJECTOR, PROJECTOR), "proj.2.bias": (PROJECTOR,),
              "proj.4.weight": (TEACHER, PROJECTOR), "proj.4.bias": (TEACHER,)}
    for i in range(DEPTH):
        shapes |= their_block_shapes(f"blocks.{i}.", WIDTH, WIDTH // HEADS)
        shapes |= {f"blocks.{i}.norm1.weight": (WIDTH,), f"blocks.{i}.norm2.weight": (WIDTH,),
                   f"blocks.{i}.ls_attn": (WIDTH,), f"blocks.{i}.ls_mlp": (WIDTH,)}
    return shapes


def their_position_table(width: int, grid: int) -> torch.Tensor:
    """MAE/DiT's get_2d_sincos_pos_embed: meshgrid(w, h), so the COLUMN coordinate fills the first half."""
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))
    columns, rows = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                   indexing="xy")

    def encode(positions):
        angles = positions.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(columns), encode(rows)], dim=1)[None].float()


def their_rope_tables(head_dim: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2-D RoPE: first half of a head rotates with the row, second with the column, each
    interleaved channel pair at one of the theta**(-2i/half) frequencies."""
    half = head_dim // 2
    freqs = 10000.0 ** (-torch.arange(0, half, 2, dtype=torch.float64) / half)
    angles = (torch.arange(grid, dtype=torch.float64)[:, None] * freqs).repeat_interleave(2, dim=1)
    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    table = torch.cat([angles[rows.reshape(-1)], angles[columns.reshape(-1)]], dim=1)
    return table.cos().float(), table.sin().float()


def random_state(shapes: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    """Random weights at unit scale (equalised mapping weights stored / lr_mult, as trained), and
    their exact buffers."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        values = torch.randn(shape, generator=generator)
        if "norm" in key or key == "final_layer.0.weight":
            values = 1 + 0.1 * values
        elif len(shape) == 1:
            values = 0.1 * values
        elif key not in ("cls_token", "w_avg") and "embedding_table" not in key:
            values = values / math.sqrt(math.prod(shape[1:]))
        if "latent_embedder" in key:
            values = values / LR_MULT
        state[key] = values
    cos, sin = their_rope_tables(WIDTH // HEADS, GRID)
    return state | {"pos_embed": their_position_table(WIDTH, GRID), "feat_rope.freqs_cos": cos,
                    "feat_rope.freqs_sin": sin}


# ---------------------------------------------------------------------- their forwards
def rms(x, weight=None, eps=1e-6):
    out = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return out if weight is None else out * weight


def unit_second_moment(x):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-8)


def equal_linear(sd, prefix, x):
    return F.linear(x, sd[f"{prefix}.weight"] * LR_MULT, sd[f"{prefix}.bias"] * LR_MULT)


def linear(sd, prefix, x):
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def rope(sd, x):
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * sd["feat_rope.freqs_cos"] + turned * sd["feat_rope.freqs_sin"]


def attention(sd, prefix, x, prefix_tokens=0):
    B, T, D = x.shape
    q, k, v = linear(sd, f"{prefix}.qkv", x).reshape(B, T, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
    eps = torch.finfo(torch.float32).eps  # theirs: nn.RMSNorm's default
    q, k = rms(q, sd[f"{prefix}.q_norm.weight"], eps), rms(k, sd[f"{prefix}.k_norm.weight"], eps)
    q = torch.cat([q[:, :, :prefix_tokens], rope(sd, q[:, :, prefix_tokens:])], dim=2)
    k = torch.cat([k[:, :, :prefix_tokens], rope(sd, k[:, :, prefix_tokens:])], dim=2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), dim=-1)
    return linear(sd, f"{prefix}.proj", (weights @ v).transpose(1, 2).reshape(B, T, D))


def swiglu(sd, prefix, x):
    gate, value = linear(sd, f"{prefix}.w12", x).chunk(2, dim=-1)
    return linear(sd, f"{prefix}.w3", F.silu(gate) * value)


def their_generator(sd, z, y):
    """Their G: mapping over [y, z], constant position tokens, adaptive-RMSNorm blocks, summed exits."""
    h = torch.cat([unit_second_moment(sd["y_embedder.embedding_table.weight"][y]), unit_second_moment(z)], dim=1)
    w = equal_linear(sd, "latent_embedder.2", F.silu(equal_linear(sd, "latent_embedder.0", h)))
    x = sd["pos_embed"].expand(len(z), -1, -1)
    image = 0
    for i in range(DEPTH):
        scale_msa, gate_msa, scale_mlp, gate_mlp = linear(sd, f"blocks.{i}.adaLN_modulation.1", F.silu(w))[:, None] \
            .chunk(4, dim=-1)
        x = x + gate_msa * attention(sd, f"blocks.{i}.attn", rms(x) * (1 + scale_msa))
        x = x + gate_mlp * swiglu(sd, f"blocks.{i}.mlp", rms(x) * (1 + scale_mlp))
        if (i + 1) % (DEPTH // EXITS) == 0:
            k = f"final_layers.{(i + 1) // (DEPTH // EXITS) - 1}"
            scale = linear(sd, f"{k}.adaLN_modulation.1", F.silu(w))[:, None]
            tokens = linear(sd, f"{k}.linear", rms(x) * (1 + scale))
            patches = tokens.reshape(len(z), GRID, GRID, PATCH, PATCH, CHANNELS)
            image = image + torch.einsum("nhwpqc->nchpwq", patches).reshape(len(z), CHANNELS, GRID * PATCH, -1)
    return image


def their_discriminator(sd, x, y):
    tokens = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=PATCH)
    h = torch.cat([sd["cls_token"].expand(len(x), -1, -1), tokens.flatten(2).transpose(1, 2) + sd["pos_embed"]], 1)
    for i in range(DEPTH):
        h = h + sd[f"blocks.{i}.ls_attn"] * attention(sd, f"blocks.{i}.attn", rms(h, sd[f"blocks.{i}.norm1.weight"]), 1)
        h = h + sd[f"blocks.{i}.ls_mlp"] * swiglu(sd, f"blocks.{i}.mlp", rms(h, sd[f"blocks.{i}.norm2.weight"]))
    features = linear(sd, "final_layer.1", rms(h[:, 0], sd["final_layer.0.weight"]))
    embedded = sd["y_embedder.embedding_table.weight"][y]
    cmap = equal_linear(sd, "y_embedder.latent_embedder.2",
                        F.silu(equal_linear(sd, "y_embedder.latent_embedder.0", embedded)))
    return (features * cmap).sum(-1)


# ---------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def theirs():
    return random_state(their_generator_shapes(), seed=0)


def converted_generator(state):
    architecture = infer_generator_architecture(state)
    generator = architecture.build().eval()
    generator.load_state_dict(convert_generator_state(state, architecture))
    return generator


@torch.no_grad()
def test_the_converted_generator_computes_their_generator(theirs):
    z, y = torch.randn(3, Z_DIM, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 7, 9])
    expected = their_generator(theirs, z, y)
    assert expected.shape == (3, CHANNELS, 8, 8) and expected.abs().mean() > 0.1
    torch.testing.assert_close(converted_generator(theirs)(z, y), expected, atol=TOLERANCE, rtol=TOLERANCE)


@torch.no_grad()
def test_their_weights_need_their_position_table(theirs):
    generator = converted_generator(theirs)
    torch.testing.assert_close(generator.pos_embed, their_position_table(WIDTH, GRID))
    generator.pos_embed.copy_(sincos_position_embedding(WIDTH, GRID)[None])  # gatgan's own, row first
    z, y = torch.randn(2, Z_DIM), torch.tensor([1, 2])
    assert (generator(z, y) - their_generator(theirs, z, y)).abs().max() > 1e-3


def test_size_is_read_from_the_weights(theirs):
    architecture = infer_generator_architecture(theirs)
    assert (architecture.name, architecture.input_size, architecture.channels, architecture.num_classes,
            architecture.num_exits, architecture.z_dim) == ("GAT-Nano/2", 8, CHANNELS, CLASSES, EXITS, Z_DIM)
    assert infer_generator_architecture(theirs, "GAT-Nano/2") == architecture
    with pytest.raises(ValueError, match="--model GAT-Micro/2 does not match the checkpoint.*width 64.*GAT-Nano/2"):
        infer_generator_architecture(theirs, "GAT-Micro/2")


@pytest.mark.parametrize("size, depth, width, heads, their_count, our_count", [
    ("S", 12, 384, 6, 29_361_344, 29_256_512), ("B", 12, 768, 12, 116_754_752, 116_545_088),
    ("L", 24, 1024, 16, 408_748_576, 408_469_024), ("XL", 28, 1152, 16, 602_251_136, 601_936_640)])
def test_the_paper_sizes_are_recognised_with_their_parameter_counts(size, depth, width, heads, their_count,
                                                                     our_count):
    """At 32x32x4 latents and 1000 classes, on the meta device: our layout of their checkpoint has
    their parameter count (all but the w_avg and RoPE buffers), and converts to gatgan's."""
    shapes = their_generator_shapes(depth, width, heads, patch=2, channels=4, grid=16, classes=1000)
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    assert sum(t.numel() for key, t in state.items() if key != "w_avg" and not key.startswith("feat_rope")) \
        == their_count
    architecture = infer_generator_architecture(state)
    assert (architecture.name, architecture.input_size) == (f"GAT-{size}/2", 32)
    converted = convert_generator_state(state, architecture)
    assert sum(t.numel() for key, t in converted.items() if key != "w_avg") == our_count


def test_unexpected_missing_and_misshaped_keys_are_named(theirs):
    with pytest.raises(ValueError, match="unexpected keys in their generator: y_embedder.extra"):
        convert_generator_state(theirs | {"y_embedder.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"missing \(as gatgan names them\): blocks.1.mlp.w3.bias"):
        convert_generator_state({k: v for k, v in theirs.items() if k != "blocks.1.mlp.w3.bias"})
    with pytest.raises(ValueError, match=r"unexpected \(as gatgan names them\): blocks.0.attn.extra"):
        convert_generator_state(theirs | {"blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"shapes differ: w_avg \(3, 64\)"):
        convert_generator_state(theirs | {"w_avg": torch.zeros(3, WIDTH)})
    with pytest.raises(ValueError, match="has no blocks.0.attn.qkv.weight"):
        convert_generator_state({"cls_token": torch.zeros(1)})


@torch.no_grad()
def test_the_converted_discriminator_computes_their_discriminator():
    theirs = random_state(their_discriminator_shapes(), seed=2)
    architecture = infer_discriminator_architecture(theirs, input_size=GRID * PATCH, channels=CHANNELS)
    assert (architecture["num_levels"], architecture["cmap_dim"], architecture["teacher_dim"]) == (LEVELS, CMAP, TEACHER)
    converted = convert_discriminator_state(theirs, architecture)
    dropped = {"pos_embed", "feat_rope.freqs_cos", "feat_rope.freqs_sin"}
    assert len(converted) == len(theirs) - len(dropped)  # every other key maps, one to one
    discriminator = Discriminator(**architecture).eval()
    discriminator.load_state_dict(converted)
    x, y = torch.randn(3, LEVELS * CHANNELS, 8, 8), torch.tensor([3, 0, 9])
    expected = their_discriminator(theirs, x, y)
    torch.testing.assert_close(discriminator(x, y), expected, atol=TOLERANCE, rtol=TOLERANCE)
    assert convert_discriminator_state(theirs).keys() == converted.keys()  # also without being told the shape


@torch.no_grad()
def test_the_cli_writes_a_model_from_their_checkpoint(theirs, vae_dir, tmp_path, capsys):
    model_state = random_state(their_generator_shapes(), seed=3)
    discriminator = {f"module.{k}": v for k, v in random_state(their_discriminator_shapes(), seed=4).items()}
    checkpoint = tmp_path / "0400000.pt"
    torch.save({"model": model_state, "ema": theirs, "discriminator": discriminator,
                "opt": {"step": 7}, "args": argparse.Namespace(model="GAT-Nano/2", lr=2e-4)}, checkpoint)
    names = [f"class {i}" for i in range(CLASSES)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    main(["convert", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "model"), "--vae", str(vae_dir),
          "--class-names", str(tmp_path / "classes.txt")])
    assert "wrote GAT-Nano/2 (10 classes)" in capsys.readouterr().out
    out = tmp_path / "model"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["position_layout"] == "column-first" and config["scaling"]["scale"] == [0.18215]
    assert "discriminator.safetensors" in json.loads((out / "checksums.json").read_text())
    assert "1 - truncation" in (out / "README.md").read_text()

    model = GAT.from_pretrained(out)
    z, y = torch.randn(2, Z_DIM), torch.tensor([4, 5])
    torch.testing.assert_close(model.sampler.generator(z, y), their_generator(theirs, z, y),  # the EMA weights
                               atol=TOLERANCE, rtol=TOLERANCE)
    images = model.generate(["class 4", 5], seeds=[0, 1], output="numpy")
    assert images.shape == (2, 16, 16, 3)

    main(["convert", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "raw"), "--vae", str(vae_dir),
          "--key", "model", "--model", "GAT-Nano/2"])
    raw = GAT.from_pretrained(tmp_path / "raw")
    assert raw.class_names[:2] == ["0", "1"]
    torch.testing.assert_close(raw.sampler.generator(z, y), their_generator(model_state, z, y),
                               atol=TOLERANCE, rtol=TOLERANCE)
