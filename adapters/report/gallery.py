"""Gallery pictures: an image of the dataset with its regions' boxes and labels drawn on it.

Boxes are the pixel boxes ``bbox``, half-open ``[x0, y0, x1, y1)``: the last pixel inside is
``x1 - 1``. The picture is scaled to fit ``size`` pixels (nearest neighbour, so pixels stay
visible) before drawing, so lines and text stay thin on large images and legible on small ones.
"""

from __future__ import annotations

import io
import zlib

from PIL import Image, ImageDraw, ImageFont

_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def label_colour(label: str) -> tuple[int, int, int]:
    """A colour per label name, the same in every report (a checksum, not Python's hash)."""
    return _COLOURS[zlib.crc32(label.encode("utf-8", "surrogatepass")) % len(_COLOURS)]


def _drawable(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """``text`` as the font can draw it: Pillow's bitmap fallback font knows Latin-1 only."""
    try:
        font.getbbox(text)
    except UnicodeEncodeError:
        return text.encode("ascii", "backslashreplace").decode("ascii")
    return text


def draw_regions(png: bytes, regions: list[dict], size: int = 360) -> bytes:
    """The image with each region's box and label drawn, as PNG bytes fitting ``size`` pixels.

    Args:
        png: PNG bytes from the images table.
        regions: dicts with ``label`` and ``bbox`` (pixel box of ``png``).
        size: the longest side of the result.
    """
    with Image.open(io.BytesIO(png)) as source:
        picture = source.convert("RGB")
    scale = size / max(picture.width, picture.height)
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
        Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS,
    )
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for region in regions:
        x0, y0, x1, y1 = region["bbox"]
        box = (
            x0 * scale,
            y0 * scale,
            max(x0 * scale, x1 * scale - 1),
            max(y0 * scale, y1 * scale - 1),
        )
        colour = label_colour(region["label"])
        draw.rectangle(box, outline=colour, width=2)
        text = _drawable(region["label"], font)
        left, top, right, bottom = draw.textbbox((box[0] + 2, box[1] + 1), text, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text((box[0] + 2, box[1] + 1), text, fill=colour, font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
