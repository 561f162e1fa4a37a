"""Any digit images in MNIST's layout (`dataset=images dataset.path=...`): a Keras-layout
`.npz` or a folder of IDX files, uint8 grey levels 0-255, labels 0-9; unlike `mnist`, any
content and any square size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from digitcnn.core.config_groups import ImagesConfig
from digitcnn.core.errors import DataError
from digitcnn.data.formats import KERAS_KEYS, Arrays, content_digest, read_dataset_path


def load_images(cfg: ImagesConfig) -> tuple[Arrays, str, dict[str, str]]:
    path = Path(cfg.path).expanduser()
    arrays = read_dataset_path(path)
    for key in KERAS_KEYS:
        array = arrays[key]
        if array.dtype != np.uint8:
            raise DataError(f"{path}: {key} is {array.dtype}; expected uint8 as MNIST")
        expected = 3 if key.startswith("x_") else 1
        if array.ndim != expected:
            raise DataError(f"{path}: {key} has {array.ndim} dimensions; expected {expected}")
    for images, labels in (("x_train", "y_train"), ("x_test", "y_test")):
        if len(arrays[images]) != len(arrays[labels]):
            raise DataError(f"{path}: {images} and {labels} differ in length")
        if len(arrays[labels]) and arrays[labels].max() > 9:
            raise DataError(f"{path}: {labels} holds {arrays[labels].max()}; digits are 0-9")
    return arrays, str(path), {key: content_digest(a) for key, a in arrays.items()}
