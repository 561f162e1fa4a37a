"""BatchNorm statistics recomputed from training images before the model is evaluated.

BatchNorm normalises with each batch's statistics while training and with moving averages of
them at inference. With Keras's momentum of 0.99 those averages need several hundred steps to
forget the random start, so a short run validates and tests a model whose normalisation is
still wrong (test accuracy 0.52 after one 18,000-image epoch whose training accuracy was 0.88).

`recalibrate` sets each BatchNorm layer's moving mean and variance to the mean and variance of
its input over a sample of training images, layer after layer in the model's order, each
computed by the network as evaluation runs it (dropout and augmentation off, the BatchNorm
layers before it already recalibrated). Weights and optimizer state are untouched. The passes
are compiled Keras `predict` calls (XLA on JAX), one per BatchNorm layer, each through the
layers up to it only.
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import ops

from digitcnn.evaluation.metrics import loss_and_accuracy
from digitcnn.training.batching import even_batch, predict_batches, predict_probabilities

_PREDICT_BATCH = 512  # at most this many images per compiled call of the statistics passes


class Recalibrator:
    """The statistics passes of one model, built once (each compiles on first use)."""

    def __init__(self, model: keras.Model) -> None:
        self.norms = [
            layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
        ]
        self._probes = [self._probe(model, norm) for norm in self.norms]

    @staticmethod
    def _probe(model: keras.Model, norm: keras.layers.BatchNormalization) -> keras.Model:
        """A model from the input to `norm`'s input, answering per image the mean and the mean
        square of each channel (float32, whatever the compute precision)."""
        features = ops.cast(norm.input, "float32")
        axes = [a for a in range(1, len(features.shape)) if a != norm.axis % len(features.shape)]
        return keras.Model(
            model.inputs,
            [ops.mean(features, axis=axes), ops.mean(ops.square(features), axis=axes)],
            name=f"{norm.name}_statistics",
        )

    def __call__(self, images: np.ndarray) -> None:
        batch = even_batch(len(images), _PREDICT_BATCH)
        for norm, probe in zip(self.norms, self._probes, strict=True):
            means, squares = predict_batches(probe, images, batch)
            mean = means.mean(axis=0)
            variance = np.maximum(squares.mean(axis=0) - mean**2, 0.0)
            norm.moving_mean.assign(mean.astype(norm.moving_mean.dtype))
            norm.moving_variance.assign(variance.astype(norm.moving_variance.dtype))


def recalibrate(model: keras.Model, images: np.ndarray) -> int:
    """Recompute every BatchNorm layer's moving statistics from `images` (see the module's
    docstring); returns the number of layers recalibrated."""
    recalibrator = Recalibrator(model)
    recalibrator(images)
    return len(recalibrator.norms)


class RecalibratedValidation(keras.callbacks.Callback):
    """At the end of every epoch: recompute BatchNorm statistics from `batches` x `batch_size`
    random training images (0 batches: keep Keras's moving averages), then validate. Adds
    `val_loss`, `val_accuracy` and `bn_recalibration_seconds` to the epoch's logs, for the
    callbacks after it. The model a checkpoint saves, and the one tested at the end, carry the
    recomputed statistics.

    Validation is `predict_probabilities` (the batches the test set is predicted in, so one
    compiled program serves both) scored in NumPy; `probabilities` keeps the last epoch's
    answer for `x_val`, which is the test set's when they are one array."""

    def __init__(
        self,
        x_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        batches: int,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.x_train, self.x_val, self.y_val = x_train, x_val, y_val  # y_val: class numbers
        self.images = min(len(x_train), batches * batch_size)
        self.probabilities: np.ndarray | None = None
        self._rng = np.random.default_rng(seed)
        self._recalibrator: Recalibrator | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        started = time.perf_counter()
        if self.images:
            if self._recalibrator is None:
                self._recalibrator = Recalibrator(self.model)
            chosen = np.sort(self._rng.choice(len(self.x_train), self.images, replace=False))
            self._recalibrator(self.x_train[chosen])
        logs["bn_recalibration_seconds"] = time.perf_counter() - started
        self.probabilities = predict_probabilities(self.model, self.x_val)
        logs["val_loss"], logs["val_accuracy"] = loss_and_accuracy(self.probabilities, self.y_val)
