"""Building blocks shared by the GAT generator and discriminator (docs/method.md §2, §3)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8, dim: int = -1) -> torch.Tensor:
    """Scale each row to unit mean square, so z and the class embedding enter the mapping MLP
    with equal weight whatever their dimensions or norms. (`dim` other than -1 only reproduces the
    authors' guidance, see `Generator.guide`.)"""
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Linear layer with StyleGAN's equalised learning rate.

    Parameters are stored divided by `lr_mult` and multiplied back in the forward pass, so the
    layer starts exactly like a xavier-initialised linear layer while Adam's per-parameter step
    (which ignores gradient scale) moves its effective weights `lr_mult` times slower.
    """

    def __init__(self, in_features: int, out_features: int, lr_mult: float = 1.0, bias: bool = True):
        super().__init__()
        self.lr_mult = lr_mult
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight, gain=1.0 / lr_mult)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mult if self.bias is not None else None
        return F.linear(x, self.weight * self.lr_mult, bias)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, lr_mult={self.lr_mult}"


POSITION_LAYOUTS = ("row-first", "column-first")


def sincos_position_embedding(width: int, grid: int, layout: str = "row-first") -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding [grid*grid, width]: half the channels encode the row, half
    the column. Row-major token order, matching `patchify`. `layout` says which coordinate takes the
    first half: "row-first" is gatgan's; "column-first" is the MAE/DiT code's (and the authors'),
    a permutation of the channels that weights trained with that table need."""
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}")
    if layout not in POSITION_LAYOUTS:
        raise ValueError(f"position layout must be one of {POSITION_LAYOUTS}, got {layout!r}")
    coords = np.arange(grid, dtype=np.float64)
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4))

    def encode(positions: np.ndarray) -> np.ndarray:
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    halves = [encode(rows), encode(cols)] if layout == "row-first" else [encode(cols), encode(rows)]
    return torch.from_numpy(np.concatenate(halves, axis=1)).float()


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a 90-degree turn of each channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class RotaryEmbedding2D(nn.Module):
    """Axial 2-D rotary position embedding (EVA-02 style) over a square token grid.

    The first half of each head's channels rotates with the row index, the second half with the
    column index; within each half, interleaved channel pairs share one frequency
    (theta ** (-2i / half), the "language" frequencies). The whole head dimension is rotated.
    """

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        half = head_dim // 2
        freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float64)[: half // 2] / half)
        angles = torch.outer(torch.arange(grid, dtype=torch.float64), freqs).repeat_interleave(2, dim=-1)
        rows = angles[:, None, :].expand(grid, grid, half)
        cols = angles[None, :, :].expand(grid, grid, half)
        table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
        self.register_buffer("cos", table.cos().float(), persistent=False)
        self.register_buffer("sin", table.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., T, head_dim] with T = grid*grid tokens in row-major order."""
        return x * self.cos.to(x.dtype) + _rotate_pairs(x) * self.sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys (QK-norm keeps logits bounded
    as width grows) and 2-D RoPE on the spatial tokens. Leading `num_prefix_tokens` (the
    discriminator's [cls]) are not rotated."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding2D, num_prefix_tokens: int = 0) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        n = num_prefix_tokens
        q = torch.cat([q[:, :, :n], rope(q[:, :, n:])], dim=2)
        k = torch.cat([k[:, :, :n], rope(k[:, :, n:])], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


def swiglu_hidden_size(dim: int, mlp_ratio: float = 4.0) -> int:
    """2/3 of the GELU-MLP width, so the gated MLP costs what a 4x GELU MLP costs."""
    return int(2 / 3 * mlp_ratio * dim)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def repa_projector(width: int, hidden: int, out: int) -> nn.Sequential:
    """The REPA projection head, token-wise: width -> hidden -> hidden -> teacher width (docs/method.md §3)."""
    return nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], row-major tokens, channel-last within a patch."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """Inverse of `patchify` for a square grid."""
    B, T, _ = tokens.shape
    grid = math.isqrt(T)
    x = tokens.reshape(B, grid, grid, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, grid * patch, grid * patch)


def xavier_init_(module: nn.Module) -> None:
    """xavier-uniform weights and zero biases for every Linear and Conv2d (convs as flattened
    linear maps), the initialisation both GAT networks start from before their special cases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
