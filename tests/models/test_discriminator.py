"""The GAT discriminator (docs/method.md §3)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatgan.models.discriminator import Discriminator, DiscriminatorBlock, stack_levels
from gatgan.models.layers import EqualLinear, RotaryEmbedding2D, sincos_position_embedding

SIZE, CHANNELS, PATCH, WIDTH, CLASSES, LEVELS, CMAP = 8, 4, 2, 32, 10, 4, 24
TOKENS = (SIZE // PATCH) ** 2


def make_discriminator(seed: int = 0, **overrides) -> Discriminator:
    torch.manual_seed(seed)
    kwargs = dict(input_size=SIZE, channels=CHANNELS, patch_size=PATCH, width=WIDTH, depth=2, num_heads=2,
                  num_classes=CLASSES, num_levels=LEVELS, cmap_dim=CMAP, projector_dim=40)
    kwargs.update(overrides)
    return Discriminator(**kwargs).eval()


def inputs(batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, LEVELS * CHANNELS, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    return x, y


def rms_norm_affine(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * norm.weight


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------

def test_logits_have_shape_batch():
    D = make_discriminator()
    x, y = inputs(batch=5)
    with torch.no_grad():
        assert D(x, y).shape == (5,)


def test_projections_of_the_first_samples_cover_cls_and_spatial_tokens():
    D = make_discriminator(teacher_dim=24)
    x, y = inputs()
    with torch.no_grad():
        logits, projected = D(x, y, project_first=2)
        assert projected.shape == (2, 1 + TOKENS, 24)
        torch.testing.assert_close(logits, D(x, y), rtol=0, atol=0)
        _, alone = D(x[:2], y[:2], project_first=2)  # the projection of a sample ignores the others
        torch.testing.assert_close(projected, alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="projector"):
        make_discriminator()(x, y, project_first=1)


def test_patch_embedding_sees_all_levels_stacked_along_channels():
    D = make_discriminator()
    assert D.patch_embed.in_channels == LEVELS * CHANNELS
    assert D.patch_embed.kernel_size == (PATCH, PATCH) and D.patch_embed.stride == (PATCH, PATCH)
    x, y = inputs()
    with torch.no_grad():
        base = D(x, y)
        for level in (0, LEVELS - 1):  # the single logit depends on every level
            changed = x.clone()
            changed[:, level * CHANNELS:(level + 1) * CHANNELS] += 1.0
            assert (D(changed, y) - base).abs().min() > 1e-6


def test_input_size_not_divisible_by_patch_raises():
    with pytest.raises(ValueError):
        make_discriminator(input_size=9)


# ---------------------------------------------------------------------------------------------
# Forward pass composed by hand
# ---------------------------------------------------------------------------------------------

def test_forward_matches_hand_composition_with_projection_conditioning():
    """cls token (no position embedding) + patch tokens with sin-cos embedding, blocks, then
    logit = <Linear(RMSNorm(cls)), cmap(Embedding(y))> with cmap = EqualLinear-SiLU-EqualLinear."""
    D = make_discriminator(teacher_dim=24)
    with torch.no_grad():  # make every parameter matter
        for p in D.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = inputs()
    with torch.no_grad():
        tokens = F.conv2d(x, D.patch_embed.weight, D.patch_embed.bias, stride=PATCH)
        tokens = tokens.flatten(2).transpose(1, 2) + sincos_position_embedding(WIDTH, SIZE // PATCH)
        h = torch.cat([D.cls_token.expand(3, -1, -1), tokens], dim=1)
        for block in D.blocks:
            h = block(h, D.rope)
        feature = rms_norm_affine(h[:, 0], D.norm) @ D.head.weight.T + D.head.bias
        lin1, lin2 = D.cmap[0], D.cmap[2]
        e = D.class_embed.weight[y]
        e = F.silu(e @ (lin1.weight * 0.01).T + lin1.bias * 0.01)
        cmap = e @ (lin2.weight * 0.01).T + lin2.bias * 0.01
        expected = (feature * cmap).sum(-1)
        logits, projected = D(x, y, project_first=3)
    # the projector reads the last block's tokens, before the head norm
    torch.testing.assert_close(projected, D.projector(h), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_changing_the_class_changes_the_logit():
    D = make_discriminator()
    x, y = inputs(batch=4)
    with torch.no_grad():
        base = D(x, y)
        other = D(x, (y + 1) % CLASSES)
    assert (other - base).abs().min() > 1e-6


def test_class_map_uses_equalised_layers_with_lr_mult_001():
    D = make_discriminator()
    assert D.head.out_features == CMAP
    assert D.class_embed.weight.shape == (CLASSES, CMAP)
    assert isinstance(D.cmap[0], EqualLinear) and isinstance(D.cmap[2], EqualLinear)
    assert isinstance(D.cmap[1], nn.SiLU)
    assert D.cmap[0].lr_mult == 0.01 and D.cmap[2].lr_mult == 0.01


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

def test_layer_scale_starts_at_01_and_is_learnable():
    D = make_discriminator()
    for block in D.blocks:
        for gamma in (block.gamma_attn, block.gamma_mlp):
            assert isinstance(gamma, nn.Parameter) and gamma.requires_grad
            assert gamma.shape == (WIDTH,)
            assert torch.equal(gamma, torch.full((WIDTH,), 0.1))


def test_block_is_prenorm_with_layer_scale_and_unrotated_cls():
    torch.manual_seed(0)
    block = DiscriminatorBlock(WIDTH, 2, 48)
    with torch.no_grad():
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm2.weight.uniform_(0.5, 1.5)
        block.gamma_attn.uniform_(0.1, 1.0)
        block.gamma_mlp.uniform_(0.1, 1.0)
    rope = RotaryEmbedding2D(WIDTH // 2, SIZE // PATCH)
    x = torch.randn(2, 1 + TOKENS, WIDTH)
    calls = []
    original = block.attn.forward

    def recording(h, r, num_prefix_tokens=0):
        calls.append(num_prefix_tokens)
        return original(h, r, num_prefix_tokens)

    block.attn.forward = recording
    with torch.no_grad():
        out = block(x, rope)
        h = x + block.gamma_attn * original(rms_norm_affine(x, block.norm1), rope, num_prefix_tokens=1)
        expected = h + block.gamma_mlp * block.mlp(rms_norm_affine(h, block.norm2))
    assert calls == [1]  # the [cls] token is a prefix: RoPE rotates only the spatial tokens
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_zero_layer_scale_makes_a_block_the_identity():
    torch.manual_seed(0)
    block = DiscriminatorBlock(WIDTH, 2, 48)
    with torch.no_grad():
        block.gamma_attn.zero_()
        block.gamma_mlp.zero_()
    rope = RotaryEmbedding2D(WIDTH // 2, SIZE // PATCH)
    x = torch.randn(2, 1 + TOKENS, WIDTH)
    with torch.no_grad():
        assert torch.equal(block(x, rope), x)


def test_cls_token_and_class_embedding_init_std_002():
    D = make_discriminator(width=256, cmap_dim=256, num_classes=100)
    assert D.cls_token.shape == (1, 1, 256)
    assert D.cls_token.std().item() == pytest.approx(0.02, rel=0.25)
    assert D.class_embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    fan_in = LEVELS * CHANNELS * PATCH * PATCH
    xavier_std = math.sqrt(2.0 / (fan_in + 256))
    assert D.patch_embed.weight.std().item() == pytest.approx(xavier_std, rel=0.1)


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    D = make_discriminator().train()
    x, y = inputs()

    def run():
        D.zero_grad()
        out = D(x, y)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in D.named_parameters()}

    out_plain, grads_plain = run()
    D.grad_checkpointing = True
    out_ckpt, grads_ckpt = run()
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=1e-6)
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------
# REPA projector
# ---------------------------------------------------------------------------------------------

def test_projector_exists_only_with_a_teacher_dim():
    assert make_discriminator().projector is None
    assert not any("projector" in n for n, _ in make_discriminator().named_parameters())
    D = make_discriminator(teacher_dim=24)
    linears = [m for m in D.projector if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(WIDTH, 40), (40, 40), (40, 24)]
    assert sum(isinstance(m, nn.SiLU) for m in D.projector) == 2
    x, y = inputs()
    with torch.no_grad():
        assert D(x, y, project_first=3)[1].shape == (3, 1 + TOKENS, 24)


# ---------------------------------------------------------------------------------------------
# stack_levels
# ---------------------------------------------------------------------------------------------

def test_stack_levels_is_level_major_with_level_one_first():
    K, B, C, H, W = 4, 3, 2, 5, 5
    levels = torch.randn(K, B, C, H, W)
    stacked = stack_levels(levels)
    assert stacked.shape == (B, K * C, H, W)
    for k in range(K):
        for c in range(C):
            assert torch.equal(stacked[:, k * C + c], levels[k, :, c])
