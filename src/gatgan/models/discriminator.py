"""The GAT discriminator: a plain ViT over the K noise-perturbed levels stacked along channels,
with a [cls] token, projection class conditioning and an optional REPA projector (docs/method.md §3)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    NORM_EPS,
    Attention,
    EqualLinear,
    RotaryEmbedding2D,
    repa_projector,
    SwiGLU,
    sincos_position_embedding,
    swiglu_hidden_size,
    xavier_init_,
)

CMAP_LR_MULT = 0.01  # docs/method.md §3: equalised class-map MLP
LAYER_SCALE_INIT = 0.1


class DiscriminatorBlock(nn.Module):
    """Pre-norm block with affine RMSNorm and learnable LayerScale; no conditioning inside."""

    def __init__(self, width: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.RMSNorm(width, eps=NORM_EPS)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.RMSNorm(width, eps=NORM_EPS)
        self.mlp = SwiGLU(width, mlp_hidden)
        self.gamma_attn = nn.Parameter(torch.full((width,), LAYER_SCALE_INIT))
        self.gamma_mlp = nn.Parameter(torch.full((width,), LAYER_SCALE_INIT))

    def forward(self, x: torch.Tensor, rope: RotaryEmbedding2D) -> torch.Tensor:
        x = x + self.gamma_attn * self.attn(self.norm1(x), rope, num_prefix_tokens=1)
        return x + self.gamma_mlp * self.mlp(self.norm2(x))


class Discriminator(nn.Module):
    """One logit per sample for all K levels jointly: D sees the levels as 16 (K*C) channels."""

    def __init__(
        self,
        *,
        input_size: int,
        channels: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        num_classes: int,
        num_levels: int = 4,
        mlp_ratio: float = 4.0,
        cmap_dim: int = 2048,
        projector_dim: int = 2048,
        teacher_dim: int | None = None,
        position_layout: str = "row-first",
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}")
        self.input_size, self.channels, self.patch_size = input_size, channels, patch_size
        self.width, self.depth, self.num_classes, self.num_levels = width, depth, num_classes, num_levels
        self.position_layout = position_layout  # "column-first" for the authors' weights, as in `Generator`
        self.grad_checkpointing = False
        grid = input_size // patch_size
        self.patch_embed = nn.Conv2d(channels * num_levels, width, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_position_embedding(width, grid, position_layout)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.rope = RotaryEmbedding2D(width // num_heads, grid)
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(width, num_heads, swiglu_hidden_size(width, mlp_ratio)) for _ in range(depth)
        )
        self.norm = nn.RMSNorm(width, eps=NORM_EPS)
        self.head = nn.Linear(width, cmap_dim)
        self.class_embed = nn.Embedding(num_classes, cmap_dim)
        self.cmap = nn.Sequential(
            EqualLinear(cmap_dim, cmap_dim, lr_mult=CMAP_LR_MULT),
            nn.SiLU(),
            EqualLinear(cmap_dim, cmap_dim, lr_mult=CMAP_LR_MULT),
        )
        self.projector = None if teacher_dim is None else repa_projector(width, projector_dim, teacher_dim)
        self._initialize()

    def _initialize(self) -> None:
        xavier_init_(self)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.class_embed.weight, std=0.02)

    @property
    def token_grid(self) -> int:
        return self.input_size // self.patch_size

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, project_first: int = 0
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [B, K*C, H, W] (levels stacked by `stack_levels`), y [B] -> logits [B].

        With `project_first=n`, also returns the REPA projections [n, 1 + T, teacher_dim] of the
        first n samples' last-block tokens ([cls] first, before the head norm, docs/method.md §5).
        Projecting inside forward keeps the projector in the graph DDP tracks; projecting only
        the first n keeps the real branch's cost, not the fake and penalty copies'.
        """
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        h = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, self.rope, use_reentrant=False)
            else:
                h = block(h, self.rope)
        logits = (self.head(self.norm(h[:, 0])) * self.cmap(self.class_embed(y))).sum(dim=-1)
        if not project_first:
            return logits
        if self.projector is None:
            raise ValueError("this discriminator was built without a REPA projector (teacher_dim=None)")
        return logits, self.projector(h[:project_first])


def stack_levels(levels: torch.Tensor) -> torch.Tensor:
    """[K, B, C, H, W] -> [B, K*C, H, W], level-major along channels (level 1 first)."""
    K, B, C, H, W = levels.shape
    return levels.permute(1, 0, 2, 3, 4).reshape(B, K * C, H, W)
