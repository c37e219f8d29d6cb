"""DICOM SEG: the label map of a segmentation on the grid of its image series.

Label id = ``SegmentNumber``. Frames map to slices by their referenced source instance
(``DerivationImageSequence`` / ``SourceImageSequence``) or else by ``PlanePositionSequence``.
FRACTIONAL segments count where the value is at least half of ``MaximumFractionalValue``.
Where segments overlap, the higher segment number wins. Frames that match no slice are dropped
with one ``seg_frame_unmatched`` reject.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medgrit.adapters.sources.dicom.files import read_pixels
from medgrit.adapters.sources.dicom.headers import usable_names
from medgrit.adapters.sources.dicom.series import ORIENTATION_TOL, SeriesGrid, functional_item
from medgrit.core.cases import UnreadableImage

__all__ = ["seg_labels"]


def seg_labels(
    seg: Dataset, grid: SeriesGrid, rejects: list[tuple[str, str, int | None]]
) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
    """Label map (grid order) of a SEG and its segment names as written; higher segment numbers
    overwrite lower ones. Call under ``quiet_pydicom``.

    Raises:
        UnreadableImage: ``shape_mismatch``, ``inconsistent_orientation``, ``dicom_unreadable``.
    """
    cols, rows, _ = grid.shape
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise UnreadableImage(
            "shape_mismatch",
            f"SEG frames are {int(seg.Rows)}x{int(seg.Columns)}, images {rows}x{cols}",
        )
    raw_names = []
    for segment in seg.get("SegmentSequence", []):
        number = int(segment.SegmentNumber)
        raw_names.append((number, str(segment.get("SegmentLabel", "") or f"segment {number}")))
    names = usable_names(raw_names)
    count = int(seg.get("NumberOfFrames", 1) or 1)
    pixels = read_pixels(seg, "SEG").reshape(count, rows, cols)
    fractional = str(seg.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    top = float(seg.get("MaximumFractionalValue", 255) or 255)
    placed: list[tuple[int, int, int]] = []  # (segment, slice, frame)
    unmatched = 0
    for i in range(count):
        ident = functional_item(seg, i, "SegmentIdentificationSequence")
        if ident is None:
            raise UnreadableImage("dicom_unreadable", "a SEG frame names no segment")
        orient = functional_item(seg, i, "PlaneOrientationSequence")
        if orient is not None and "ImageOrientationPatient" in orient:
            iop = np.array([float(v) for v in orient.ImageOrientationPatient])
            expected = np.concatenate([grid.row_cosine, grid.column_cosine])
            if np.max(np.abs(iop - expected)) > ORIENTATION_TOL:
                raise UnreadableImage(
                    "inconsistent_orientation",
                    f"SEG orientation {np.round(iop, 4).tolist()} differs from the images'",
                )
        s = _seg_frame_slice(seg, i, grid)
        if s is None:
            unmatched += 1
            continue
        placed.append((int(ident.ReferencedSegmentNumber), s, i))
    labels = np.zeros(grid.shape, dtype=np.uint32)
    for number, s, i in sorted(placed):
        frame = pixels[i]
        on = frame.astype(np.float64) * 2 >= top if fractional else frame > 0
        labels[:, :, s][on.T] = number
    if unmatched:
        rejects.append(
            ("seg_frame_unmatched", f"{unmatched} SEG frame(s) match no slice of the series", None)
        )
    return labels, names


def _seg_frame_slice(seg: Dataset, i: int, grid: SeriesGrid) -> int | None:
    """The slice a SEG frame lies on: by its source image reference, else by its position."""
    derivation = functional_item(seg, i, "DerivationImageSequence")
    for item in derivation.get("SourceImageSequence", []) if derivation is not None else []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        numbers = item.get("ReferencedFrameNumber", 1)
        numbers = list(numbers) if isinstance(numbers, MultiValue | list) else [numbers or 1]
        for number in numbers:
            s = grid.index.get((uid, int(number)))
            if s is not None:
                return s
    plane = functional_item(seg, i, "PlanePositionSequence")
    if plane is None or "ImagePositionPatient" not in plane:
        return None
    point = np.array([float(v) for v in plane.ImagePositionPatient])
    s = grid.slice_at(point)
    if s is None:
        return None
    col, row = grid.to_pixels(point[None, :], s)
    return s if abs(col[0]) <= 0.5 and abs(row[0]) <= 0.5 else None
