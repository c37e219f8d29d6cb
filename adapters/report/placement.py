"""Where a gallery picture's labels go: beside their boxes, never over one another.

Coordinates are canvas pixels, x to the right and y down. Boxes and label rectangles are
half-open ``(x0, y0, x1, y1)``, like the tables' pixel boxes: a label covers the columns
``x0 .. x1 - 1``. Two labels overlap when they share a pixel; placed labels never do, and each
lies inside the canvas. Pure: numpy only.

Placement is greedy, smallest box first (a small box has the fewest places near it): a label
tries the places around its box (above, below, inside its corners, beside it) and takes the
free one that hides the fewest pixels of box outlines; when none is free it takes the free place
nearest its box (the picture then draws a line from label to box); when the canvas has no free
place left for it, it gets none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Rect = tuple[int, int, int, int]

OUTLINE = 2
"""Width of a drawn box outline, in pixels (inside the box)."""


def _summed(grid: np.ndarray) -> np.ndarray:
    """Summed-area table: ``s[y, x]`` is the sum of ``grid[:y, :x]``."""
    table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = grid.astype(np.int64).cumsum(0).cumsum(1)
    return table


def _area_sum(table: np.ndarray, rect: Rect) -> int:
    x0, y0, x1, y1 = rect
    return int(table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0])


def _outlines(boxes: Sequence[Rect], width: int, height: int) -> np.ndarray:
    grid = np.zeros((height, width), dtype=np.int32)
    for x0, y0, x1, y1 in boxes:
        inner = (x0 + OUTLINE, y0 + OUTLINE, x1 - OUTLINE, y1 - OUTLINE)
        grid[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] += 1
        if inner[2] > inner[0] and inner[3] > inner[1]:
            grid[inner[1] : inner[3], inner[0] : inner[2]] -= 1
    return grid


def gap(rect: Rect, box: Rect) -> tuple[int, int]:
    """Pixels between a label and a box along x and y (0 where they touch or overlap)."""
    dx = max(box[0] - rect[2], rect[0] - box[2], 0)
    dy = max(box[1] - rect[3], rect[1] - box[3], 0)
    return dx, dy


def _around(box: Rect, w: int, h: int, width: int, height: int) -> list[Rect]:
    """The places tried first, in order of preference, moved inside the canvas."""
    x0, y0, x1, y1 = box
    inset = OUTLINE
    corners = [
        (x0, y0 - h),  # above, left-aligned
        (x0, y1),  # below
        (x0 + inset, y0 + inset),  # inside, top left
        (x1 - w, y0 - h),  # above, right-aligned
        (x1 - w, y1),  # below, right-aligned
        (x0 + inset, y1 - inset - h),  # inside, bottom left
        (x1, y0),  # right of the box
        (x0 - w, y0),  # left of it
    ]
    places = []
    for x, y in corners:
        x = min(max(x, 0), width - w)
        y = min(max(y, 0), height - h)
        places.append((x, y, x + w, y + h))
    return places


def _nearest_free(taken: np.ndarray, box: Rect, w: int, h: int) -> Rect | None:
    """The free ``w`` x ``h`` place nearest ``box`` (first in reading order among equals)."""
    table = _summed(taken)
    used = table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]
    ys, xs = np.nonzero(used == 0)
    if not len(ys):
        return None
    dx = np.maximum(np.maximum(box[0] - (xs + w), xs - box[2]), 0)
    dy = np.maximum(np.maximum(box[1] - (ys + h), ys - box[3]), 0)
    best = int(np.argmin(dx * dx + dy * dy))
    x, y = int(xs[best]), int(ys[best])
    return (x, y, x + w, y + h)


def place_labels(
    boxes: Sequence[Rect], sizes: Sequence[tuple[int, int]], width: int, height: int
) -> list[Rect | None]:
    """A rectangle for each box's label, no two sharing a pixel, all inside the canvas.

    Args:
        boxes: the boxes, in canvas pixels, half-open.
        sizes: ``(width, height)`` of each box's label, in pixels.
        width: the canvas's width.
        height: the canvas's height.

    Returns:
        Per box, its label's rectangle, or None when no free place is left for it (or the
        label is larger than the canvas).
    """
    if len(boxes) != len(sizes):
        raise ValueError("boxes and sizes differ in length")
    taken = np.zeros((max(height, 0), max(width, 0)), dtype=bool)
    outline = _summed(_outlines(boxes, width, height))
    placed: list[Rect | None] = [None] * len(boxes)
    order = sorted(
        range(len(boxes)),
        key=lambda i: ((boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]), i),
    )
    for i in order:
        w, h = sizes[i]
        if not (0 < w <= width and 0 < h <= height):
            continue
        occupied = _summed(taken)
        free = [r for r in _around(boxes[i], w, h, width, height) if not _area_sum(occupied, r)]
        if free:
            rect = min(free, key=lambda r: (_area_sum(outline, r), free.index(r)))
        else:
            rect = _nearest_free(taken, boxes[i], w, h)
        if rect is not None:
            taken[rect[1] : rect[3], rect[0] : rect[2]] = True
            placed[i] = rect
    return placed


def flow_key(
    sizes: Sequence[tuple[int, int]], width: int, top: int, spacing: int = 4
) -> list[Rect]:
    """Rectangles for a key's entries, left to right in rows from ``top``, wrapping at
    ``width``; an entry wider than ``width`` (the caller shortens those) takes a row alone."""
    rects: list[Rect] = []
    x, y, row = 0, top, 0
    for w, h in sizes:
        if x and x + w > width:
            x, y, row = 0, y + row + spacing // 2, 0
        rects.append((x, y, x + w, y + h))
        x += w + spacing
        row = max(row, h)
    return rects
