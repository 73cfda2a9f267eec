import gzip

import numpy as np
import pytest

from gatgan.data.fashion_mnist import DEFAULT_ROOT, FashionMNISTMissing, load_fashion_mnist


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_reads_idx_files_and_pads_to_32(tmp_path):
    images = np.random.default_rng(0).integers(1, 256, (3, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([4, 0, 9]))
    x, y = load_fashion_mnist("test", tmp_path)
    assert x.shape == (3, 1, 32, 32) and x.dtype == np.uint8
    assert y.tolist() == [4, 0, 9] and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], images)
    assert x[:, :, :2].max() == 0 and x[:, :, :, 30:].max() == 0


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FashionMNISTMissing, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)


def test_corrupt_or_mismatched_files_are_rejected(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="1 dimensions"):
        load_fashion_mnist("test", tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(ValueError, match="3 labels"):
        load_fashion_mnist("test", tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", tmp_path)


@pytest.mark.skipif(not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist")
def test_the_installed_data_set_has_the_expected_size_and_classes():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 32, 32)
    assert np.bincount(y).tolist() == [1000] * 10
