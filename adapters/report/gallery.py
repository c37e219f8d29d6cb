"""Gallery pictures: an image of the dataset with its regions' boxes and labels drawn on it.

Boxes are the pixel boxes ``bbox``, half-open ``[x0, y0, x1, y1)``: the last pixel inside is
``x1 - 1``. The image is scaled so its longest side is ``size`` pixels (nearest neighbour, so
pixels stay visible) before drawing, so lines and text stay thin on large images and legible on
small ones.

Labels never cover one another (:mod:`medgrit.adapters.report.placement`): each goes beside its
box, or at the nearest free place with a line to its box. When the names do not all fit, would
hide over a fifth of the image, or half of them would stand apart from their boxes, or an image has
more than :data:`MAX_NAMED` regions, the boxes carry numbers instead and a key below the image
names them (one number per label name, numbered in reading order of the boxes). The key is as
wide as the image, or as its widest entry up to 360 pixels; a longer name is cut (``...``).
:func:`layout_labels` says where everything goes; :func:`draw_regions` draws it.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from medgrit.adapters.report.placement import OUTLINE, Rect, flow_key, gap, place_labels

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


MAX_NAMED = 12
"""Most regions an image's labels name in place; more get numbers and a key."""

_PAD = 1  # pixels of black around a label's text
_KEY_GAP = 4  # pixels between the image and its key
_LEADER = 3  # a label this far from its box (or farther) gets a line to it
_MOST_COVERED = 0.2  # names in place may hide this share of the image at most
_KEY_WIDTH = 360  # a key wider than its image is as wide as its widest entry, up to this
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


@dataclass(frozen=True)
class PlacedLabel:
    """A label drawn on the canvas.

    Attributes:
        text: what is drawn (the label, or its number when a key names it).
        colour: its label's colour.
        rect: its black background, half-open canvas pixels.
        leader: a line from the label to its box, or None when it touches the box.
    """

    text: str
    colour: tuple[int, int, int]
    rect: Rect
    leader: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class LabelLayout:
    """Where a picture's parts go: the scaled image at the canvas's top left, its boxes, the
    labels on it and the key below it (empty when the labels name their regions in place).

    Every rectangle is half-open canvas pixels; no two of ``labels`` and ``key`` share one.
    """

    width: int
    height: int
    image_size: tuple[int, int]
    boxes: list[Rect]
    labels: list[PlacedLabel]
    key: list[PlacedLabel]


def _scaled_box(bbox: list[int], scale: float, width: int, height: int) -> Rect:
    x0, y0, x1, y1 = (int(v) for v in bbox)
    left = min(max(round(x0 * scale), 0), width - 1)
    top = min(max(round(y0 * scale), 0), height - 1)
    right = min(max(round(x1 * scale), left + 1), width)
    bottom = min(max(round(y1 * scale), top + 1), height)
    return (left, top, right, bottom)


def _size(text: str, font: _Font) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return int(right - left) + 2 * _PAD, int(bottom - top) + 2 * _PAD


def _leader(rect: Rect, box: Rect) -> tuple[int, int, int, int] | None:
    """A line from the label's edge to the nearest point of its box, when it is far from it."""
    dx, dy = gap(rect, box)
    if max(dx, dy) < _LEADER:
        return None
    cx = min(max((box[0] + box[2]) // 2, rect[0]), rect[2] - 1)
    cy = min(max((box[1] + box[3]) // 2, rect[1]), rect[3] - 1)
    bx = min(max(cx, box[0]), box[2] - 1)
    by = min(max(cy, box[1]), box[3] - 1)
    return (cx, cy, bx, by)


def _shortened(text: str, font: _Font, width: int) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels."""
    if _size(text, font)[0] <= width:
        return text
    while len(text) > 1 and _size(text + "...", font)[0] > width:
        text = text[:-1]
    return text + "..."


def _named(boxes: list[Rect], regions: list[dict], font: _Font, canvas: tuple[int, int]):
    """Labels naming their regions in place, or None when one does not fit."""
    texts = [_drawable(r["label"], font) for r in regions]
    rects = place_labels(boxes, [_size(t, font) for t in texts], *canvas)
    if any(rect is None for rect in rects):
        return None
    covered = sum((r[2] - r[0]) * (r[3] - r[1]) for r in rects if r is not None)
    far = sum(_leader(r, box) is not None for r, box in zip(rects, boxes, strict=True) if r)
    if covered > _MOST_COVERED * canvas[0] * canvas[1] or far > len(boxes) // 2:
        return None  # names would hide the image, or stand apart from their boxes
    return [
        PlacedLabel(t, label_colour(r["label"]), rect, _leader(rect, box))
        for t, r, rect, box in zip(texts, regions, rects, boxes, strict=True)
        if rect is not None
    ]


def layout_labels(image_size: tuple[int, int], regions: list[dict], size: int = 360) -> LabelLayout:
    """Where the boxes, labels and key of a picture go (see the module docstring).

    Args:
        image_size: ``(width, height)`` of the image, in pixels.
        regions: dicts with ``label`` and ``bbox`` (pixel box of the image).
        size: the longest side of the scaled image.
    """
    scale = size / max(image_size)
    width = max(1, round(image_size[0] * scale))
    height = max(1, round(image_size[1] * scale))
    boxes = [_scaled_box(r["bbox"], scale, width, height) for r in regions]
    font = ImageFont.load_default()
    named = _named(boxes, regions, font, (width, height)) if len(regions) <= MAX_NAMED else None
    if named is not None:
        return LabelLayout(width, height, (width, height), boxes, named, [])
    order = sorted(range(len(regions)), key=lambda i: (boxes[i][1], boxes[i][0], i))
    numbers: dict[str, int] = {}
    for i in order:
        numbers.setdefault(regions[i]["label"], len(numbers) + 1)
    tags = [str(numbers[r["label"]]) for r in regions]
    rects = place_labels(boxes, [_size(t, font) for t in tags], width, height)
    labels = [
        PlacedLabel(tag, label_colour(r["label"]), rect, _leader(rect, box))
        for tag, r, rect, box in zip(tags, regions, rects, boxes, strict=True)
        if rect is not None
    ]
    entries = [f"{n} {_drawable(label, font)}" for label, n in numbers.items()]
    widest = max((_size(e, font)[0] for e in entries), default=0)
    canvas = max(width, min(widest, _KEY_WIDTH))
    entries = [_shortened(e, font, canvas) for e in entries]
    places = flow_key([_size(e, font) for e in entries], canvas, height + _KEY_GAP)
    key = [
        PlacedLabel(entry, label_colour(label), rect)
        for entry, label, rect in zip(entries, numbers, places, strict=True)
    ]
    bottom = max((rect[3] for rect in places), default=height)
    return LabelLayout(canvas, bottom, (width, height), boxes, labels, key)


def draw_regions(png: bytes, regions: list[dict], size: int = 360) -> bytes:
    """The image with each region's box and label drawn, as PNG bytes (see
    :func:`layout_labels` for where each part goes; a key adds rows below the image).

    Args:
        png: PNG bytes from the images table.
        regions: dicts with ``label`` and ``bbox`` (pixel box of ``png``).
        size: the longest side of the image in the result.
    """
    with Image.open(io.BytesIO(png)) as source:
        picture = source.convert("RGB")
    layout = layout_labels((picture.width, picture.height), regions, size)
    scaled = picture.resize(
        layout.image_size,
        Image.Resampling.NEAREST
        if layout.image_size[0] >= picture.width
        else Image.Resampling.LANCZOS,
    )
    canvas = Image.new("RGB", (layout.width, layout.height), (0, 0, 0))
    canvas.paste(scaled, (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for region, box in zip(regions, layout.boxes, strict=True):
        outline = (box[0], box[1], box[2] - 1, box[3] - 1)
        draw.rectangle(outline, outline=label_colour(region["label"]), width=OUTLINE)
    for label in layout.labels:
        if label.leader is not None:
            draw.line(label.leader, fill=label.colour, width=1)
    for label in [*layout.labels, *layout.key]:
        x0, y0, x1, y1 = label.rect
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(0, 0, 0))
        left, top, _, _ = font.getbbox(label.text)
        draw.text((x0 + _PAD - left, y0 + _PAD - top), label.text, fill=label.colour, font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
