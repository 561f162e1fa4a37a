"""Readers and writers for the files MNIST comes in: Keras's .npz, the original IDX files and the
classic pickle, plus content digests and an atomic .npz writer. No format that can run code
is ever loaded: `.npz` with `allow_pickle=False`, the pickle through an allow-list."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, ClassVar

import numpy as np

from digitcnn.core.disk import written_whole
from digitcnn.core.errors import DataError

KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

Arrays = dict[str, np.ndarray]


def content_digest(array: np.ndarray) -> str:
    """sha256 of the array's bytes: identifies the content whatever file it came from."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def read_npz(path: Path) -> Arrays:
    """The four Keras-layout arrays of an .npz file (object arrays refused)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in KERAS_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; expected {list(KERAS_KEYS)}")
            return {k: npz[k] for k in KERAS_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not readable ({exc})") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: {len(data) - header} data bytes, header says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx_dir(folder: Path) -> Arrays:
    """The four arrays from a folder of the original IDX files, gzipped or not."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{folder}: no {stem}[.gz] in this folder")
        arrays[key] = _read_idx(found)
    return arrays


def read_dataset_path(path: Path) -> Arrays:
    """The four arrays at `dataset.path`: a folder of IDX files or a Keras-layout .npz."""
    if path.is_dir():
        return read_idx_dir(path)
    if path.is_file():
        return read_npz(path)
    raise DataError(f"dataset.path={str(path)!r} does not exist (want an .npz or IDX folder)")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only the globals a pickled numpy array needs; anything else is refused."""

    _ALLOWED: ClassVar[dict[tuple[str, str], object]] = {
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def load_numpy_pickle(stream: IO[bytes]) -> object:
    """Unpickle data made only of tuples, lists and numpy arrays (Python 2 pickles too)."""
    return _NumpyOnlyUnpickler(stream, encoding="latin1").load()


def mnist_pickle_to_keras(stream: IO[bytes]) -> Arrays:
    """Convert the classic `mnist.pkl.gz` (pixels/256 as float32) to Keras's uint8 layout."""
    with gzip.open(stream) as f:
        train, valid, test = load_numpy_pickle(f)

    def images(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256
        if not np.array_equal(scaled, np.round(scaled)) or scaled.min() < 0 or scaled.max() > 255:
            raise DataError("mnist.pkl.gz: pixel values are not multiples of 1/256 in [0, 1)")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "x_train": images(np.concatenate([train[0], valid[0]])),
        "y_train": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "x_test": images(test[0]),
        "y_test": np.asarray(test[1]).astype(np.uint8),
    }


def write_npz_atomic(path: Path, arrays: Arrays) -> None:
    """Write an .npz through a temporary file and a rename: readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_whole(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # uncompressed: every run reads it, it is written once
