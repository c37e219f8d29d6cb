"""Intensity mapping of volumes to 8-bit display values.

CT uses a fixed window in Hounsfield units (level/width, soft tissue 40/400 by default); other
modalities (MR, PET) map robust per-volume percentiles to [0, 255]. Bounds are computed once per
volume so that the slices of one case share one mapping.

Non-finite values (NaN, +-inf: masked-out voxels of some pipelines, damaged files) take no part in
the mapping: they are left out of the percentiles and map to 0. :func:`count_non_finite` counts
them and :func:`is_blank` tells an 8-bit image that shows nothing (one value everywhere).
"""

from __future__ import annotations

import numpy as np

SOFT_TISSUE_WINDOW: tuple[float, float] = (40.0, 400.0)
DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def window_bounds(level: float, width: float) -> tuple[float, float]:
    """(low, high) intensity of a CT window given its level and width (HU)."""
    if width <= 0:
        raise ValueError("window width must be positive")
    return level - width / 2.0, level + width / 2.0


def percentile_bounds(volume: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """(low, high) intensity at the given percentiles of the volume's non-zero voxels.

    Zero voxels are left out because MR and PET volumes are mostly empty background, and so are
    NaN and infinite ones; a volume with no finite non-zero voxel maps to (0, 1).
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
    values = volume[volume != 0]
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    # A strided sample keeps this cheap on large volumes; the bounds barely move.
    step = max(1, values.size // 2_000_000)
    lo, hi = np.percentile(values[::step], [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def to_uint8(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Map ``values`` linearly from ``bounds`` to [0, 255], clipping, as uint8; NaN and
    infinite values map to 0.

    Raises:
        ValueError: when the bounds are not finite or ``high <= low``.
    """
    lo, hi = bounds
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"intensity bounds must be finite with high > low, got {bounds}")
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    scaled = np.clip(np.rint(scaled), 0, 255)
    if scaled.dtype.kind == "f":
        scaled[~np.isfinite(values)] = 0  # clip keeps NaN; -inf/+inf are not pixel values
    return scaled.astype(np.uint8)


def count_non_finite(values: np.ndarray) -> int:
    """How many NaN or infinite values an array holds (0 for integer arrays)."""
    if values.dtype.kind not in "fc":
        return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def is_blank(pixels: np.ndarray) -> bool:
    """Whether an 8-bit image shows nothing: empty, or one value in every pixel and channel."""
    return pixels.size == 0 or bool(pixels.min() == pixels.max())
