"""Batches that suit a backend which compiles one program per batch shape (JAX)."""

from __future__ import annotations

import keras
import numpy as np


class FullBatches(keras.utils.PyDataset):
    """Shuffled training batches of exactly `batch_size` images, reshuffled every epoch; the
    ragged remainder (a different random one each epoch) is left out, so one train step is
    compiled, not two."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> None:
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(len(x))

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.x[chosen], self.y[chosen]

    def on_epoch_end(self) -> None:
        self._order = self._rng.permutation(len(self.x))


def training_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> tuple[dict, int]:
    """`model.fit` arguments for the training data, and the steps per epoch they make.

    On JAX every distinct batch shape is compiled anew: there the data come as FullBatches.
    Elsewhere (TensorFlow traces one graph for any batch size) Keras batches the arrays
    itself and every image is used every epoch.
    """
    steps, full = steps_per_epoch(len(x), batch_size)
    if full:
        return {"x": FullBatches(x, y, batch_size, seed)}, steps
    return {"x": x, "y": y, "batch_size": batch_size, "shuffle": True}, steps


def steps_per_epoch(count: int, batch_size: int) -> tuple[int, bool]:
    """Training steps per epoch over `count` images, and whether they are full batches only
    (on JAX, see `training_batches`)."""
    if keras.backend.backend() == "jax" and count >= batch_size:
        return count // batch_size, True
    return -(-count // batch_size), False


def even_batch(count: int, largest: int) -> int:
    """A batch size of at most `largest` that divides `count`, so that evaluating `count`
    images compiles one program, not two; `largest` itself where only a much smaller size
    would divide it."""
    if count <= largest:
        return max(count, 1)
    size = next(b for b in range(largest, 0, -1) if count % b == 0)
    return size if size * 4 >= largest else largest


PREDICT_BATCH = 1024  # images per compiled call when validating and testing


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's class probabilities for `images`, in even batches of at most
    `PREDICT_BATCH` (one compiled shape where the count allows)."""
    return model.predict(images, batch_size=even_batch(len(images), PREDICT_BATCH), verbose=0)
