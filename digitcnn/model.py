"""The CNN as a plain function of its hyperparameters, shaped by the dataset."""

from __future__ import annotations

import keras
from keras import layers

from digitcnn.augment import RandomAffine
from digitcnn.config import CNNConfig


def build_cnn(cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Per entry of `cfg.filters`: (Conv2D -> BatchNorm -> ReLU) x `convs_per_block` -> MaxPool
    -> Dropout; then Flatten -> Dense -> ReLU (-> Dropout) -> Dense softmax, as the reference
    script."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.augment_rotation or cfg.augment_zoom or cfg.augment_shift:  # training only
        x = RandomAffine(
            cfg.augment_rotation, cfg.augment_zoom, cfg.augment_shift, name="augmentation"
        )(x)
    for i, filters in enumerate(cfg.filters, start=1):
        for j in range(1, cfg.convs_per_block + 1):
            name = f"{i}" if cfg.convs_per_block == 1 else f"{i}_{j}"  # conv1, or conv1_1 ...
            # No bias: the BatchNorm right after it has its own shift.
            x = layers.Conv2D(
                filters, cfg.kernel_size, padding=cfg.padding, use_bias=False, name=f"conv{name}"
            )(x)
            x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{name}")(x)
            x = layers.ReLU(name=f"relu{name}")(x)
        if min(x.shape[1:3]) >= 2:  # 8x8 inputs run out of pixels before 28x28 ones do
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dense_dropout > 0:
        x = layers.Dropout(cfg.dense_dropout, name="dense_dropout")(x)
    # Probabilities in float32 whatever the compute precision: softmax and the loss need it.
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name="cnn")


def trainable_parameters(model: keras.Model) -> int:
    return int(sum(w.numpy().size for w in model.trainable_weights))
