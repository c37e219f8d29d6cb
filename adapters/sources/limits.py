"""Decoding limits, checked on a file's header before any pixel is allocated.

A header may declare far more than its file holds (a damaged or hostile file), so the declared
size is checked first: a volume past ``MAX_VOXELS`` or a 2D image past ``MAX_PIXELS`` is the
record-level reject ``too_large``, never an allocation that sinks the shard.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from medgrit.adapters.sources.nifti import MAX_VOXELS
from medgrit.core.cases import UnreadableImage
from medgrit.core.fsnames import escape_name

__all__ = ["MAX_PIXELS", "MAX_VOXELS", "check_pixels", "open_image"]

# Pillow's own decompression-bomb threshold (about 89 million pixels, 9459 x 9459).
MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def check_pixels(shape: tuple[int, ...], what: str, limit: int = MAX_PIXELS) -> None:
    """Raise ``too_large`` when an image of ``shape`` holds more than ``limit`` values."""
    count = math.prod(int(n) for n in shape)
    if count > limit:
        dims = " x ".join(str(int(n)) for n in shape)
        raise UnreadableImage("too_large", f"{what} declares {dims} = {count} values, over {limit}")


@contextmanager
def open_image(path: Path, what: str | None = None) -> Iterator[Image.Image]:
    """``Image.open`` with the pixel limit checked on the header, before decoding.

    Raises:
        UnreadableImage: ``too_large``; other errors of ``Image.open`` pass through.
    """
    name = what or escape_name(Path(path).name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise UnreadableImage("too_large", f"{name} is over {MAX_PIXELS} pixels") from None
    with image:
        width, height = image.size
        check_pixels((height, width, getattr(image, "n_frames", 1)), name)
        yield image
