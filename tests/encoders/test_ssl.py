import inspect
import json

import numpy as np
import pytest
import torch

from gatgan.auxnets import affine_resample
from gatgan.encoders.ssl import (
    WEIGHTS_FILE,
    SSLEncoder,
    _corresponding_points,
    _nt_xent,
    _random_crops,
    _sample,
    fit_linear_probe,
    linear_probe_accuracy,
    train_ssl_encoder,
)

TINY = {"dim": 64, "width": 8, "hidden": 16, "blocks": 1}  # hidden * 2 * 2 == dim


def shapes(count: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Four classes of outline shapes (square, ring, plus, diagonal cross) at random positions,
    sizes, stroke widths and brightness on a noisy dark background. The class is only in the shape:
    what the augmentations vary (position, scale, brightness, noise) carries no label information."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = rng.normal(15, 6, (count, 1, size, size))
    for image, label in zip(images, labels):
        radius = rng.uniform(6, 11)
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        stroke = rng.uniform(1.2, 2.5)
        dy, dx = yy - cy, xx - cx
        inside = np.maximum(np.abs(dy), np.abs(dx)) <= radius
        if label == 0:
            dist = np.abs(np.maximum(np.abs(dy), np.abs(dx)) - radius)
        elif label == 1:
            dist = np.abs(np.hypot(dy, dx) - radius)
        elif label == 2:
            dist = np.where(inside, np.minimum(np.abs(dy), np.abs(dx)), np.inf)
        else:
            dist = np.where(inside, np.minimum(np.abs(dy - dx), np.abs(dy + dx)) / np.sqrt(2), np.inf)
        image[0][dist <= stroke] = rng.uniform(120, 255)
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def shape_data():
    return shapes(512, seed=0), shapes(512, seed=1)


@pytest.fixture(scope="module")
def trained(shape_data):
    """60 steps on 512 shape images (~2 s on one thread)."""
    (images, _), _ = shape_data
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test single-thread fixture
    try:
        return train_ssl_encoder(images, steps=60, batch_size=64, seed=0, progress=False, **TINY)
    finally:
        torch.set_num_threads(previous)


def test_features_have_the_documented_shapes_dtypes_and_normalisation():
    encoder = SSLEncoder(**TINY).eval()
    out = encoder(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8))
    assert out.cls.shape == (3, 64) and out.patches.shape == (3, 64, 8, 8)
    assert out.cls.dtype == out.patches.dtype == torch.float32
    # layer-normalised: zero mean and unit variance over channels, for [cls] and every patch
    assert torch.allclose(out.cls.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(out.patches.mean(1), torch.zeros(3, 8, 8), atol=1e-5)
    assert torch.allclose(out.patches.var(1, unbiased=False), torch.ones(3, 8, 8), atol=1e-3)
    # the patch grid follows the input size (4-pixel patches); 3-channel encoders work the same way
    rgb = SSLEncoder(image_channels=3, **TINY).eval()
    assert rgb(torch.zeros(2, 3, 16, 24)).patches.shape == (2, 64, 4, 6)
    assert SSLEncoder(dim=128).eval()(torch.zeros(1, 1, 32, 32)).cls.shape == (1, 128)


def test_rejects_a_cls_projection_that_would_need_more_dimensions_than_it_has():
    with pytest.raises(ValueError, match="at least dim"):
        SSLEncoder(dim=128, hidden=16, cls_grid=2)


def test_preprocess_maps_uint8_values_to_signed_unit_range_and_checks_channels():
    encoder = SSLEncoder(**TINY)
    values = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = encoder.preprocess(values)
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([-1.0, -0.6, 1.0]))
    assert torch.equal(encoder.preprocess(values.float()), out)  # float uint8-valued input too
    with pytest.raises(ValueError, match="1-channel"):
        encoder.preprocess(torch.zeros(1, 3, 8, 8))


def test_forward_never_tracks_gradients_and_the_trained_encoder_is_frozen(trained):
    fresh = SSLEncoder(**TINY)  # trainable parameters, but forward still builds no graph
    out = fresh(torch.zeros(2, 1, 32, 32))
    assert not out.cls.requires_grad and not out.patches.requires_grad
    encoder, _ = trained
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    images, _ = shapes(64)
    settings = {"steps": 4, "batch_size": 16, "calibration_images": 32, "progress": False, **TINY}
    rng_state = torch.random.get_rng_state()
    first, _ = train_ssl_encoder(images, seed=3, **settings)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    second, _ = train_ssl_encoder(images, seed=3, **settings)
    other, _ = train_ssl_encoder(images, seed=4, **settings)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert any(not torch.equal(value, other.state_dict()[name]) for name, value in first.state_dict().items())


def test_training_takes_no_labels():
    parameters = inspect.signature(train_ssl_encoder).parameters
    assert not any("label" in name or "target" in name or name == "y" for name in parameters)
    assert list(parameters)[0] == "images"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[1:])


def test_self_supervised_training_beats_the_random_initialisation_on_a_linear_probe(trained, shape_data):
    (train_images, train_labels), (test_images, test_labels) = shape_data
    encoder, _ = trained
    # the same initial weights, calibrated the same way, but not trained
    untrained, _ = train_ssl_encoder(train_images, steps=0, seed=0, progress=False, **TINY)
    random_accuracy = linear_probe_accuracy(untrained, train_images, train_labels, test_images, test_labels)
    trained_accuracy = linear_probe_accuracy(encoder, train_images, train_labels, test_images, test_labels)
    # measured over seeds 0-2: random init 0.63-0.68, trained 0.93-0.95; training against the
    # wrong positives (each view paired with another image's view) gives 0.64-0.75
    assert trained_accuracy > random_accuracy + 0.1
    assert trained_accuracy > 0.85


def test_the_ssl_loss_decreases(trained):
    _, stats = trained
    curve = stats["loss_curve"]  # the mean loss over each tenth of the 60 steps
    assert stats["steps"] == 60 and len(curve) == 10
    assert np.isfinite(curve).all()
    # measured over seeds 0-2: ~7.9 over the first six steps, 5.5-5.9 over the last six (with the
    # wrong positives: 8.7-8.9 -> 7.8)
    assert curve[-1] < 0.8 * curve[0]
    assert curve[-1] < min(curve[:5])
    assert stats["final_loss"] == pytest.approx(stats["final_global_loss"] + 0.5 * stats["final_dense_loss"], rel=0.2)
    assert stats["seconds"] >= 0


def test_save_and_load_round_trip_gives_identical_features(trained, tmp_path):
    encoder, _ = trained
    encoder.save(tmp_path / "teacher")
    config = json.loads((tmp_path / "teacher" / "teacher.json").read_text())
    assert config["kind"] == "ssl_encoder"
    assert (tmp_path / "teacher" / WEIGHTS_FILE).is_file()
    loaded = SSLEncoder.from_directory(tmp_path / "teacher", config)
    assert not loaded.training and loaded.config() == encoder.config()
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    expected, actual = encoder(images), loaded(images)
    assert torch.equal(expected.cls, actual.cls)
    assert torch.equal(expected.patches, actual.patches)


def test_calibration_centres_the_outputs_and_orders_the_cls_components_by_variance():
    images, _ = shapes(200, seed=5)
    torch.manual_seed(0)
    encoder = SSLEncoder(**TINY).calibrate(images)
    assert not encoder.training
    with torch.no_grad():
        pooled, patches = encoder.raw_features(encoder.preprocess(torch.from_numpy(images)))
        projected = (pooled - encoder.pooled_mean) @ encoder.cls_basis
    assert projected.mean(0).abs().max() < 1e-4 * projected.std(0).max()
    variances = projected.var(0)
    assert (variances[:-1] >= variances[1:] * (1 - 1e-4)).all()
    assert torch.allclose(encoder.cls_basis.T @ encoder.cls_basis, torch.eye(64), atol=1e-5)
    centred = patches - encoder.patch_mean[:, None, None]
    assert centred.mean(dim=(0, 2, 3)).abs().max() < 1e-4 * patches.abs().max()


def test_corresponding_points_see_the_same_image_location_in_both_views():
    """The dense term pairs features at one image point seen through two crops: sample a map of
    image coordinates through each crop and check both views name the same point."""
    generator = torch.Generator().manual_seed(0)
    size = 32
    coordinates = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel centres, align_corners=False
    field = torch.stack(torch.meshgrid(coordinates, coordinates, indexing="xy"))[None].repeat(16, 1, 1, 1)
    crops_a, crops_b = (_random_crops(16, 0.35, generator) for _ in range(2))
    view_a, view_b = affine_resample(field, crops_a), affine_resample(field, crops_b)
    grid_a, grid_b, inside = _corresponding_points(crops_a, crops_b, 32, generator)
    assert inside.float().mean() > 0.3  # most crops overlap
    seen_a, seen_b = _sample(view_a, grid_a)[inside], _sample(view_b, grid_b)[inside]
    assert torch.allclose(seen_a, seen_b, atol=0.08)  # bilinear resampling twice: within ~1 pixel
    # and the points are where their grids say: sampling the field at the crop's own mapping
    expected = grid_a[..., 0, :] * crops_a[:, None, :2] + crops_a[:, None, 2:]
    assert torch.allclose(seen_a, expected[inside], atol=0.08)


def test_nt_xent_is_low_for_matching_pairs_and_high_for_mismatched_ones():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(32, 16, generator=generator)
    b = a + 0.05 * torch.randn(32, 16, generator=generator)
    assert _nt_xent(a, b, 0.1) < 0.1
    assert _nt_xent(a, b.roll(1, 0), 0.1) > 5.0


def test_linear_probe_is_scored_on_held_out_data():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2000, 32, generator=generator)
    labels = torch.randint(0, 4, (2000,), generator=generator)
    # labels unrelated to the features: fitting the training half cannot help on the test half
    chance = fit_linear_probe(features[:1000], labels[:1000], features[1000:], labels[1000:])
    assert 0.15 < chance < 0.35
    # labels a linear function of the features: near perfect
    informative = features[:, :4].argmax(1)
    assert fit_linear_probe(features[:1000], informative[:1000], features[1000:], informative[1000:]) > 0.95
