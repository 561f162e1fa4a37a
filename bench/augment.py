"""What augmentation does to a digit: sharpness and time of one affine warp against Keras's
chained RandomRotation -> RandomTranslation -> RandomZoom (each of which resamples).

    python bench/augment.py            # 512 MNIST training images, experiment=best's limits
    python bench/augment.py --rotation 15 --shift 0.05 --zoom 0.05
    python bench/augment.py --digits   # scikit-learn's 8x8 digits: no MNIST needed

Sharpness is the squared horizontal gradient over the squared intensity, averaged over the
batch: interpolation lowers it, so a warp that blurs less keeps it nearer the original's.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from digitcnn.core import paths
from digitcnn.core.runtime import import_keras_quietly


def sharpness(images: np.ndarray) -> float:
    x = np.asarray(images, dtype=np.float64)[..., 0]
    return float((np.diff(x, axis=2) ** 2).sum() / (x**2).sum())


def per_call_ms(layer, images: np.ndarray, repeats: int) -> float:
    layer(images, training=True)  # the first call traces
    started = time.perf_counter()
    for _ in range(repeats):
        layer(images, training=True)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotation", type=float, default=10.0, help="degrees, +-")
    parser.add_argument("--shift", type=float, default=0.1, help="fraction of the side, +-")
    parser.add_argument("--zoom", type=float, default=0.1, help="fraction, in or out")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mnist", default=str(paths.project_root() / "data" / "mnist.npz"))
    parser.add_argument("--digits", action="store_true", help="scikit-learn's 8x8 digits")
    args = parser.parse_args()

    import_keras_quietly()
    import keras
    from keras import layers

    from digitcnn.models.augment import RandomAffine

    if args.digits:
        from sklearn.datasets import load_digits

        images = (load_digits().images[: args.images] / 16).astype(np.float32)[..., np.newaxis]
    else:
        with np.load(args.mnist) as mnist:
            images = (mnist["x_train"][: args.images] / 255).astype(np.float32)[..., np.newaxis]
    keras.utils.set_random_seed(0)
    single = RandomAffine(args.rotation, args.zoom, args.shift)
    chained = keras.Sequential(
        [
            layers.RandomRotation(args.rotation / 360, fill_mode="constant"),
            layers.RandomTranslation(args.shift, args.shift, fill_mode="constant"),
            layers.RandomZoom((-args.zoom, args.zoom), fill_mode="constant"),
        ]
    )
    result = {
        "images": len(images),
        "sharpness": {
            "original": sharpness(images),
            "one_affine_warp": sharpness(single(images, training=True)),
            "keras_chain": sharpness(chained(images, training=True)),
        },
        "ms_per_batch": {
            "one_affine_warp": per_call_ms(single, images, args.repeats),
            "keras_chain": per_call_ms(chained, images, args.repeats),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
