"""The near copies decontamination is measured against (bench/decontaminate.py) and tested with: what a web copy of
a benchmark image does to it. Each takes an RGB picture and a seeded generator (for crop offsets) and returns the
copy's encoded bytes and format."""
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

Copy = Callable[[Image.Image, np.random.Generator], tuple[bytes, str]]


def encoded(image: Image.Image, fmt: str, quality: int = 95) -> tuple[bytes, str]:
    stream = io.BytesIO()
    if fmt == "jpg":
        image.save(stream, format="JPEG", quality=quality)
    else:
        image.save(stream, format="PNG")
    return stream.getvalue(), fmt


def resized(scale: float) -> Copy:
    def copy(image, rng):
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return encoded(image.resize(size, Image.BICUBIC), "jpg")
    return copy


def jpeg(quality: int) -> Copy:
    return lambda image, rng: encoded(image, "jpg", quality)


def cropped(keep_x: float, keep_y: float) -> Copy:
    """A crop keeping `keep_x` of the width and `keep_y` of the height, at a random offset."""
    def copy(image, rng):
        width, height = round(image.width * keep_x), round(image.height * keep_y)
        x0 = int(rng.integers(0, image.width - width + 1))
        y0 = int(rng.integers(0, image.height - height + 1))
        return encoded(image.crop((x0, y0, x0 + width, y0 + height)), "jpg")
    return copy


def greyscale(image, rng):
    return encoded(image.convert("L").convert("RGB"), "jpg")


def other_format(image, rng):
    """PNG of a JPEG original, JPEG (quality 75) of any other."""
    return encoded(image, "png") if image.format == "JPEG" else encoded(image, "jpg", 75)


COPIES: dict[str, Copy] = {
    "resize 50%": resized(0.5), "resize 75%": resized(0.75), "resize 125%": resized(1.25),
    "resize 150%": resized(1.5),
    "jpeg 30": jpeg(30), "jpeg 50": jpeg(50), "jpeg 75": jpeg(75), "jpeg 95": jpeg(95),
    "crop 10%": cropped(0.9, 0.9), "crop 10% width": cropped(0.9, 1.0), "crop 10% height": cropped(1.0, 0.9),
    "greyscale": greyscale, "png <-> jpeg": other_format,
}
