"""The model families as plain functions of their hyperparameters, shaped by the dataset:
`cnn` (the reference), `mlp` (a dense baseline) and `resnet` (a small residual network)."""

from __future__ import annotations

import keras
from keras import layers

from digitcnn.core.config_groups import CNNConfig, MLPConfig, ModelConfig, ResNetConfig
from digitcnn.core.errors import InputError
from digitcnn.data import Dataset
from digitcnn.models.augment import RandomAffine


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The model `cfg.name` names."""
    builders = {"cnn": build_cnn, "mlp": build_mlp, "resnet": build_resnet}
    return builders[cfg.name](cfg, input_shape, num_classes)


def build_for(cfg: ModelConfig, data: Dataset) -> keras.Model:
    """The model for this data; a family whose settings do not fit the images (a kernel
    larger than what is left of them) is one line naming the model's keys."""
    try:
        return build_model(cfg, data.input_shape, data.num_classes)
    except ValueError as exc:
        height, width = data.input_shape[:2]
        raise InputError(
            f"model={cfg.name} does not fit dataset={data.name}'s {height}x{width} "
            f"images with these settings: {str(exc).splitlines()[0]}"
        ) from None


def _inputs(cfg: ModelConfig, input_shape: tuple[int, ...]):
    """The image input, and the training-time warp when the config asks for one."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.augment_rotation or cfg.augment_zoom or cfg.augment_shift or cfg.augment_elastic:
        x = RandomAffine(  # training only
            cfg.augment_rotation,
            cfg.augment_zoom,
            cfg.augment_shift,
            elastic=cfg.augment_elastic,
            elastic_sigma=cfg.augment_elastic_sigma,
            name="augmentation",
        )(x)
    return inputs, x


def _probabilities(x, num_classes: int):
    # Probabilities in float32 whatever the compute precision: softmax and the loss need it.
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def build_cnn(cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Per entry of `cfg.filters`: (Conv2D -> BatchNorm -> ReLU) x `convs_per_block` -> MaxPool
    -> Dropout; then Flatten -> Dense -> ReLU (-> Dropout) -> Dense softmax, as the reference
    script. `cfg.pool_first`: each block's last Conv2D is pooled before its BatchNorm and ReLU,
    which then work on a quarter of the values (ReLU commutes with max-pooling; BatchNorm's
    statistics become those of the pooled values)."""
    inputs, x = _inputs(cfg, input_shape)
    for i, filters in enumerate(cfg.filters, start=1):
        pooled = False
        for j in range(1, cfg.convs_per_block + 1):
            name = f"{i}" if cfg.convs_per_block == 1 else f"{i}_{j}"  # conv1, or conv1_1 ...
            # No bias: the BatchNorm right after it has its own shift.
            x = layers.Conv2D(
                filters, cfg.kernel_size, padding=cfg.padding, use_bias=False, name=f"conv{name}"
            )(x)
            if cfg.pool_first and j == cfg.convs_per_block and _poolable(x):
                x, pooled = layers.MaxPooling2D(name=f"pool{i}")(x), True
            x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{name}")(x)
            x = layers.ReLU(name=f"relu{name}")(x)
        if not pooled and _poolable(x):
            x = layers.MaxPooling2D(name=f"pool{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    if cfg.dense_dropout > 0:
        x = layers.Dropout(cfg.dense_dropout, name="dense_dropout")(x)
    return keras.Model(inputs, _probabilities(x, num_classes), name="cnn")


def _poolable(x) -> bool:
    return min(x.shape[1:3]) >= 2  # 8x8 inputs run out of pixels before 28x28 ones do


def build_mlp(cfg: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """Flatten, then per entry of `cfg.hidden_units` Dense -> BatchNorm -> ReLU -> Dropout,
    then Dense softmax: no convolution, the baseline that shows what convolutions buy."""
    inputs, x = _inputs(cfg, input_shape)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(cfg.hidden_units, start=1):
        x = layers.Dense(units, use_bias=False, name=f"dense{i}")(x)
        x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.Dropout(cfg.dropout, name=f"dropout{i}")(x)
    return keras.Model(inputs, _probabilities(x, num_classes), name="mlp")


def _conv_bn(x, filters: int, strides: int, momentum: float, name: str):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=name)(x)
    return layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)


def build_resnet(cfg: ResNetConfig, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """A 3x3 stem, then per entry of `cfg.filters` a stage of `blocks_per_stage` residual
    blocks (Conv-BN-ReLU, Conv-BN, plus the input, ReLU); a stage after the first halves the
    side with its first block's stride (while the side allows), and a 1x1 projection carries
    the shortcut where the shape changes. Global average pooling, Dropout, Dense softmax."""
    inputs, x = _inputs(cfg, input_shape)
    x = layers.ReLU(name="stem_relu")(_conv_bn(x, cfg.filters[0], 1, cfg.bn_momentum, "stem"))
    for s, filters in enumerate(cfg.filters, start=1):
        for b in range(1, cfg.blocks_per_stage + 1):
            name = f"stage{s}_block{b}"
            strides = 2 if s > 1 and b == 1 and min(x.shape[1:3]) >= 4 else 1
            shortcut = x
            if strides > 1 or x.shape[-1] != filters:
                shortcut = layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False, name=f"{name}_projection"
                )(x)
                shortcut = layers.BatchNormalization(
                    momentum=cfg.bn_momentum, name=f"{name}_projection_bn"
                )(shortcut)
            y = _conv_bn(x, filters, strides, cfg.bn_momentum, f"{name}_conv1")
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = _conv_bn(y, filters, 1, cfg.bn_momentum, f"{name}_conv2")
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    return keras.Model(inputs, _probabilities(x, num_classes), name="resnet")


def trainable_parameters(model: keras.Model) -> int:
    return int(sum(w.numpy().size for w in model.trainable_weights))
