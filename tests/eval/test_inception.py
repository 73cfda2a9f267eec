"""The FID Inception loader (gatgan.eval.inception), offline, on random weights laid out exactly
like the real file (which cannot be downloaded here)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

from gatgan.eval.inception import INCEPTION_FILE, INCEPTION_ID, INCEPTION_URL, InceptionFeatures
from inception_assets import architecture_state, random_weights

pytestmark = pytest.mark.usefixtures("no_network")

# Layout of weights-inception-2015-12-05-6726825d.pth, which torch-fidelity loads strictly:
# every state-dict entry of its architecture except the BatchNorm num_batches_tracked counters
# (the converter does not write them). Computed once from torch-fidelity 0.4.0; a change of the
# architecture or of the library shows up here before it silently changes FID numbers.
LAYOUT_TENSORS = 472
LAYOUT_VALUES = 23_885_392
LAYOUT_SHA256 = "d559ff75f058d0c5b1bc793a70c599a35fc475667dd25e6bb99f1666f642cffc"  # sorted "key:[shape]" lines


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-fidelity would fetch the weights (or read torch hub's cache) if handed no file."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch-fidelity was asked to download the Inception weights")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="module")
def architecture() -> OrderedDict[str, torch.Tensor]:
    return architecture_state()


@pytest.fixture(scope="module")
def weights(architecture) -> dict[str, torch.Tensor]:
    return random_weights(architecture)


@pytest.fixture(scope="module")
def weights_file(weights, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain dict without num_batches_tracked, as torch-fidelity's converter writes the real file."""
    path = tmp_path_factory.mktemp("inception") / INCEPTION_FILE
    torch.save(weights, path)
    return path


@pytest.fixture(scope="module")
def extractor(weights_file) -> InceptionFeatures:
    return InceptionFeatures.load(weights_file, "cpu")


def _images(seed: int, n: int, size: int, channels: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def test_layout_matches_the_real_file_manifest(weights) -> None:
    lines = sorted(f"{key}:{list(value.shape)}" for key, value in weights.items())
    assert len(weights) == LAYOUT_TENSORS
    assert sum(value.numel() for value in weights.values()) == LAYOUT_VALUES
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == LAYOUT_SHA256
    # Shapes known independently of torch-fidelity (TF graph: 3x3 stem, 1008-way softmax).
    assert weights["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert weights["fc.weight"].shape == (1008, 2048)
    assert weights["fc.bias"].shape == (1008,)
    assert weights["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)


def test_identity_constants() -> None:
    assert INCEPTION_FILE == "weights-inception-2015-12-05-6726825d.pth"
    assert INCEPTION_URL.endswith("/" + INCEPTION_FILE) and INCEPTION_URL.startswith("https://github.com/toshas/")
    assert INCEPTION_ID in INCEPTION_FILE


def test_features_shapes_determinism_and_unbiased_logits(extractor, weights) -> None:
    images = _images(0, 4, 64, 3)
    pool, logits = extractor.extract(images, batch_size=4, progress=False)
    assert pool.shape == (4, 2048) and logits.shape == (4, 1008)
    assert pool.dtype == logits.dtype == np.float64
    assert np.isfinite(pool).all() and np.isfinite(logits).all()
    assert pool.std(axis=0).mean() > 1e-3  # the random network distinguishes the images
    again_pool, again_logits = extractor(images, batch_size=4, progress=False)
    np.testing.assert_array_equal(again_pool, pool)
    np.testing.assert_array_equal(again_logits, logits)
    # IS logits are the pool features times the fc weights, without the bias.
    expected = pool @ weights["fc.weight"].double().numpy().T
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_batch_size_and_streaming_do_not_change_features(extractor) -> None:
    images = _images(1, 4, 64, 3)
    whole = extractor.extract(images, batch_size=4, progress=False)
    one_by_one = extractor.extract(images, batch_size=1, progress=False)
    streamed = extractor.extract(iter([images[:3], images[3:]]), batch_size=2, progress=False)
    for result in (one_by_one, streamed):
        for got, want in zip(result, whole):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_grayscale_is_repeated_to_rgb(extractor) -> None:
    gray = _images(2, 4, 32, 1)
    for got, want in zip(
        extractor.extract(gray, batch_size=4, progress=False),
        extractor.extract(np.repeat(gray, 3, axis=-1), batch_size=4, progress=False),
    ):
        np.testing.assert_array_equal(got, want)


def test_extract_rejects_bad_images_and_accepts_none(extractor) -> None:
    for bad in (_images(3, 1, 16, 3).astype(np.float32), _images(3, 1, 16, 4), np.zeros((16, 16, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"uint8 images \[N, H, W, C\]"):
            extractor.extract(bad, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extractor.extract(_images(3, 1, 16, 3), batch_size=0)
    pool, logits = extractor.extract([], progress=False)
    assert pool.shape == (0, 2048) and logits.shape == (0, 1008)


def test_loads_files_with_batchnorm_counters_and_version_metadata(
    architecture, weights, extractor, tmp_path, no_network
) -> None:
    """state_dict() output keeps version metadata; then torch itself would reject missing counters."""
    with_counters = OrderedDict((k, weights.get(k, v)) for k, v in architecture.items())
    without_counters = OrderedDict(weights)
    for state in (with_counters, without_counters):
        state._metadata = architecture._metadata
    images = _images(4, 1, 32, 3)
    want = extractor.extract(images, progress=False)
    for name, state in (("with.pth", with_counters), ("without.pth", without_counters)):
        torch.save(state, tmp_path / name)
        got = InceptionFeatures.load(tmp_path / name).extract(images, progress=False)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert no_network == []


@pytest.mark.parametrize("path", [None, "nowhere/" + INCEPTION_FILE])
def test_missing_file_says_what_to_fetch(path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        InceptionFeatures.load(path)
    message = str(error.value)
    assert INCEPTION_FILE in message and INCEPTION_URL in message and "--inception" in message
    assert "eval.inception" in message and (path is None or path in message)


@pytest.mark.parametrize(
    "change, offending",
    [
        (lambda w: w.update({"fc.bias": torch.zeros(1000)}), "fc.bias"),
        (lambda w: w.pop("Mixed_7c.branch_pool.conv.weight"), "Mixed_7c.branch_pool.conv.weight"),
        (lambda w: w.update({"AuxLogits.fc.weight": torch.zeros(1000, 768)}), "AuxLogits.fc.weight"),
    ],
    ids=["wrong-shape", "missing-key", "unexpected-key"],
)
def test_wrong_weights_are_rejected_naming_the_keys(weights, tmp_path, change, offending) -> None:
    wrong = dict(weights)
    change(wrong)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not the FID Inception-v3 weights") as error:
        InceptionFeatures.load(tmp_path / "wrong.pth")
    assert offending in str(error.value)


def test_other_files_are_rejected(tmp_path) -> None:
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="could not read weights"):
        InceptionFeatures.load(tmp_path / "stats.npz")
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        InceptionFeatures.load(tmp_path / "list.pth")
