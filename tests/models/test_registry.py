"""Named model sizes (docs/method.md §1.2): built on the meta device, so the paper's sizes cost nothing."""

import pytest
import torch
import torch._dynamo  # noqa: F401  (meta-device arange imports it; pay that once, at collection)

from gatgan.models import MODEL_NAMES, MODEL_SIZES, build_discriminator, build_generator, parse_model_name

LATENT, CHANNELS, CLASSES, TEACHER = 32, 4, 1000, 768

# docs/method.md §1.2, in millions. G counts include the frozen sin-cos embedding and the authors' unused
# x_embedder; D counts (with the REPA projector) include the frozen embedding.
GENERATOR_PARAMS = {
    "S/2": 29.4, "S/4": 29.4, "S/8": 29.7,
    "B/2": 116.8, "B/4": 116.8, "B/8": 117.5,
    "L/2": 408.7, "L/4": 408.8, "L/8": 409.7,
    "XL/2": 602.3, "XL/4": 602.3, "XL/8": 603.4,
}
DISCRIMINATOR_PARAMS = {"S": 39.2, "B": 104.7, "L": 323.0, "XL": 467.7}
DISCRIMINATOR_PARAMS_NO_PROJECTOR = {"S": 32.6, "B": 97.1, "L": 314.9, "XL": 459.3}
SHAPES = {  # depth, width, heads, head dim, SwiGLU hidden
    "S": (12, 384, 6, 64, 1024),
    "B": (12, 768, 12, 64, 2048),
    "L": (24, 1024, 16, 64, 2730),
    "XL": (28, 1152, 16, 72, 3072),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_generator(name: str):
    with torch.device("meta"):
        return build_generator(name, input_size=LATENT, channels=CHANNELS, num_classes=CLASSES)


def meta_discriminator(name: str, teacher_dim=TEACHER):
    with torch.device("meta"):
        return build_discriminator(name, input_size=LATENT, channels=CHANNELS, num_classes=CLASSES,
                                   teacher_dim=teacher_dim)


@pytest.mark.parametrize("name", sorted(GENERATOR_PARAMS))
def test_generator_parameter_count_matches_reference_within_1_percent(name):
    G = meta_generator(f"GAT-{name}")
    assert count(G) / 1e6 == pytest.approx(GENERATOR_PARAMS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(GENERATOR_PARAMS))
def test_generator_parameter_count_is_exact_up_to_the_documented_dead_weights(name):
    """Adding back what the authors' count includes but we do not keep as parameters (the frozen
    position embedding, here a buffer, and the zeroed x_embedder Conv(4 -> D, p)) reproduces the
    reference to its rounding."""
    G = meta_generator(f"GAT-{name}")
    size, patch = parse_model_name(f"GAT-{name}")
    tokens = (LATENT // patch) ** 2
    x_embedder = CHANNELS * patch * patch * size.width + size.width
    total = count(G) + tokens * size.width + x_embedder
    assert abs(total / 1e6 - GENERATOR_PARAMS[name]) <= 0.05 + 1e-9


@pytest.mark.parametrize("size", sorted(DISCRIMINATOR_PARAMS))
def test_discriminator_parameter_count_matches_reference_within_1_percent(size):
    D = meta_discriminator(f"GAT-{size}/2")
    assert count(D) / 1e6 == pytest.approx(DISCRIMINATOR_PARAMS[size], rel=0.01)
    # and to the reference's rounding once the frozen position embedding is added back
    width = MODEL_SIZES[size].width
    assert abs((count(D) + 256 * width) / 1e6 - DISCRIMINATOR_PARAMS[size]) <= 0.05 + 1e-9


@pytest.mark.parametrize("size", sorted(DISCRIMINATOR_PARAMS_NO_PROJECTOR))
def test_discriminator_without_teacher_has_no_projector_parameters(size):
    D = meta_discriminator(f"GAT-{size}/2", teacher_dim=None)
    assert D.projector is None
    assert abs(count(D) / 1e6 - DISCRIMINATOR_PARAMS_NO_PROJECTOR[size]) <= 0.05 + 1e-9


@pytest.mark.parametrize("size", sorted(SHAPES))
def test_paper_sizes_have_dit_depth_width_heads(size):
    depth, width, heads, head_dim, hidden = SHAPES[size]
    assert (MODEL_SIZES[size].depth, MODEL_SIZES[size].width, MODEL_SIZES[size].num_heads) == (depth, width, heads)
    for net in (meta_generator(f"GAT-{size}/2"), meta_discriminator(f"GAT-{size}/2")):
        assert len(net.blocks) == depth
        attn = net.blocks[0].attn
        assert attn.num_heads == heads and attn.head_dim == head_dim
        assert attn.qkv.in_features == width
        assert net.blocks[0].mlp.w3.in_features == hidden
    D = meta_discriminator(f"GAT-{size}/2")
    assert D.head.out_features == 2048 and D.class_embed.weight.shape == (CLASSES, 2048)
    assert D.projector[0].out_features == 2048 and D.projector[-1].out_features == TEACHER


@pytest.mark.parametrize("patch, tokens", [(2, 256), (4, 64), (8, 16)])
def test_patch_size_sets_the_token_grid(patch, tokens):
    G = meta_generator(f"GAT-S/{patch}")
    D = meta_discriminator(f"GAT-S/{patch}")
    assert G.patch_size == patch and D.patch_size == patch
    assert G.pos_embed.shape == (1, tokens, 384)
    assert D.pos_embed.shape == (1, tokens, 384)
    assert G.exits[0].linear.out_features == patch * patch * CHANNELS


def test_generator_has_four_exits_after_every_quarter():
    G = meta_generator("GAT-XL/2")
    assert G.num_exits == 4 and len(G.exits) == 4 and G.exit_every == 7


def test_builders_pass_options_through():
    with torch.device("meta"):
        G = build_generator("GAT-Nano/2", input_size=8, channels=3, num_classes=7, num_exits=2, z_dim=32)
        D = build_discriminator("GAT-Nano/2", input_size=8, channels=3, num_classes=7, num_levels=2)
    assert G.num_exits == 2 and G.z_dim == 32 and G.channels == 3 and G.num_classes == 7
    assert D.patch_embed.in_channels == 2 * 3 and D.num_classes == 7
    assert D.projector is None


def test_parse_model_name_returns_size_and_patch():
    size, patch = parse_model_name("GAT-XL/4")
    assert (size.depth, size.width, size.num_heads, patch) == (28, 1152, 16, 4)
    assert "GAT-B/2" in MODEL_NAMES and "GAT-XL/8" in MODEL_NAMES


@pytest.mark.parametrize("name", ["GAT-XXL/2", "GAT-S/3", "DiT-S/2", "GAT-s/2", "GAT-S/2 ", "GAT-S", ""])
def test_unknown_model_names_raise_with_the_list_of_choices(name):
    with pytest.raises(ValueError) as info:
        parse_model_name(name)
    message = str(info.value)
    assert repr(name) in message
    for choice in ("GAT-S/2", "GAT-B/4", "GAT-XL/8", "GAT-Nano/1"):
        assert choice in message
    with pytest.raises(ValueError):
        build_generator(name, input_size=8, channels=4, num_classes=10)
