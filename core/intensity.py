"""Intensity mapping of volumes to 8-bit display values.

CT uses a fixed window in Hounsfield units (level/width, soft tissue 40/400 by default); other
modalities (MR, PET) map robust per-volume percentiles to [0, 255]. Bounds are computed once per
volume so that the slices of one case share one mapping.
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

    Zero voxels are left out because MR and PET volumes are mostly empty background; a volume
    with no non-zero voxel maps to (0, 1).
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    # A strided sample keeps this cheap on large volumes; the bounds barely move.
    step = max(1, values.size // 2_000_000)
    lo, hi = np.percentile(values[::step], [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def to_uint8(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Map ``values`` linearly from ``bounds`` to [0, 255], clipping, as uint8."""
    lo, hi = bounds
    scaled = (np.asarray(values, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
