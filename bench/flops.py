"""The ceiling: training FLOPs per image of a model config, and this machine's measured
float32 matrix-multiply FLOP/s.

    python bench/flops.py                          # the default (seed) model
    python bench/flops.py --filters 32 64 128 --dense-units 256 --kernel-size 3
    python bench/flops.py --filters 16 32 --dense-units 256 --padding valid   # experiment=fast
    python bench/flops.py --tensorflow             # also TensorFlow's float32 and bf16 matmul

Counts multiply-adds x 2 in convolutions and dense layers (BatchNorm, pooling and activations
are a rounding error here); training costs about 3x the forward pass (forward, plus gradients
with respect to inputs and to weights).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def forward_flops(
    filters: list[int],
    kernel: int,
    dense_units: int,
    side: int = 28,
    channels: int = 1,
    classes: int = 10,
    convs_per_block: int = 1,
    padding: str = "same",
) -> int:
    """Forward FLOPs of the CNN with 2x2 pooling after each block; `valid` padding shrinks
    each convolution's output by kernel - 1."""
    total = 0
    for f in filters:
        for _ in range(convs_per_block):
            if padding == "valid":
                side -= kernel - 1
            total += 2 * side * side * kernel * kernel * channels * f
            channels = f
        side //= 2
    flat = side * side * channels
    return total + 2 * flat * dense_units + 2 * dense_units * classes


def matmul_flops_per_second(n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` float32 n x n matrix products, in FLOP/s."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    return _best_flops_per_second(lambda: a @ b, n, repeats)


def tensorflow_matmul_flops_per_second(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` n x n products in TensorFlow at `dtype` (bfloat16 uses AMX where the
    CPU has it), in FLOP/s."""
    import tensorflow as tf

    a = tf.cast(tf.random.uniform((n, n), seed=0), dtype)
    product = tf.function(lambda: tf.matmul(a, a))
    return _best_flops_per_second(lambda: product().numpy(), n, repeats)


def _best_flops_per_second(product, n: int, repeats: int) -> float:
    """FLOP/s of the fastest of `repeats` calls of `product`, an n x n matrix product, after
    one untimed call (warm-up, and tracing where there is any)."""
    product()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--convs-per-block", type=int, default=1)
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--padding", choices=("same", "valid"), default="same")
    parser.add_argument("--dense-units", type=int, default=128)
    parser.add_argument("--images-per-second", type=float, help="a measured training rate")
    parser.add_argument(
        "--tensorflow", action="store_true", help="also time TensorFlow matmul, float32 and bf16"
    )
    args = parser.parse_args()
    forward = forward_flops(
        args.filters,
        args.kernel_size,
        args.dense_units,
        convs_per_block=args.convs_per_block,
        padding=args.padding,
    )
    peak = matmul_flops_per_second()
    result = {
        "forward_mflops_per_image": forward / 1e6,
        "training_mflops_per_image": 3 * forward / 1e6,
        "matmul_gflops_per_second": peak / 1e9,
        "ceiling_images_per_second": peak / (3 * forward),
    }
    if args.images_per_second:
        result["fraction_of_ceiling"] = args.images_per_second * 3 * forward / peak
    if args.tensorflow:
        for dtype in ("float32", "bfloat16"):
            flops = tensorflow_matmul_flops_per_second(dtype)
            result[f"tensorflow_{dtype}_matmul_gflops_per_second"] = flops / 1e9
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
