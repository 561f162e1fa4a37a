"""Any image of a digit -> a 28x28 MNIST-like array, prepared the way MNIST was made.

Grayscale; inverted when the background is light (MNIST is white ink on black); cropped to the
ink; the longer side scaled to 20 pixels, keeping the aspect ratio; placed in a 28x28 field so
that its centre of mass sits at the centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE, BOX = 28, 20  # MNIST: a 20x20 box, centred by mass in 28x28
_INK = 0.15  # pixels above this fraction of the maximum count as ink when cropping
MIN_CONTRAST = 32  # grey levels (of 255) above the background that a digit's ink must reach
MAX_PIXELS = 50_000_000  # larger images are refused before they are decoded


class NotAnImageError(ValueError):
    """The file is not an image Pillow can read, or one too large to decode."""


class NoInkError(ValueError):
    """The image is blank: nothing stands out from its background."""


def load_image(path: Path) -> np.ndarray:
    """The image at `path` as float32 grayscale in [0, 255]. Its size is read from the header
    first: an image of more than MAX_PIXELS pixels (a decompression bomb is a few kB on disk)
    is refused without being decoded."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise NotAnImageError(
                    f"{path}: too large ({width}x{height} pixels; the limit is "
                    f"{MAX_PIXELS:,} pixels)"
                )
            image.load()
            return _opaque_gray(image)
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit, at open
        raise NotAnImageError(f"{path}: too large ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise NotAnImageError(f"{path}: not an image ({exc})") from None


def _opaque_gray(image: Image.Image) -> np.ndarray:
    """Grayscale of an image, its transparent parts filled with the shade that sets its ink
    apart: drawing tools and browsers save black ink on a transparent background (whose
    pixels are often black too), which read as gray alone would be blank."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa"):
        return np.asarray(image.convert("L"), dtype=np.float32)
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    gray = np.asarray(rgba.convert("L"), dtype=np.float32)
    opaque = alpha > 0.5
    if opaque.all():
        return gray
    ink = gray[opaque]
    # Dark ink (or none) goes on white, light ink on black: the ink stays visible either way.
    fill = 255.0 if ink.size == 0 or np.median(ink) < 128 else 0.0
    return gray * alpha + fill * (1.0 - alpha)


def _edges(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """A grayscale digit (any size, dark-on-light or light-on-dark) -> uint8 (28, 28).

    An image already in MNIST's form (28x28, light ink on a dark background) is kept as it is.
    A blank image (no pixel MIN_CONTRAST levels above the background) raises NoInkError.
    """
    gray = np.asarray(gray, dtype=np.float32)
    light = np.median(_edges(gray)) > 127
    if light:  # light background: make it white ink on black
        gray = 255.0 - gray
    background = np.median(_edges(gray))
    if gray.max() - background < MIN_CONTRAST:
        raise NoInkError("no ink: the image is blank")
    if not light and gray.shape == (SIZE, SIZE):
        return gray.astype(np.uint8)
    gray = np.clip(gray - background, 0, None)  # background to 0
    ink = gray > _INK * gray.max()
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop = crop / crop.max() * 255.0

    height, width = crop.shape
    scale = BOX / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(
        Image.fromarray(crop.astype(np.uint8)).resize(new_size, Image.Resampling.LANCZOS),
        dtype=np.float32,
    )

    field = np.zeros((SIZE, SIZE), np.float32)
    total = resized.sum()
    ys, xs = np.indices(resized.shape)
    cy, cx = (ys * resized).sum() / total, (xs * resized).sum() / total
    top = round(SIZE / 2 - cy)
    left = round(SIZE / 2 - cx)
    top = min(max(top, 0), SIZE - resized.shape[0])  # keep the whole digit in the field
    left = min(max(left, 0), SIZE - resized.shape[1])
    field[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return np.clip(field, 0, 255).astype(np.uint8)
