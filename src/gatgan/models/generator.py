"""The GAT generator: a StyleGAN-like mapping network feeding a plain ViT through adaptive
RMSNorm, with K residually accumulated exits for Multi-level Noise-perturbed Guidance
(docs/method.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import (
    NORM_EPS,
    Attention,
    EqualLinear,
    RotaryEmbedding2D,
    repa_projector,
    SwiGLU,
    normalize_2nd_moment,
    sincos_position_embedding,
    swiglu_hidden_size,
    unpatchify,
    xavier_init_,
)

MAPPING_LR_MULT = 0.01  # docs/method.md §2.1: the mapping MLP learns 100x slower under Adam
GUIDANCE_FORMS = ("intended", "authors")
MODULATION_INIT_GAIN = 0.1  # docs/method.md §2.3: modulation starts near (not at) zero


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), eps=NORM_EPS)


class MappingNetwork(nn.Module):
    """(z, y) -> style w. z and the class embedding are normalised separately, then concatenated."""

    def __init__(self, z_dim: int, num_classes: int, width: int, embed_dim: int = 64,
                 lr_mult: float = MAPPING_LR_MULT):
        super().__init__()
        self.z_dim = z_dim
        self.class_embed = nn.Embedding(num_classes, embed_dim)
        self.fc1 = EqualLinear(z_dim + embed_dim, width, lr_mult=lr_mult)
        self.fc2 = EqualLinear(width, width, lr_mult=lr_mult)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(self.class_embed(y))], dim=1)
        return self.fc2(F.silu(self.fc1(h)))

    def class_average(self, z: torch.Tensor, form: str = "intended") -> torch.Tensor:
        """For each z [B, z_dim], the mean style over all classes [B, width] (guidance's w_null).
        "authors": as their code computes it, normalising the [B, classes, dim] inputs over the class
        axis (normalize_2nd_moment's default dim=1 there), so each repeated z becomes about sign(z)."""
        classes = torch.arange(self.class_embed.num_embeddings, device=z.device)
        if form == "intended":
            return torch.stack([self(zi.expand(len(classes), -1), classes).mean(0) for zi in z])
        if form != "authors":
            raise ValueError(f"guidance form must be one of {GUIDANCE_FORMS}, got {form!r}")
        zs = z[:, None].expand(-1, len(classes), -1)
        ys = self.class_embed(classes)[None].expand(len(z), -1, -1)
        h = torch.cat([normalize_2nd_moment(zs, dim=1), normalize_2nd_moment(ys, dim=1)], dim=-1)
        return self.fc2(F.silu(self.fc1(h))).mean(1)


def _modulation(width: int, chunks: int) -> nn.Sequential:
    linear = nn.Linear(width, chunks * width)
    return nn.Sequential(nn.SiLU(), linear)


class GeneratorBlock(nn.Module):
    """Adaptive RMSNorm (scale only, no shift) + adaptive LayerScale gates, both from w."""

    def __init__(self, width: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.attn = Attention(width, num_heads)
        self.mlp = SwiGLU(width, mlp_hidden)
        self.modulation = _modulation(width, 4)

    def forward(self, x: torch.Tensor, w: torch.Tensor, rope: RotaryEmbedding2D) -> torch.Tensor:
        scale_attn, gate_attn, scale_mlp, gate_mlp = self.modulation(w)[:, None].chunk(4, dim=-1)
        x = x + gate_attn * self.attn(rms_norm(x) * (1 + scale_attn), rope)
        return x + gate_mlp * self.mlp(rms_norm(x) * (1 + scale_mlp))


class ExitLayer(nn.Module):
    """One MNG exit: modulated RMSNorm then a linear map to patch pixels (not zero-initialised, so
    every exit contributes from the first step)."""

    def __init__(self, width: int, patch_size: int, out_channels: int):
        super().__init__()
        self.modulation = _modulation(width, 1)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.linear(rms_norm(x) * (1 + self.modulation(w)[:, None]))


class Generator(nn.Module):
    """Class-conditional one-step generator.

    The input tokens are a constant sin-cos grid (the authors' code also embeds a random latent
    but multiplies it by zero; we skip that dead computation). `position_layout` "column-first"
    builds that grid as the authors' code does, for their converted weights (`gatgan.convert`). Blocks are split into
    `num_exits` equal stages; exit k returns the running sum of the first k exit heads, so the
    final image is the sum of all heads and early stages are supervised directly by MNG.
    """

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
        z_dim: int = 64,
        num_exits: int = 4,
        mlp_ratio: float = 4.0,
        w_avg_beta: float = 0.995,
        projector_dim: int = 2048,
        teacher_dim: int | None = None,
        mapping_lr_mult: float = MAPPING_LR_MULT,
        position_layout: str = "row-first",
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input size {input_size} is not divisible by patch size {patch_size}")
        if num_exits < 1 or depth % num_exits:
            raise ValueError(f"depth {depth} must be a positive multiple of num_exits {num_exits}")
        self.input_size, self.channels, self.patch_size = input_size, channels, patch_size
        self.width, self.depth, self.num_classes, self.z_dim = width, depth, num_classes, z_dim
        self.num_exits, self.w_avg_beta, self.position_layout = num_exits, w_avg_beta, position_layout
        self.grad_checkpointing = False
        grid = input_size // patch_size
        self.register_buffer("pos_embed", sincos_position_embedding(width, grid, position_layout)[None], persistent=False)
        self.rope = RotaryEmbedding2D(width // num_heads, grid)
        self.mapping = MappingNetwork(z_dim, num_classes, width, lr_mult=mapping_lr_mult)
        self.blocks = nn.ModuleList(
            GeneratorBlock(width, num_heads, swiglu_hidden_size(width, mlp_ratio)) for _ in range(depth)
        )
        self.exits = nn.ModuleList(ExitLayer(width, patch_size, channels) for _ in range(num_exits))
        self.register_buffer("w_avg", torch.zeros(num_classes, width))
        # Only for the optional REPA alignment of the generator's own tokens (off in the paper).
        self.projector = None if teacher_dim is None else repa_projector(width, projector_dim, teacher_dim)
        self._initialize()

    def _initialize(self) -> None:
        xavier_init_(self)
        nn.init.normal_(self.mapping.class_embed.weight, std=0.02)
        for module in [*self.blocks, *self.exits]:
            nn.init.xavier_uniform_(module.modulation[-1].weight, gain=MODULATION_INIT_GAIN)

    @property
    def exit_every(self) -> int:
        return self.depth // self.num_exits

    def truncate(self, w: torch.Tensor, y: torch.Tensor, truncation: float) -> torch.Tensor:
        """StyleGAN convention: 1.0 leaves w unchanged, 0.0 returns the class's average w.
        (The authors' code uses psi_theirs = 1 - truncation.)"""
        return torch.lerp(self.w_avg[y].to(w.dtype), w, truncation)

    def guide(self, w: torch.Tensor, z: torch.Tensor, scale: float, form: str = "intended") -> torch.Tensor:
        """Guidance in w space: push w away from the class-averaged w of the same z (docs/method.md §2.5);
        `form` chooses how that average is computed (see `MappingNetwork.class_average`)."""
        return torch.lerp(self.mapping.class_average(z, form), w, scale)

    @torch.no_grad()
    def update_w_avg(self, w: torch.Tensor, y: torch.Tensor) -> None:
        """Per-class running mean of w over the classes present in the batch. Summed across
        processes when distributed, so every rank keeps the same truncation centre."""
        sums = torch.zeros_like(self.w_avg).index_add_(0, y, w.detach().float())
        counts = torch.zeros(self.num_classes, device=w.device).index_add_(0, y, torch.ones_like(y, dtype=torch.float))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        present = counts > 0
        batch_mean = sums[present] / counts[present, None]
        self.w_avg[present] = torch.lerp(batch_mean, self.w_avg[present], self.w_avg_beta)

    def synthesize(self, w: torch.Tensor, all_exits: bool = False,
                   project: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """w [B, width] -> image [B, C, H, W], or every exit's running sum [K, B, C, H, W].
        With `project`, also the REPA projections of the last block's tokens [B, T, teacher_dim]."""
        x = self.pos_embed.to(w.dtype).expand(w.shape[0], -1, -1)
        image, exits = None, []
        for index, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, w, self.rope, use_reentrant=False)
            else:
                x = block(x, w, self.rope)
            if (index + 1) % self.exit_every == 0:
                head = self.exits[(index + 1) // self.exit_every - 1]
                out = unpatchify(head(x, w), self.patch_size, self.channels)
                image = out if image is None else image + out
                exits.append(image)
        out = torch.stack(exits) if all_exits else image
        if not project:
            return out
        if self.projector is None:
            raise ValueError("this generator was built without a REPA projector (teacher_dim=None)")
        return out, self.projector(x)

    def forward(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        truncation: float = 1.0,
        guidance: float = 1.0,
        all_exits: bool = False,
        update_w_avg: bool = False,
        project: bool = False,
        guidance_form: str = "intended",
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """guidance_form "intended": guide, then truncate; "authors": their class average, and
        truncation first, then guidance, as their code runs."""
        w = self.mapping(z, y)
        if update_w_avg:
            self.update_w_avg(w, y)
        guide_first = guidance_form == "intended"
        if guidance != 1.0 and guide_first:
            w = self.guide(w, z, guidance)
        if truncation != 1.0:
            w = self.truncate(w, y, truncation)
        if guidance != 1.0 and not guide_first:
            w = self.guide(w, z, guidance, guidance_form)
        return self.synthesize(w, all_exits, project)
