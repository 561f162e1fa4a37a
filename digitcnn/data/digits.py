"""scikit-learn's bundled 8x8 digits: a real dataset that needs no download, for smoke runs."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sklearn_digits
from sklearn.model_selection import train_test_split

from digitcnn.core.config_groups import DigitsConfig
from digitcnn.data.formats import Arrays, content_digest

PIXEL_MAX = 16  # the digits' grey levels are 0..16
_TEST_SPLIT_SEED = 0  # fixed, so every run of every seed is tested on the same images


def load_digits(cfg: DigitsConfig) -> tuple[Arrays, str, dict[str, str]]:
    """Keras-layout uint8 arrays with a fixed, stratified test split of `test_size` images,
    their source and content digests."""
    bunch = _sklearn_digits()
    images = bunch.images.astype(np.uint8)
    labels = bunch.target.astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=cfg.test_size, stratify=labels, random_state=_TEST_SPLIT_SEED
    )
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    digests = {key: content_digest(array) for key, array in arrays.items()}
    return arrays, "sklearn.datasets.load_digits", digests
