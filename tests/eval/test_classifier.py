import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gatgan.data.fashion_mnist import FashionMNISTMissing, load_fashion_mnist
from gatgan.eval.classifier import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    DomainClassifier,
    _augment,
    evaluate_accuracy,
    load_domain_classifier,
    train_domain_classifier,
)

TINY = {"widths": (8, 16, 16), "feature_dim": 24}


def bars(count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Four classes by the orientation of the strokes in the image: none, a horizontal bar, a
    vertical bar, or both (a plus), at random positions, lengths and brightness over noise. Position
    carries no label information, and the labels survive the trainer's shifts and flips."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    images = rng.normal(20, 8, (count, 1, size, size))
    for image, label in zip(images, labels):
        brightness = rng.uniform(140, 255)
        row, column = rng.integers(6, size - 6, 2)
        length = rng.integers(size // 2, size - 8)
        start = rng.integers(2, size - length - 1)
        if label in (1, 3):
            image[0, row - 1:row + 1, start:start + length] = brightness
        if label in (2, 3):
            image[0, start:start + length, column - 1:column + 1] = brightness
    return np.clip(images, 0, 255).astype(np.uint8), labels


def random_data(count: int = 64, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, channels, 32, 32), dtype=np.uint8), rng.integers(0, 10, count)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 28, 16])
def test_logits_and_features_have_the_documented_shapes(channels, size):
    model = DomainClassifier(image_channels=channels, num_classes=7, **TINY).eval()
    images = torch.randint(0, 256, (5, channels, size, size), dtype=torch.uint8)
    logits, features = model(images), model.features(images)
    assert logits.shape == (5, 7) and features.shape == (5, 24)
    assert logits.dtype == features.dtype == torch.float32
    assert (features >= 0).all()  # taken after the ReLU
    assert torch.equal(model.predict(images.numpy(), batch_size=2), logits.argmax(1))
    with pytest.raises(ValueError, match="expected images"):
        model(torch.zeros(1, 4 - channels, size, size))


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    images, labels = random_data()
    model, report = train_domain_classifier(images, labels, steps=3, batch_size=16, progress=False, **TINY)
    model.save(tmp_path)
    loaded = load_domain_classifier(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config() == model.config() and loaded.report == report == model.report
    probe = torch.from_numpy(random_data(seed=1)[0])
    assert torch.equal(loaded(probe), model(probe))
    assert torch.equal(loaded.features(probe), model.features(probe))


def test_loading_mismatched_weights_fails(tmp_path):
    DomainClassifier(**TINY).save(tmp_path)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**saved, "config": {**saved["config"], "feature_dim": 32}}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_domain_classifier(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    weights = load_file(str(tmp_path / WEIGHTS_FILE))
    del weights["head.bias"]
    save_file(weights, str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_domain_classifier(tmp_path)


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    images, labels = random_data(channels=3)
    rng_state = torch.get_rng_state()
    settings = {"steps": 4, "batch_size": 16, "max_shift": 2, "flip": True, "progress": False, **TINY}
    first, _ = train_domain_classifier(images, labels, seed=3, **settings)
    second, _ = train_domain_classifier(images, labels, seed=3, **settings)
    other, _ = train_domain_classifier(images, labels, seed=4, **settings)
    assert torch.equal(torch.get_rng_state(), rng_state)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)


def test_augmentation_moves_whole_pixels_and_mirrors():
    images = torch.from_numpy(random_data(count=16)[0])
    augmented = _augment(images, 2, True, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2))
    candidates = [padded[..., 2 + dy:34 + dy, 2 + dx:34 + dx] for dy in range(-2, 3) for dx in range(-2, 3)]
    candidates = torch.stack(candidates + [c.flip(-1) for c in candidates], dim=1)  # [16, 50, 1, 32, 32]
    matches = (candidates - augmented[:, None]).abs().amax(dim=(2, 3, 4)) < 1e-3
    assert matches.any(1).all()
    assert len(set(matches.float().argmax(1).tolist())) > 4  # the shifts and flips vary between images


def test_a_short_training_learns_an_easy_task():
    (train_images, train_labels), (test_images, test_labels) = bars(512, seed=0), bars(256, seed=1)
    model, report = train_domain_classifier(train_images, train_labels, steps=80, batch_size=32, progress=False,
                                            **TINY)
    assert report["steps"] == 80 and report["final_loss"] < 0.5
    assert evaluate_accuracy(model, test_images, test_labels) > 0.95


@pytest.mark.slow
def test_default_training_beats_90_percent_on_fashion_mnist():
    try:
        train_images, train_labels = load_fashion_mnist("train")
        test_images, test_labels = load_fashion_mnist("test")
    except FashionMNISTMissing as error:
        pytest.skip(f"Fashion-MNIST is not installed: {error}")
    model, _ = train_domain_classifier(train_images, train_labels, progress=False)
    assert evaluate_accuracy(model, test_images, test_labels) > 0.90
