"""The logged model as MLflow sees it: a pyfunc that takes images as pixels, not tensors.

`mlflow.pyfunc.load_model("runs:/<id>/model").predict(images)` takes a float32 batch of shape
(N, H, W): pixel values either 0..pixel_max (as MNIST stores them) or already scaled to 0..1,
and returns class probabilities (N, classes). The same model answers `mlflow models serve`.
"""

from __future__ import annotations

import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

KERAS_ARTIFACT = "keras_model"


def scale_pixels(images: np.ndarray, pixel_max: float) -> np.ndarray:
    """(N, H, W[, 1]) pixels -> float32 (N, H, W, 1) in [0, 1]. Values above 1 are taken as raw
    pixel values (0..pixel_max); values within [0, 1] as already scaled."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.size and x.max() > 1.0:
        x = x / np.float32(pixel_max)
    return x


def input_image_shape(model) -> tuple[int, ...] | None:
    """The (height, width) of the images a loaded pyfunc model's signature takes, if it says."""
    schema = model.metadata.get_input_schema()
    return tuple(schema.inputs[0].shape[1:3]) if schema and schema.inputs else None


class DigitClassifier(PythonModel):
    """Wraps the trained Keras model with the scaling the training data had."""

    def load_context(self, context: PythonModelContext) -> None:
        import keras

        from digitcnn.models import augment  # noqa: F401  registers RandomAffine for loading

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self.pixel_max = float(context.model_config["pixel_max"])

    # The ndarray hint tells MLflow that the logged signature, not a hint, describes the input.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        from digitcnn.training.batching import (
            predict_probabilities,  # imports Keras, as load_context did
        )

        return predict_probabilities(self.model, scale_pixels(model_input, self.pixel_max))
