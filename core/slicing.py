"""2D slices of canonical volumes, in the radiological display convention.

Input volumes are in canonical RAS+ voxel order (nibabel's ``as_closest_canonical``): axis 0
runs toward the patient's Right, axis 1 toward Anterior, axis 2 toward Superior. Spacing is in mm
per axis. A 2D slice is returned as an (H, W) array indexed [row, column]:

- axial (fixed axis 2): rows run anterior -> posterior, columns patient right -> left;
- coronal (fixed axis 1): rows run superior -> inferior, columns patient right -> left;
- sagittal (fixed axis 0): rows run superior -> inferior, columns anterior -> posterior.

So in axial and coronal slices the patient's right is on the image's left (radiological
convention), and the top of the image is anterior (axial) or superior (coronal, sagittal).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

Plane = Literal["axial", "coronal", "sagittal"]
PLANE_AXIS: dict[str, int] = {"axial": 2, "coronal": 1, "sagittal": 0}


def slice_count(shape: tuple[int, ...], plane: Plane) -> int:
    """Number of slices of a volume of ``shape`` along ``plane``."""
    return int(shape[PLANE_AXIS[plane]])


def display_slice(volume: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """One slice of a canonical RAS+ volume, oriented for display (see module docstring)."""
    if plane == "axial":
        return volume[::-1, ::-1, index].T
    if plane == "coronal":
        return volume[::-1, index, ::-1].T
    if plane == "sagittal":
        return volume[index, ::-1, ::-1].T
    raise ValueError(f"unknown plane {plane!r}")


def display_spacing(spacing: tuple[float, float, float], plane: Plane) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of a displayed slice."""
    sx, sy, sz = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def foreground_slices(labels: np.ndarray, plane: Plane, min_pixels: int = 1) -> np.ndarray:
    """Indices of the slices along ``plane`` with at least ``min_pixels`` labelled pixels."""
    axis = PLANE_AXIS[plane]
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(np.count_nonzero(labels, axis=other) >= min_pixels)


def select_slices(indices: np.ndarray, stride: int = 1, cap: int | None = None) -> np.ndarray:
    """Every ``stride``-th index, then at most ``cap`` of them spread evenly (deterministic).

    The cap takes the centre of each of ``cap`` equal runs, so a cap of one takes the middle
    slice and the edge slices of a structure (where it is smallest) come last.
    """
    if stride < 1:
        raise ValueError("stride must be >= 1")
    chosen = np.asarray(indices)[::stride]
    if cap is not None and chosen.size > cap:
        if cap <= 0:
            return chosen[:0]
        picks = ((np.arange(cap) + 0.5) * chosen.size / cap).astype(int)
        chosen = chosen[picks]
    return chosen


def square_pixels(
    image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float], tolerance: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a slice and its labels so that pixels are square (the finer spacing wins).

    The image is interpolated linearly and the labels by nearest neighbour, so both keep the same
    grid. Slices whose spacings differ by less than ``tolerance`` (relative) are returned as given.
    """
    row_mm, col_mm = spacing
    finest = min(row_mm, col_mm)
    if finest <= 0 or abs(row_mm - col_mm) <= tolerance * finest:
        return image, labels
    zoom = (row_mm / finest, col_mm / finest)
    out_shape = (round(image.shape[0] * zoom[0]), round(image.shape[1] * zoom[1]))
    real_zoom = (out_shape[0] / image.shape[0], out_shape[1] / image.shape[1])
    new_image = ndimage.zoom(
        image.astype(np.float32), real_zoom, order=1, grid_mode=True, mode="nearest"
    )
    new_labels = ndimage.zoom(labels, real_zoom, order=0, grid_mode=True, mode="nearest")
    return new_image, new_labels
