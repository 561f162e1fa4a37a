"""The batches each backend trains and predicts on: one shape on JAX (it compiles a program per
batch shape), tf.data pipelines of digitcnn's own on TensorFlow."""

from __future__ import annotations

import keras
import numpy as np

from digitcnn.core.errors import ConfigValueError
from digitcnn.data import Dataset


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
    On TensorFlow (one graph for any batch size) every image is used every epoch, in
    `shuffled_tf_batches`; elsewhere Keras batches the arrays itself.
    """
    steps, full = steps_per_epoch(len(x), batch_size)
    if full:
        return {"x": FullBatches(x, y, batch_size, seed)}, steps
    if keras.backend.backend() == "tensorflow":
        # shuffle=False: the pipeline shuffles; Keras's flag is for arrays it batches itself
        return {"x": shuffled_tf_batches(x, y, batch_size, seed), "shuffle": False}, steps
    return {"x": x, "y": y, "batch_size": batch_size, "shuffle": True}, steps


def shuffled_tf_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """The arrays as a tf.data pipeline of batches, in a new order every epoch (the last batch
    ragged), the same orders for the same seed.

    In place of Keras's own pipeline for arrays (`fit(x, y, shuffle=True)`, Keras 3.15), which
    draws its order with a random op that starts again with each epoch's iterator once a
    global seed is set (`keras.utils.set_random_seed`): every epoch saw the same order. It
    also autotunes (see `_untuned`).
    """
    import tensorflow as tf

    images, labels = tf.constant(x), tf.constant(y)
    order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    batches = order.batch(batch_size).map(
        lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=2
    )
    return _untuned(batches.prefetch(2))


def predict_batches(model: keras.Model, images: np.ndarray, batch_size: int):
    """`model.predict(images)` in batches of `batch_size`; on TensorFlow the batches come from
    a tf.data pipeline that does not autotune (see `_untuned`)."""
    if keras.backend.backend() != "tensorflow":
        return model.predict(images, batch_size=batch_size, verbose=0)
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(images).batch(batch_size).prefetch(1)
    return model.predict(_untuned(batches), verbose=0)


def _untuned(dataset):
    """`dataset` with tf.data's autotuning off. Keras's pipelines for arrays autotune, and
    tearing down such an iterator waits, idle, for the autotuning thread to wake: `fit` or a
    `predict` then ended 2-10 s late in about half the runs here (TF 2.21, 2 cores)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def steps_per_epoch(count: int, batch_size: int) -> tuple[int, bool]:
    """Training steps per epoch over `count` images, and whether they are full batches only
    (on JAX, see `training_batches`)."""
    if keras.backend.backend() == "jax" and count >= batch_size:
        return count // batch_size, True
    return -(-count // batch_size), False


def check_batch_fits(batch_size: int, data: Dataset) -> None:
    """A batch larger than the training set would train on fewer images than asked (or none,
    where batches must be full): one line naming the key, once the data is loaded."""
    train_size = len(data.x_train)
    if batch_size > train_size:
        raise ConfigValueError(
            "trainer.batch_size",
            batch_size,
            f"at most the {train_size:,} training images of dataset={data.name}",
        )


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
    return predict_batches(model, images, even_batch(len(images), PREDICT_BATCH))
