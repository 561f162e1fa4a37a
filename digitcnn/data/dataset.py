"""From a dataset config to arrays ready for Keras: source, cap, validation split, scaling."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from digitcnn.core.config_groups import DatasetConfig
from digitcnn.data.digits import PIXEL_MAX as DIGITS_PIXEL_MAX
from digitcnn.data.digits import load_digits
from digitcnn.data.formats import KERAS_KEYS, Arrays
from digitcnn.data.image_folder import load_images
from digitcnn.data.mnist import load_mnist

# name -> (loader returning uint8 Keras-layout arrays, their origin and content digests; the
# largest pixel value)
_SOURCES: dict[str, tuple[Callable[..., tuple[Arrays, str, dict[str, str]]], int]] = {
    "mnist": (load_mnist, 255),
    "digits": (load_digits, DIGITS_PIXEL_MAX),
    "images": (load_images, 255),
}


@dataclass(frozen=True)
class Dataset:
    """Images as float32 (N, H, W, 1) in [0, 1], labels as integers 0..num_classes-1."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    digest: str  # sha256 over the source arrays' content, before any split
    source: str  # the file or loader the arrays came from
    validation_is_test: bool  # val_size=0: validated on the test set, as the reference did
    pixel_max: int  # the raw images' largest value (255 for MNIST): what 1.0 stands for

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}


def _scale(images: np.ndarray, pixel_max: int) -> np.ndarray:
    return (images.astype(np.float32) / pixel_max)[..., np.newaxis]


def dataset_digest(digests: dict[str, str]) -> str:
    """One digest for the four arrays' content, from each array's `content_digest`."""
    parts = "".join(digests[k] for k in KERAS_KEYS)
    return hashlib.sha256(parts.encode()).hexdigest()


def load_dataset(cfg: DatasetConfig, seed: int) -> Dataset:
    """Load `cfg.name`, cap the training set at `limit`, hold out `val_size` (stratified)."""
    loader, pixel_max = _SOURCES[cfg.name]
    arrays, source, digests = loader(cfg)
    x, y = arrays["x_train"], arrays["y_train"]
    if cfg.limit is not None and cfg.limit < len(x):
        x, _, y, _ = train_test_split(x, y, train_size=cfg.limit, stratify=y, random_state=seed)
    x_test, y_test = _scale(arrays["x_test"], pixel_max), arrays["y_test"].astype(np.int64)
    x_val, y_val = x_test, y_test  # val_size=0: the test arrays themselves, predicted once
    if cfg.val_size > 0:
        x, x_val, y, y_val = train_test_split(
            x, y, test_size=cfg.val_size, stratify=y, random_state=seed
        )
        x_val, y_val = _scale(x_val, pixel_max), y_val.astype(np.int64)
    return Dataset(
        name=cfg.name,
        x_train=_scale(x, pixel_max),
        y_train=y.astype(np.int64),
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        num_classes=int(max(arrays["y_train"].max(initial=0), arrays["y_test"].max(initial=0))) + 1,
        digest=dataset_digest(digests),
        source=source,
        validation_is_test=cfg.val_size == 0,
        pixel_max=pixel_max,
    )
