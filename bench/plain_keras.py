"""The baseline: the reference CNN in plain Keras, no Hydra, no MLflow.

Same model, data split sizes, batch size and thread settings as `python -m digitcnn.run`;
prints one JSON line of timings. Used by bench/compare.py.

    python bench/plain_keras.py --data data/mnist.npz --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def process_age() -> float:
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")


def load(path: str | None, val_size: int, limit: int | None):
    import numpy as np

    if path:
        with np.load(path) as d:
            x, y, xt, yt = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
        scale = 255.0
    else:  # scikit-learn's digits, as `dataset=digits`
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        b = load_digits()
        x, xt, y, yt = train_test_split(
            b.images, b.target, test_size=360, random_state=0, stratify=b.target
        )
        scale = 16.0
    x, y = x[:limit], y[:limit]
    x = (x / scale).astype("float32")[..., None]
    xt = (xt / scale).astype("float32")[..., None]
    eye = np.eye(10, dtype="float32")
    test = (xt, eye[yt])
    if not val_size:  # validate on the test set, as `dataset.val_size=0`
        return (x, eye[y]), test, test
    n = len(x) - val_size
    return (x[:n], eye[y[:n]]), (x[n:], eye[y[n:]]), test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Keras-layout mnist.npz; omitted: sklearn digits")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--kernel-size", type=int, default=5, help="as model.kernel_size")
    parser.add_argument("--val-size", type=int, default=5000, help="0: validate on the test set")
    parser.add_argument("--limit", type=int, help="as dataset.limit: the first N training images")
    parser.add_argument("--padding", default="same", help="as model.padding")
    parser.add_argument("--dense-dropout", type=float, default=0.0, help="as model.dense_dropout")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--threads", type=int, nargs=2, default=(0, 0), metavar=("INTRA", "INTER"))
    args = parser.parse_args()
    started = time.perf_counter()
    startup = process_age()

    import keras
    from keras import layers

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(args.threads[1])
    keras.utils.set_random_seed(42)
    imported = time.perf_counter()

    (x, y), val, (xt, yt) = load(args.data, args.val_size, args.limit)
    inputs = keras.Input(shape=x.shape[1:])
    h = inputs
    for filters in (32, 64):
        h = layers.Conv2D(filters, args.kernel_size, padding=args.padding, use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        h = layers.ReLU()(h)
        h = layers.MaxPooling2D()(h)
        h = layers.Dropout(0.25)(h)
    h = layers.Flatten()(h)
    h = layers.Dense(128, activation="relu")(h)
    if args.dense_dropout:
        h = layers.Dropout(args.dense_dropout)(h)
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(h))
    steps = -(-len(x) // args.batch_size) * args.epochs  # Adam, cosine-decayed, as the default
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    if args.schedule == "constant":
        schedule = 1e-3
    model.compile(keras.optimizers.Adam(schedule), "categorical_crossentropy", metrics=["accuracy"])

    epoch_seconds: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.t)

    fit_start = process_age()
    fit_started = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=val,
        shuffle=True,
        verbose=0,
        callbacks=[Clock()],
    )
    fit_seconds = time.perf_counter() - fit_started
    accuracy = float(
        (model.predict(xt, batch_size=1024, verbose=0).argmax(1) == yt.argmax(1)).mean()
    )
    steady = epoch_seconds[1:]
    print(
        json.dumps(
            {
                "startup_seconds": startup,
                "import_seconds": imported - started,
                "fit_start_seconds": fit_start,
                "fit_seconds": fit_seconds,
                "first_epoch_seconds": epoch_seconds[0],
                "steady_images_per_second": len(x) * len(steady) / sum(steady) if steady else None,
                "test_accuracy": accuracy,
                "process_seconds": startup + time.perf_counter() - started,
            }
        )
    )


if __name__ == "__main__":
    main()
