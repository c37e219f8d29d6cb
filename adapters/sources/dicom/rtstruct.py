"""DICOM RTSTRUCT: the label map of a structure set on the grid of its image series.

Label id = ``ROINumber``. ``CLOSED_PLANAR`` contours (patient coordinates, mm) are rasterised on
the slice they reference (``ContourImageSequence``) or else the slice at their position; a pixel
is in when its centre is. All contours of one ROI on one slice combine by the even-odd rule
(``medgrit.core.contours``), so an inner contour cuts a hole. Where ROIs overlap, the higher
ROINumber wins. POINT and OPEN_PLANAR contours are ignored; contours on no slice are dropped
with one ``contour_off_slice`` reject.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pydicom.dataset import Dataset

from medgrit.adapters.sources.dicom.headers import usable_names
from medgrit.adapters.sources.dicom.series import SeriesGrid
from medgrit.core.contours import fill_even_odd

__all__ = ["rtstruct_labels"]


def rtstruct_labels(
    rt: Dataset, grid: SeriesGrid, rejects: list[tuple[str, str, int | None]]
) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
    """Label map (grid order) of an RTSTRUCT and the names (as written) of its ROIs; higher ROI
    numbers overwrite lower ones. Call under ``quiet_pydicom``."""
    cols, rows, _ = grid.shape
    # Every (number, name) the structure set lists, a number listed twice included: its name
    # cannot be told, so usable_names leaves it unnamed.
    rois = [
        (int(roi.ROINumber), str(roi.get("ROIName", "") or "roi"))
        for roi in rt.get("StructureSetROISequence", [])
    ]
    polygons: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
    off_slice = 0
    for roi in rt.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        for contour in roi.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                continue
            data = np.array([float(v) for v in contour.get("ContourData", [])], dtype=np.float64)
            if data.size < 9 or data.size % 3:
                off_slice += 1
                continue
            points = data.reshape(-1, 3)
            s = None
            for image_ref in contour.get("ContourImageSequence", []):
                uid = str(image_ref.get("ReferencedSOPInstanceUID", ""))
                frame = int(image_ref.get("ReferencedFrameNumber", 1) or 1)
                s = grid.index.get((uid, frame))
                if s is not None:
                    break
            if s is None:
                s = grid.slice_at(points.mean(axis=0))
            if s is None or np.any(
                np.abs((points - grid.positions[s]) @ grid.normal) > 0.5 * grid.spacing[2] + 1e-3
            ):
                off_slice += 1
                continue
            col, row = grid.to_pixels(points, s)
            polygons[(number, s)].append(np.stack([col, row], axis=1))
    labels = np.zeros(grid.shape, dtype=np.uint32)
    for (number, s), polys in sorted(polygons.items()):
        inside = fill_even_odd(polys, rows, cols)
        labels[:, :, s][inside.T] = number
    if off_slice:
        rejects.append(
            ("contour_off_slice", f"{off_slice} contour(s) lie on no slice of the series", None)
        )
    present = {number for number, _ in polygons}
    listed = {n for n, _ in rois}
    unlisted = [(n, f"roi {n}") for n in sorted(present - listed)]
    names = usable_names([(n, name) for n, name in rois if n in present] + unlisted)
    return labels, names
