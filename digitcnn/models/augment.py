"""Training-time augmentation: one random affine warp per image (rotation, zoom, shift).

Keras's RandomRotation, RandomZoom and RandomTranslation each resample the image, so chaining
them interpolates a digit three times and blurs its strokes. `RandomAffine` composes the three
into one matrix and resamples once; at inference it is the identity.
"""

from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="digitcnn")
class RandomAffine(keras.layers.Layer):
    """Per image: rotate by up to ±`rotation` degrees, zoom by a factor in
    [1 - `zoom`, 1 + `zoom`], shift by up to ±`shift` of the side; uncovered pixels are 0.
    Input: (batch, height, width, channels), channels last."""

    def __init__(
        self,
        rotation: float = 0.0,
        zoom: float = 0.0,
        shift: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.seed = rotation, zoom, shift, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, images, training: bool | None = None):
        if not training or not (self.rotation or self.zoom or self.shift):
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        angle = self._uniform(batch, math.radians(self.rotation))
        # A zoom factor z shows the image z times larger: each output pixel samples 1/z.
        scale = 1.0 / (1.0 + self._uniform(batch, self.zoom))
        shift_x = self._uniform(batch, self.shift * width)
        shift_y = self._uniform(batch, self.shift * height)
        cos, sin = ops.cos(angle) * scale, ops.sin(angle) * scale
        # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2): the rotation
        # and zoom act about the centre, then the shift moves the result.
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a2 = cx - cos * cx + sin * cy - shift_x
        b2 = cy - sin * cx - cos * cy - shift_y
        zeros = ops.zeros_like(cos)
        transform = ops.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
        warped = ops.image.affine_transform(
            ops.cast(images, "float32"),
            transform,
            interpolation="bilinear",
            fill_mode="constant",
            fill_value=0,
            data_format="channels_last",
        )
        return ops.cast(warped, images.dtype)

    def _uniform(self, batch, limit: float):
        if not limit:
            return ops.zeros((batch,), "float32")
        return keras.random.uniform((batch,), minval=-limit, maxval=limit, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "zoom": self.zoom,
            "shift": self.shift,
            "seed": self.seed,
        }
