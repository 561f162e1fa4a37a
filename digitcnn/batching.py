"""Batch sizes that suit a backend which compiles one program per batch shape (JAX)."""

from __future__ import annotations

import keras


def train_steps(count: int, batch_size: int) -> tuple[int, bool]:
    """Training steps per epoch over `count` images, and whether they are full batches only.

    On JAX every distinct batch shape is compiled anew, so the ragged last batch of an epoch
    is left out there (a different random remainder each epoch, as the data is shuffled):
    one train step is compiled, not two. Elsewhere every image is used every epoch.
    """
    if keras.backend.backend() == "jax" and count >= batch_size:
        return count // batch_size, True
    return -(-count // batch_size), False


def even_batch(count: int, largest: int) -> int:
    """A batch size of at most `largest` that divides `count`, so that evaluating `count`
    images compiles one program, not two; `largest` itself where only a much smaller size
    would divide it."""
    if count <= largest:
        return max(count, 1)
    size = next(b for b in range(largest, 0, -1) if count % b == 0)
    return size if size * 4 >= largest else largest
