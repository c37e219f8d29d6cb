"""Filling closed contours on a pixel grid (RTSTRUCT ROIs).

Polygons are (N, 2) arrays of (x = column, y = row) vertices in pixel units, pixel (row r,
column c) having its centre at (c, r). The result is a (height, width) bool mask in (row,
column) order.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fill_even_odd"]


def fill_even_odd(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise closed polygons with the even-odd rule: a pixel is in when its centre is.

    Args:
        polygons: (N, 2) arrays of (x = column, y = row) vertices in pixel units; each polygon
            closes on its own (the last vertex joins the first).
        height, width: the output grid.

    Returns:
        (height, width) bool mask. A pixel centre lying inside an odd number of polygons is set,
        so an inner polygon cuts a hole into an outer one. Edges are half-open: a centre exactly
        on a left edge is inside, on a right edge outside.
    """
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    for poly in polygons:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
            if ay == by:
                continue
            lo, hi = (ay, by) if ay < by else (by, ay)
            first = max(math.ceil(lo), 0)
            last = min(math.ceil(hi) - 1, height - 1)  # rows y with lo <= y < hi
            if first > last:
                continue
            ys = np.arange(first, last + 1, dtype=np.float64)
            xs = ax + (ys - ay) * (bx - ax) / (by - ay)
            # Centre c is right of the crossing when c >= x, i.e. c >= ceil(x).
            cs = np.clip(np.ceil(xs), 0, width).astype(np.intp)
            np.add.at(toggles, (ys.astype(np.intp), cs), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)
