"""Regions of a 2D label map: connected instances and one merged box per label.

Conventions (pinned by tests/test_regions.py):
- Input is a 2D integer label map of shape (H, W), indexed [row, column] = [y, x]; 0 is background.
- Boxes are pixel boxes, half-open ``[x0, y0, x1, y1)``: x along columns, y along rows. The box of
  the single pixel at row r, column c is ``[c, r, c + 1, r + 1)``.
- Instances are 8-connected components; two pixels join only when they carry the same label, so
  touching organs stay apart.
- Per label there is always one merged row (``instance == 0``) whose box is the union of the label's
  kept instances and whose area is their summed pixel count. Instance rows (``instance`` 1..k, in
  order of x0 then y0) are added only when a label has two or more kept instances.
- ``bbox_1000`` is the Qwen-VL text box: integers in [0, 1000), ``floor(1000 * v / size)`` for each
  coordinate, with the exclusive edge clamped to 999.
- Region-based labels (:func:`extract_group_regions`): a label's pixels are those of any of its
  stored values; each label is extracted alone, so the regions of two labels may overlap.

The work is one connected-components pass (cc3d) and one ``find_objects`` pass over the map,
whatever the number of labels, plus a pixel count per component (inside its box, or one
``bincount`` pass when components are many); the rest is on small per-component arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RegionTable:
    """Regions of one label map, one entry per row (see the module docstring for the layout).

    Attributes:
        label_id: (N,) int64 label value.
        instance: (N,) int32, 0 for the merged box of the label, 1..k for its instances.
        bbox: (N, 4) int64 half-open pixel boxes [x0, y0, x1, y1).
        area: (N,) int64 foreground pixel count.
    """

    label_id: np.ndarray
    instance: np.ndarray
    bbox: np.ndarray
    area: np.ndarray

    def __len__(self) -> int:
        return int(self.label_id.shape[0])


@dataclass(frozen=True)
class Extraction:
    """Result of :func:`extract_regions`: kept regions and the instances dropped by area."""

    regions: RegionTable
    dropped_label_id: np.ndarray
    dropped_area: np.ndarray


def _empty_table() -> RegionTable:
    return RegionTable(
        label_id=np.zeros(0, np.int64),
        instance=np.zeros(0, np.int32),
        bbox=np.zeros((0, 4), np.int64),
        area=np.zeros(0, np.int64),
    )


_CROP_COUNT_MAX = 64


def extract_regions(label_map: np.ndarray, min_area: int = 1) -> Extraction:
    """Extract instance boxes and one merged box per label from a 2D label map.

    Args:
        label_map: (H, W) non-negative integer array; 0 is background.
        min_area: instances with fewer pixels are dropped (reported in the result).

    Returns:
        The kept regions, sorted by label then instance, and the dropped instances.

    Raises:
        ValueError: if the map is not 2D, not integer, or holds negative values.
    """
    labels = _checked_labels(label_map)
    components, n = cc3d.connected_components(labels, connectivity=8, return_N=True)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Extraction(_empty_table(), empty, empty)
    label_id, bbox, area = _measure_components(components, n, labels)
    keep = area >= min_area
    dropped_label, dropped_area = label_id[~keep], area[~keep]
    if not keep.any():
        return Extraction(_empty_table(), dropped_label, dropped_area)
    table = _region_table(label_id[keep], bbox[keep], area[keep])
    return Extraction(table, dropped_label, dropped_area)


_TABLE_FIELDS = ("label_id", "instance", "bbox", "area")


def extract_group_regions(
    label_map: np.ndarray,
    groups: Sequence[tuple[int, Sequence[int]]],
    min_area: int = 1,
) -> Extraction:
    """Regions of region-based labels: for each (label id, stored values), the regions
    :func:`extract_regions` gives for the union of those values' pixels, under that label id.

    Args:
        label_map: (H, W) non-negative integer array; 0 is background.
        groups: (label id, the stored values whose union is its pixels), by label id.
        min_area: instances with fewer pixels are dropped (reported in the result).

    Returns:
        The kept regions, sorted by label then instance, and the dropped instances.

    Raises:
        ValueError: if the map is not 2D, not integer, or holds negative values.
    """
    _checked_labels(label_map)
    tables, dropped_label, dropped_area = [], [], []
    for label_id, values in groups:
        mask = np.isin(label_map, values)
        if not mask.any():
            continue
        found = extract_regions(mask.view(np.uint8), min_area)
        table = found.regions
        tables.append(
            RegionTable(
                np.full_like(table.label_id, label_id), table.instance, table.bbox, table.area
            )
        )
        dropped_label.append(np.full_like(found.dropped_label_id, label_id))
        dropped_area.append(found.dropped_area)
    if not tables:
        empty = np.zeros(0, np.int64)
        return Extraction(_empty_table(), empty, empty)
    merged = RegionTable(*(np.concatenate([getattr(t, f) for t in tables]) for f in _TABLE_FIELDS))
    return Extraction(merged, np.concatenate(dropped_label), np.concatenate(dropped_area))


def _checked_labels(label_map: np.ndarray) -> np.ndarray:
    """The label map as a writable C-contiguous unsigned array, after checking its shape,
    dtype and sign (see :func:`extract_regions`)."""
    if label_map.ndim != 2:
        raise ValueError(f"label map must be 2D, got shape {label_map.shape}")
    if label_map.dtype.kind not in "iu":
        raise ValueError(f"label map must hold integers, got {label_map.dtype}")
    labels = label_map
    if labels.dtype.kind == "i":
        if labels.size and labels.min() < 0:
            raise ValueError("label map holds negative values")
        labels = labels.astype(np.uint32 if labels.max(initial=0) > 65535 else np.uint16)
    # cc3d wants a writable C-contiguous buffer (decoded images are often read-only views).
    return np.require(labels, requirements=["C", "W"])


def _measure_components(
    components: np.ndarray, n: int, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label id, box (x0, y0, x1, y1) and pixel count of each of the ``n`` components
    (numbered 1..n in ``components``), in component order."""
    slices = ndimage.find_objects(components)
    if n <= _CROP_COUNT_MAX:
        # Counting inside each component's own box beats a bincount over the whole map when
        # components are few (the usual organ slice); many small ones favour one bincount.
        area = np.array(
            [np.count_nonzero(components[s] == i) for i, s in enumerate(slices, 1)],
            dtype=np.int64,
        )
    else:
        area = np.bincount(components.ravel(), minlength=n + 1)[1:].astype(np.int64)
    bbox = np.array(
        [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices], dtype=np.int64
    )
    # A component's top row holds at least one of its pixels: read its label there.
    comp_ids = np.arange(1, n + 1)
    top_rows = components[bbox[:, 1]]
    first_col = np.argmax(top_rows == comp_ids[:, None], axis=1)
    label_id = labels[bbox[:, 1], first_col].astype(np.int64)
    return label_id, bbox, area


def _region_table(label_id: np.ndarray, bbox: np.ndarray, area: np.ndarray) -> RegionTable:
    """The rows of the kept instances (at least one): per label, its merged row, then its
    instances (numbered from 1 in box order) when it has several."""
    order = np.lexsort((bbox[:, 1], bbox[:, 0], label_id))
    label_id, bbox, area = label_id[order], bbox[order], area[order]
    unique_labels, starts, counts = np.unique(label_id, return_index=True, return_counts=True)
    merged_box = np.column_stack(
        [
            np.minimum.reduceat(bbox[:, 0], starts),
            np.minimum.reduceat(bbox[:, 1], starts),
            np.maximum.reduceat(bbox[:, 2], starts),
            np.maximum.reduceat(bbox[:, 3], starts),
        ]
    )
    merged_area = np.add.reduceat(area, starts)

    # Interleave: merged row of each label, then its instances when there are several.
    multi = counts >= 2
    rows_per_label = 1 + np.where(multi, counts, 0)
    total = int(rows_per_label.sum())
    out_label = np.repeat(unique_labels, rows_per_label)
    out_instance = np.zeros(total, np.int32)
    out_bbox = np.empty((total, 4), np.int64)
    out_area = np.empty(total, np.int64)
    merged_pos = np.concatenate([[0], np.cumsum(rows_per_label)[:-1]])
    out_bbox[merged_pos] = merged_box
    out_area[merged_pos] = merged_area
    inst_mask = np.repeat(multi, counts)
    if inst_mask.any():
        inst_label_idx = np.repeat(np.arange(unique_labels.size), counts)[inst_mask]
        rank = (np.arange(label_id.size) - np.repeat(starts, counts))[inst_mask]
        pos = merged_pos[inst_label_idx] + 1 + rank
        out_bbox[pos] = bbox[inst_mask]
        out_area[pos] = area[inst_mask]
        out_instance[pos] = rank + 1
    return RegionTable(out_label, out_instance, out_bbox, out_area)


def label_dtype(max_label: int) -> type[np.unsignedinteger]:
    """The smallest unsigned dtype holding label ids up to ``max_label``.

    Raises:
        ValueError: for ids past 2**32 - 1.
    """
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"label value {max_label} is too large")


def to_bbox_1000(bbox: np.ndarray, width: int, height: int) -> np.ndarray:
    """Convert half-open pixel boxes (N, 4) to Qwen-VL integers in [0, 1000).

    Args:
        bbox: (N, 4) or (4,) integer array [x0, y0, x1, y1).
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        Array of the same shape, int64, each value in [0, 999].
    """
    b = np.asarray(bbox, dtype=np.int64)
    scale = np.array([width, height, width, height], dtype=np.int64)
    return np.minimum((b * 1000) // scale, 999)
