"""A small self-supervised image encoder that gatgan trains itself, to serve as the REPA teacher
where no pretrained one (DINOv2) is available, as on the embedded offline Fashion-MNIST stack.

Objective: SimCLR's NT-Xent between two augmented views of each image (random resized crop with
flip, brightness/contrast jitter, pixel noise), on an MLP projection of the trunk's pooled feature
vector (from which [cls] is derived), plus the same loss between *patch* features at corresponding
image locations of the two views. The crop
geometry of each view is known, so a point of the original image can be found in both feature maps
(bilinear sampling); the dense term makes the patch map -- what REPA aligns the discriminator's
tokens to -- locally discriminative rather than only good once pooled. No labels are used anywhere
in training: `train_ssl_encoder` takes none.

The network is a small CNN, not a ViT: at this size and on a CPU, convolutions learn far more per
second. The first 2x reduction is a space-to-depth rearrangement (as in the small VAE) so no layer
runs at full resolution; a stride-2 convolution then gives a 4-pixel patch grid (8x8 for 32x32).
BatchNorm makes the short training converge fastest; in eval mode (how a teacher is always used)
it is a fixed per-channel affine map, so each image's features do not depend on its batch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..auxnets import affine_resample, conv_bn_relu, warmup_cosine_lr
from .base import Teacher, TeacherFeatures

WEIGHTS_FILE = "teacher.safetensors"


class _ResBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input, then ReLU (the ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channel axis of [B, C, h, w] (no affine): each patch feature has zero mean
    and unit variance over its channels, as the normalised final-layer tokens of a ViT teacher do."""
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],)).movedim(-1, 1)


class SSLEncoder(Teacher):
    """uint8 images [B, C, H, W] (H, W multiples of 4) -> patches [B, dim, H/4, W/4] and cls [B, dim].

    The trunk's last map [hidden, H/4, W/4] gives both outputs:
    - patches: a 1x1 convolution of the map, minus its mean over the calibration images, then
      layer-normalised at each location;
    - cls: the map average-pooled to a cls_grid x cls_grid grid and flattened (the "representation"
      the contrastive head was trained on: a grid keeps the coarse layout a global mean loses, worth
      several points of probe accuracy on Fashion-MNIST), centred and projected onto its top `dim`
      principal components over the calibration images, then layer-normalised.
    Both are centred because REPA compares them by cosine, and post-ReLU features share one large
    positive direction that would otherwise dominate every cosine. The principal-component
    projection, rather than a learned linear layer, brings the pooled vector down to `dim` while
    keeping what varies most between images: a layer trained through the contrastive head keeps only
    the augmentation-invariant part, and lost ~3 points of linear-probe accuracy in our runs.
    `calibrate` sets these statistics (and the BatchNorm ones) from clean, unlabelled images;
    until then the projection keeps the first `dim` pooled coordinates and nothing is centred.
    """

    kind = "ssl_encoder"

    def __init__(self, image_channels: int = 1, dim: int = 128, width: int = 32, hidden: int = 64,
                 blocks: int = 1, cls_grid: int = 2) -> None:
        super().__init__()
        pooled = hidden * cls_grid ** 2
        if pooled < dim:
            raise ValueError(f"hidden * cls_grid**2 = {pooled} must be at least dim = {dim}")
        self.image_channels = image_channels
        self.dim = dim
        self.width = width
        self.hidden = hidden
        self.blocks = blocks
        self.cls_grid = cls_grid
        self.trunk = nn.Sequential(
            nn.PixelUnshuffle(2),  # [4C, H/2, W/2]
            *conv_bn_relu(4 * image_channels, width),
            *conv_bn_relu(width, width),
            *conv_bn_relu(width, hidden, stride=2),  # the 4-pixel patch grid
            *[_ResBlock(hidden) for _ in range(blocks)],
        )
        self.to_patches = nn.Conv2d(hidden, dim, 1)
        self.register_buffer("pooled_mean", torch.zeros(pooled))
        self.register_buffer("cls_basis", torch.eye(pooled)[:, :dim].clone())
        self.register_buffer("patch_mean", torch.zeros(dim))

    @property
    def pooled_dim(self) -> int:
        return self.hidden * self.cls_grid ** 2

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 values [0, 255] -> float32 [-1, 1]."""
        if images.shape[1] != self.image_channels:
            raise ValueError(f"this encoder takes {self.image_channels}-channel images, got {images.shape[1]}")
        return images.float().div(127.5).sub(1.0)

    def raw_features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, hidden * cls_grid**2], patch map [B, dim, h, w]) before centring, projection
        and normalisation: what training's heads see."""
        trunk = self.trunk(inputs)
        return F.adaptive_avg_pool2d(trunk, self.cls_grid).flatten(1), self.to_patches(trunk)

    def features(self, inputs: torch.Tensor) -> TeacherFeatures:
        pooled, patches = self.raw_features(inputs)
        cls = (pooled - self.pooled_mean) @ self.cls_basis
        patches = patches - self.patch_mean[:, None, None]
        return TeacherFeatures(cls=F.layer_norm(cls, (self.dim,)), patches=_channel_norm(patches))

    @torch.no_grad()
    def calibrate(self, images: np.ndarray | torch.Tensor, batch_size: int = 500) -> "SSLEncoder":
        """Sets, from clean uint8 images (no labels): the BatchNorm statistics (averaged over all of
        them, replacing the running averages over augmented training views), the pooled vector's
        mean and principal components, and the patch features' mean. Returns self in eval mode."""
        images = torch.as_tensor(np.asarray(images))
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the calibration batches
        self.train()
        for start in range(0, len(images), batch_size):
            self.trunk(self.preprocess(images[start:start + batch_size]))
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.eval()
        pooled, patch_sums = [], torch.zeros(self.dim, dtype=torch.float64)
        count = 0
        for start in range(0, len(images), batch_size):
            p, patches = self.raw_features(self.preprocess(images[start:start + batch_size]))
            pooled.append(p.double())
            patch_sums += patches.double().sum(dim=(0, 2, 3))
            count += patches.shape[0] * patches.shape[2] * patches.shape[3]
        pooled = torch.cat(pooled)
        mean = pooled.mean(0)
        covariance = (pooled - mean).T @ (pooled - mean) / max(1, len(pooled) - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        basis = eigenvectors.flip(1)[:, :self.dim]
        # eigh's signs are arbitrary; fix each component's sign so its largest entry is positive
        basis = basis * torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
        self.pooled_mean.copy_(mean.float())
        self.cls_basis.copy_(basis.float())
        self.patch_mean.copy_((patch_sums / max(1, count)).float())
        return self

    def config(self) -> dict:
        return {"image_channels": self.image_channels, "dim": self.dim, "width": self.width,
                "hidden": self.hidden, "blocks": self.blocks, "cls_grid": self.cls_grid}

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(directory) / WEIGHTS_FILE))

    @classmethod
    def from_directory(cls, directory: str | Path, config: dict) -> "SSLEncoder":
        config = {k: v for k, v in config.items() if k != "kind"}
        model = cls(**config)
        model.load_state_dict(load_file(str(Path(directory) / WEIGHTS_FILE)))
        return model.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# Augmentation: every view is an affine resampling of the image whose parameters are returned, so
# that corresponding locations of two views can be found for the dense term.


def _random_crops(batch: int, min_area: float, generator: torch.Generator) -> torch.Tensor:
    """Per image (scale_x, scale_y, shift_x, shift_y) in grid_sample's normalised coordinates: the
    view's point u in [-1, 1] samples the image at scale * u + shift. scale_x < 0 is a flip."""
    area = min_area + (1.0 - min_area) * torch.rand(batch, generator=generator)
    log_ratio = (torch.rand(batch, generator=generator) * 2 - 1) * math.log(4 / 3)
    scale_x = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    scale_y = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    shift_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - scale_x)
    shift_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - scale_y)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    return torch.stack([scale_x * flip, scale_y, shift_x, shift_y], dim=1)


def _augment(images: torch.Tensor, crops: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """uint8-valued [B, C, H, W] -> an augmented view in [-1, 1]: resized crop (crops), then
    brightness and contrast jitter and Gaussian noise."""
    batch = images.shape[0]
    x = affine_resample(images.float() / 255.0, crops)
    brightness = 1 + jitter * (2 * torch.rand(batch, 1, 1, 1, generator=generator) - 1)
    contrast = 1 + jitter * (2 * torch.rand(batch, 1, 1, 1, generator=generator) - 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    x = x + 0.04 * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1) * 2 - 1


def _nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each row of a must pick its own row of b (and vice versa) among all 2N - 1
    other rows of [a; b], by cosine similarity / temperature."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)


def _corresponding_points(crops_a: torch.Tensor, crops_b: torch.Tensor, points: int,
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random points of view a, the same image points in view b, and which of them lie inside b.
    Returns grids [B, points, 1, 2] for a and b (normalised coordinates) and a mask [B, points]."""
    batch = crops_a.shape[0]
    u_a = torch.rand(batch, points, 2, generator=generator) * 1.75 - 0.875  # away from the zero-padded edge
    image = u_a * crops_a[:, None, :2] + crops_a[:, None, 2:]
    u_b = (image - crops_b[:, None, 2:]) / crops_b[:, None, :2]
    inside = (u_b.abs() <= 0.875).all(dim=2)
    return u_a[:, :, None], u_b[:, :, None], inside


def _sample(patches: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """[B, dim, h, w] at grid [B, P, 1, 2] -> [B, P, dim]."""
    return F.grid_sample(patches, grid, mode="bilinear", align_corners=False)[..., 0].transpose(1, 2)


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def train_ssl_encoder(
    images: np.ndarray,
    *,
    steps: int = 500,
    batch_size: int = 256,
    lr: float = 4e-3,
    temperature: float = 0.1,
    dense_weight: float = 0.5,
    dense_points: int = 4,
    min_crop_area: float = 0.35,
    jitter: float = 0.7,
    calibration_images: int = 10_000,
    seed: int = 0,
    progress: bool = True,
    dim: int = 128,
    width: int = 32,
    hidden: int = 64,
    blocks: int = 1,
    cls_grid: int = 2,
) -> tuple[SSLEncoder, dict]:
    """Trains an SSLEncoder on uint8 images [N, C, H, W] without labels; returns it calibrated
    (`SSLEncoder.calibrate` on up to `calibration_images` clean training images), frozen and in eval
    mode, and training statistics (steps, seconds, final smoothed losses, a ten-point loss curve).

    The defaults take about 2.5 minutes on one CPU thread for Fashion-MNIST (500 steps of 256 image
    pairs, ~2 epochs) and were chosen by linear-probe accuracy there, at a fixed time budget:
    temperature 0.1 beat 0.2 and 0.5, strong brightness/contrast jitter (factors in [0.3, 1.7])
    beat mild jitter, and one residual block with more steps beat two (or none), each by 0.5-1
    point. The dense term did not change the [cls] probe; it is there for the patch map, which it
    makes locally discriminative and which REPA uses too.
    The projection heads (an MLP on the pooled vector, a per-location MLP on the patch features)
    exist only here: as in SimCLR, the representation before the head is the one that transfers.
    steps=0 gives the calibrated random initialisation, the baseline a probe should beat.
    The global RNG is left untouched; everything random comes from `seed`.
    """
    data = torch.from_numpy(np.ascontiguousarray(images))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SSLEncoder(image_channels=data.shape[1], dim=dim, width=width, hidden=hidden, blocks=blocks,
                           cls_grid=cls_grid)
        head = _mlp(model.pooled_dim, 2 * dim, dim)
        dense_head = _mlp(dim, 2 * dim, dim)
    model.train()
    parameters = [*model.parameters(), *head.parameters(), *dense_head.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    warmup = min(50, steps // 10 + 1)
    batch_size = min(batch_size, len(data))
    order = torch.randperm(len(data), generator=generator)
    cursor = 0
    smoothed: dict[str, float] = {}
    history: list[float] = []
    started = time.time()
    bar = tqdm(range(steps), desc="train ssl_encoder", unit="step", disable=not progress)
    for step in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(data), generator=generator), 0
        batch = data[order[cursor:cursor + batch_size]]
        cursor += batch_size
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, lr, warmup)

        crops_a = _random_crops(len(batch), min_crop_area, generator)
        crops_b = _random_crops(len(batch), min_crop_area, generator)
        views = torch.cat([_augment(batch, crops_a, jitter, generator), _augment(batch, crops_b, jitter, generator)])
        pooled, patches = model.raw_features(views)
        global_loss = _nt_xent(*head(pooled).chunk(2), temperature)
        loss = global_loss
        dense_loss = torch.zeros(())
        if dense_weight > 0:
            grid_a, grid_b, inside = _corresponding_points(crops_a, crops_b, dense_points, generator)
            patches_a, patches_b = patches.chunk(2)
            points_a = _sample(patches_a, grid_a)[inside]
            points_b = _sample(patches_b, grid_b)[inside]
            if len(points_a) > 1:
                projected = dense_head(torch.cat([points_a, points_b]))
                dense_loss = _nt_xent(*projected.chunk(2), temperature)
                loss = loss + dense_weight * dense_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        history.append(loss.item())
        for name, value in (("loss", loss), ("global_loss", global_loss), ("dense_loss", dense_loss)):
            smoothed[name] = value.item() if step == 0 else 0.95 * smoothed[name] + 0.05 * value.item()
        if step % 20 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{smoothed['loss']:.3f}")
    bar.close()
    calibration = torch.randperm(len(data), generator=generator)[:calibration_images].sort().values
    model.calibrate(data[calibration])
    model.requires_grad_(False)
    stats = {"steps": steps, "batch_size": batch_size, "lr": lr, "temperature": temperature,
             "dense_weight": dense_weight, "jitter": jitter, "seed": seed,
             "seconds": round(time.time() - started, 1),
             **{f"final_{k}": v for k, v in smoothed.items()},
             # the mean loss over each tenth of training: the learning curve, compact enough to store
             "loss_curve": [float(np.mean(part)) for part in np.array_split(history, min(10, steps))] if steps else []}
    return model, stats


# ----------------------------------------------------------------------------------------------
# Linear probe: the standard measure of a self-supervised representation.


@torch.no_grad()
def encode_for_probe(encoder: Teacher, images: np.ndarray, batch_size: int = 1000) -> torch.Tensor:
    """The frozen features a probe sees: the [cls] vector (what the name says; no patch pooling)."""
    was_training = encoder.training
    encoder.eval()
    chunks = [encoder(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))).cls
              for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(chunks).float()


def fit_linear_probe(train_features: torch.Tensor, train_labels: np.ndarray | torch.Tensor,
                     test_features: torch.Tensor, test_labels: np.ndarray | torch.Tensor,
                     *, weight_decay: float = 1e-4, iterations: int = 300, seed: int = 0) -> float:
    """Multinomial logistic regression on features standardised with the *training* statistics,
    fitted full-batch with L-BFGS (fixed hyper-parameters, no selection on the test set), scored
    by accuracy on the held-out test features."""
    train_labels = torch.as_tensor(np.asarray(train_labels)).long()
    test_labels = torch.as_tensor(np.asarray(test_labels)).long()
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(x_train.shape[1], classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, train_labels) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predictions = (x_test @ weight + bias).argmax(1)
    return (predictions == test_labels).float().mean().item()


def linear_probe_accuracy(encoder: Teacher, train_images: np.ndarray, train_labels: np.ndarray,
                          test_images: np.ndarray, test_labels: np.ndarray, *, seed: int = 0) -> float:
    """Held-out test accuracy of a linear classifier on the encoder's frozen, standardised [cls]
    features (only the cls vector, no pooled patch features), fitted on the training images."""
    return fit_linear_probe(encode_for_probe(encoder, train_images), train_labels,
                            encode_for_probe(encoder, test_images), test_labels, seed=seed)
