"""Training-time augmentation: one random warp per image (rotation, zoom, shift, and an
elastic distortion).

Keras's RandomRotation, RandomZoom and RandomTranslation each resample the image, so chaining
them interpolates a digit three times and blurs its strokes. `RandomAffine` composes the three
into one matrix, adds the elastic displacement (Simard, Steinkraus and Platt, 2003: a random
field of displacements in [-1, 1] pixels, smoothed by a Gaussian of `elastic_sigma` pixels and
scaled by `elastic`) to where each pixel samples, and resamples once; at inference it is the
identity.
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
        elastic: float = 0.0,
        elastic_sigma: float = 4.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.seed = rotation, zoom, shift, seed
        self.elastic, self.elastic_sigma = elastic, elastic_sigma
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, images, training: bool | None = None):
        if not training or not (self.rotation or self.zoom or self.shift or self.elastic):
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
        if self.elastic:
            warped = self._elastic(images, (cos, -sin, a2), (sin, cos, b2))
            return ops.cast(warped, images.dtype)
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

    def _elastic(self, images, row_x, row_y):
        """Each output pixel (x, y) samples the input at the affine map of (x, y) (`row_x`,
        `row_y`: its two rows, per image) plus a smooth random displacement."""
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        ys, xs = ops.meshgrid(
            ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij"
        )
        xs, ys = xs[None], ys[None]  # (1, height, width)
        row_x = [ops.reshape(a, (-1, 1, 1)) for a in row_x]
        row_y = [ops.reshape(a, (-1, 1, 1)) for a in row_y]
        field = self._displacement(batch, height, width)
        source_x = row_x[0] * xs + row_x[1] * ys + row_x[2] + field[..., 0]
        source_y = row_y[0] * xs + row_y[1] * ys + row_y[2] + field[..., 1]
        return bilinear(ops.cast(images, "float32"), source_x, source_y)

    def _displacement(self, batch, height: int, width: int):
        """(batch, height, width, 2) displacements: uniform noise in [-1, 1], smoothed by a
        Gaussian of `elastic_sigma` pixels (separably), times `elastic`."""
        noise = keras.random.uniform(
            (batch, height, width, 2), minval=-1.0, maxval=1.0, seed=self.seed_generator
        )
        radius = max(1, math.ceil(3 * self.elastic_sigma))
        taps = ops.exp(
            -0.5 * (ops.arange(-radius, radius + 1, dtype="float32") / self.elastic_sigma) ** 2
        )
        taps = taps / ops.sum(taps)
        down = ops.tile(ops.reshape(taps, (-1, 1, 1, 1)), (1, 1, 2, 1))
        across = ops.tile(ops.reshape(taps, (1, -1, 1, 1)), (1, 1, 2, 1))
        smooth = ops.depthwise_conv(noise, down, padding="same")
        smooth = ops.depthwise_conv(smooth, across, padding="same")
        return smooth * self.elastic

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
            "elastic": self.elastic,
            "elastic_sigma": self.elastic_sigma,
        }


def bilinear(images, source_x, source_y):
    """`images` (batch, height, width, channels) sampled at (`source_x`, `source_y`), each
    (batch, height, width) in pixels; outside the image is 0."""
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    flat = ops.reshape(images, (-1, channels))
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    x0, y0 = ops.floor(source_x), ops.floor(source_y)
    wx, wy = source_x - x0, source_y - y0
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")

    def pixel(y, x):
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        index = base + ops.clip(y, 0, height - 1) * width + ops.clip(x, 0, width - 1)
        values = ops.take(flat, ops.reshape(index, (-1,)), axis=0)
        values = ops.reshape(values, (batch, height, width, channels))
        return values * ops.cast(inside, "float32")[..., None]

    wx, wy = wx[..., None], wy[..., None]
    top = pixel(y0, x0) * (1 - wx) + pixel(y0, x0 + 1) * wx
    bottom = pixel(y0 + 1, x0) * (1 - wx) + pixel(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy
