"""Building blocks shared by G and D (docs/method.md §2, §3)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gatgan.models.layers import (
    NORM_EPS,
    Attention,
    EqualLinear,
    RotaryEmbedding2D,
    SwiGLU,
    normalize_2nd_moment,
    patchify,
    sincos_position_embedding,
    swiglu_hidden_size,
    unpatchify,
    xavier_init_,
)


# ---------------------------------------------------------------------------------------------
# Slow references, written from the spec with explicit loops and 2x2 rotation matrices.
# ---------------------------------------------------------------------------------------------

def reference_rope(x: torch.Tensor, grid: int, theta: float = 10000.0) -> torch.Tensor:
    """x [..., grid*grid, head_dim], row-major tokens. First half of the head rotates with the row
    index, second half with the column index; channel pair i of a half (channels 2i, 2i+1) turns
    by position * theta^(-2i/half)."""
    head_dim = x.shape[-1]
    half = head_dim // 2
    out = torch.empty_like(x)
    for token in range(grid * grid):
        row, col = divmod(token, grid)
        for axis, position in ((0, row), (1, col)):
            for i in range(half // 2):
                angle = position * theta ** (-2.0 * i / half)
                c, s = math.cos(angle), math.sin(angle)
                rotation = torch.tensor([[c, -s], [s, c]], dtype=x.dtype)
                channels = [axis * half + 2 * i, axis * half + 2 * i + 1]
                pair = x[..., token, channels]  # [..., 2]
                out[..., token, channels] = pair @ rotation.T
    return out


def reference_attention(attn: Attention, x: torch.Tensor, grid: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, q and k RMS-normalised (affine) then rotated; prefix
    tokens stay unrotated."""
    B, T, D = x.shape
    H, d = attn.num_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    heads = []
    for h in range(H):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        qh = qh / torch.sqrt(qh.pow(2).mean(-1, keepdim=True) + NORM_EPS) * attn.q_norm.weight
        kh = kh / torch.sqrt(kh.pow(2).mean(-1, keepdim=True) + NORM_EPS) * attn.k_norm.weight
        n = num_prefix_tokens
        qh = torch.cat([qh[:, :n], reference_rope(qh[:, n:], grid)], dim=1)
        kh = torch.cat([kh[:, :n], reference_rope(kh[:, n:], grid)], dim=1)
        scores = qh @ kh.transpose(1, 2) / math.sqrt(d)
        heads.append(torch.softmax(scores, dim=-1) @ vh)
    out = torch.cat(heads, dim=-1)
    return out @ attn.proj.weight.T + attn.proj.bias


# ---------------------------------------------------------------------------------------------
# EqualLinear
# ---------------------------------------------------------------------------------------------

def test_equal_linear_effective_weight_has_xavier_gain_one_scale():
    torch.manual_seed(0)
    fan_in, fan_out, lr_mult = 384, 256, 0.01
    layer = EqualLinear(fan_in, fan_out, lr_mult=lr_mult)
    effective = layer.weight.detach() * lr_mult
    bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier_uniform, gain 1
    assert effective.abs().max() <= bound * (1 + 1e-6)
    assert effective.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    # The stored parameter is the effective weight divided by lr_mult.
    assert layer.weight.detach().std().item() == pytest.approx(bound / math.sqrt(3) / lr_mult, rel=0.03)
    assert torch.equal(layer.bias.detach(), torch.zeros(fan_out))

    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, fan_in)
    expected = F.linear(x, layer.weight * lr_mult, layer.bias * lr_mult)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("lr_mult", [0.01, 0.5])
def test_equal_linear_gradient_of_stored_parameters_is_lr_mult_times_plain_gradient(lr_mult):
    torch.manual_seed(0)
    layer = EqualLinear(16, 8, lr_mult=lr_mult)
    with torch.no_grad():
        layer.bias.normal_()
    x, target = torch.randn(4, 16), torch.randn(4, 8)
    (layer(x) - target).square().sum().backward()

    weight = (layer.weight.detach() * lr_mult).requires_grad_(True)
    bias = (layer.bias.detach() * lr_mult).requires_grad_(True)
    (F.linear(x, weight, bias) - target).square().sum().backward()

    torch.testing.assert_close(layer.weight.grad, lr_mult * weight.grad)
    torch.testing.assert_close(layer.bias.grad, lr_mult * bias.grad)


# ---------------------------------------------------------------------------------------------
# normalize_2nd_moment
# ---------------------------------------------------------------------------------------------

def test_normalize_2nd_moment_gives_unit_mean_square_and_keeps_direction():
    torch.manual_seed(0)
    x = torch.randn(6, 64) * torch.tensor([0.1, 0.5, 1.0, 3.0, 50.0, 1e3])[:, None]
    out = normalize_2nd_moment(x)
    torch.testing.assert_close(out.square().mean(-1), torch.ones(6), rtol=1e-5, atol=1e-5)
    cosine = F.cosine_similarity(out, x, dim=-1)
    torch.testing.assert_close(cosine, torch.ones(6))


# ---------------------------------------------------------------------------------------------
# sin-cos position embedding
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, grid", [(32, 4), (64, 8), (384, 16)])
def test_sincos_embedding_shape_and_distinguishes_every_position(width, grid):
    emb = sincos_position_embedding(width, grid)
    assert emb.shape == (grid * grid, width)
    assert emb.dtype == torch.float32
    distances = torch.cdist(emb.double(), emb.double())
    distances.fill_diagonal_(float("inf"))
    assert distances.min() > 1e-3


def test_sincos_embedding_row_half_and_column_half_in_row_major_order():
    width, grid = 32, 5
    emb = sincos_position_embedding(width, grid).view(grid, grid, width)
    rows, cols = emb[..., : width // 2], emb[..., width // 2:]
    # the first half depends only on the row, the second only on the column
    assert torch.equal(rows, rows[:, :1].expand_as(rows))
    assert torch.equal(cols, cols[:1].expand_as(cols))
    assert not torch.equal(rows[0, 0], rows[1, 0])
    assert not torch.equal(cols[0, 0], cols[0, 1])
    # position 0 encodes sin(0) = 0 and cos(0) = 1
    torch.testing.assert_close(emb[0, 0], torch.cat([torch.zeros(width // 4), torch.ones(width // 4)] * 2))


def test_sincos_embedding_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError):
        sincos_position_embedding(30, 4)


# ---------------------------------------------------------------------------------------------
# 2-D RoPE
# ---------------------------------------------------------------------------------------------

def test_rope_matches_explicit_per_axis_pair_rotations():
    torch.manual_seed(0)
    grid, head_dim = 4, 16
    rope = RotaryEmbedding2D(head_dim, grid).double()
    x = torch.randn(2, 3, grid * grid, head_dim, dtype=torch.float64)
    torch.testing.assert_close(rope(x), reference_rope(x, grid), rtol=1e-6, atol=1e-6)


def test_rope_preserves_norms():
    torch.manual_seed(0)
    grid, head_dim = 6, 24
    rope = RotaryEmbedding2D(head_dim, grid)
    x = torch.randn(2, 3, grid * grid, head_dim) * 5
    out = rope(x)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, x)  # it does rotate


def test_rope_attention_scores_depend_only_on_relative_2d_offset():
    torch.manual_seed(0)
    grid, head_dim = 5, 16
    rope = RotaryEmbedding2D(head_dim, grid).double()
    q = torch.randn(head_dim, dtype=torch.float64).expand(grid * grid, head_dim)
    k = torch.randn(head_dim, dtype=torch.float64).expand(grid * grid, head_dim)
    scores = (rope(q) @ rope(k).T).view(grid, grid, grid, grid)  # [r1, c1, r2, c2]
    by_offset: dict[tuple[int, int], list[float]] = {}
    for r1 in range(grid):
        for c1 in range(grid):
            for r2 in range(grid):
                for c2 in range(grid):
                    by_offset.setdefault((r2 - r1, c2 - c1), []).append(scores[r1, c1, r2, c2].item())
    for values in by_offset.values():
        assert max(values) - min(values) < 1e-5  # the rotation tables are stored in float32
    # ... and the score does change with the offset, along each axis separately
    base = by_offset[(0, 0)][0]
    assert abs(by_offset[(1, 0)][0] - base) > 1e-3
    assert abs(by_offset[(0, 1)][0] - base) > 1e-3


def test_rope_distinguishes_row_and_column_offsets():
    """An offset along rows must not act like the same offset along columns: the two halves of the
    head carry different axes."""
    torch.manual_seed(1)
    grid, head_dim = 4, 16
    rope = RotaryEmbedding2D(head_dim, grid).double()
    q = torch.randn(head_dim, dtype=torch.float64).expand(grid * grid, head_dim)
    k = torch.randn(head_dim, dtype=torch.float64).expand(grid * grid, head_dim)
    scores = rope(q) @ rope(k).T
    assert abs(scores[0, 1 * grid + 0] - scores[0, 0 * grid + 1]) > 1e-3


def test_rope_rejects_head_dim_not_divisible_by_4():
    with pytest.raises(ValueError):
        RotaryEmbedding2D(18, 4)


# ---------------------------------------------------------------------------------------------
# patchify / unpatchify
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [1, 2, 4])
def test_patchify_and_unpatchify_are_inverses(patch):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    tokens = patchify(x, patch)
    assert tokens.shape == (2, (8 // patch) ** 2, patch * patch * 3)
    assert torch.equal(unpatchify(tokens, patch, 3), x)
    assert torch.equal(patchify(unpatchify(tokens, patch, 3), patch), tokens)


def test_patchify_uses_row_major_tokens_and_channel_last_patches():
    torch.manual_seed(0)
    B, C, size, p = 2, 3, 8, 2
    grid = size // p
    x = torch.randn(B, C, size, size)
    tokens = patchify(x, p)
    for r in range(grid):
        for c in range(grid):
            patch = x[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p]  # [B, C, p, p]
            assert torch.equal(tokens[:, r * grid + c], patch.permute(0, 2, 3, 1).reshape(B, -1))


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_prefix_tokens", [0, 1])
def test_attention_matches_slow_reference_with_qk_norm_and_rope(num_prefix_tokens):
    torch.manual_seed(0)
    dim, heads, grid = 32, 2, 4
    attn = Attention(dim, heads)
    with torch.no_grad():  # non-trivial QK-norm gains and biases, so the reference must use them
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
        attn.qkv.bias.normal_(std=0.5)
        attn.proj.bias.normal_(std=0.5)
    rope = RotaryEmbedding2D(dim // heads, grid)
    x = torch.randn(2, num_prefix_tokens + grid * grid, dim) * 2
    with torch.no_grad():
        out = attn(x, rope, num_prefix_tokens=num_prefix_tokens)
        expected = reference_attention(attn, x, grid, num_prefix_tokens)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_attention_prefix_token_is_not_rotated():
    """With one prefix token, rotating it as if it sat on the grid (here: shifting every token's
    position by one) must give a different result from the module."""
    torch.manual_seed(0)
    dim, heads, grid = 32, 2, 4
    attn = Attention(dim, heads)
    rope = RotaryEmbedding2D(dim // heads, grid)
    x = torch.randn(1, 1 + grid * grid, dim)
    with torch.no_grad():
        with_prefix = attn(x, rope, num_prefix_tokens=1)
        torch.testing.assert_close(with_prefix, reference_attention(attn, x, grid, 1), rtol=1e-5, atol=1e-5)
        # the spatial tokens must see positions 0..T-1, not 1..T
        wrong = reference_attention(attn, x[:, :grid * grid], grid, 0)
        assert not torch.allclose(with_prefix[:, 1:], wrong, atol=1e-3)


def test_attention_rejects_width_not_divisible_by_heads():
    with pytest.raises(ValueError):
        Attention(30, 4)


# ---------------------------------------------------------------------------------------------
# SwiGLU
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dim, hidden", [(384, 1024), (768, 2048), (1024, 2730), (1152, 3072)])
def test_swiglu_hidden_size_is_two_thirds_of_4x(dim, hidden):
    assert swiglu_hidden_size(dim) == hidden
    assert swiglu_hidden_size(dim) == int(2 / 3 * 4 * dim)


def test_swiglu_is_silu_gate_times_value_then_projection():
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12)
    assert mlp.w12.in_features == 8 and mlp.w12.out_features == 24
    assert mlp.w3.in_features == 12 and mlp.w3.out_features == 8
    x = torch.randn(3, 5, 8)
    h = x @ mlp.w12.weight.T + mlp.w12.bias
    gate, value = h[..., :12], h[..., 12:]
    expected = (gate * torch.sigmoid(gate) * value) @ mlp.w3.weight.T + mlp.w3.bias
    torch.testing.assert_close(mlp(x), expected)


# ---------------------------------------------------------------------------------------------
# xavier_init_
# ---------------------------------------------------------------------------------------------

def test_xavier_init_treats_convs_as_flattened_linear_maps_and_zeroes_biases():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(96, 64), nn.Conv2d(16, 128, kernel_size=4))
    for m in module:
        nn.init.constant_(m.bias, 1.0)
    xavier_init_(module)
    for m, fan_in, fan_out in [(module[0], 96, 64), (module[1], 16 * 4 * 4, 128)]:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert m.weight.abs().max() <= bound * (1 + 1e-6)
        assert m.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
