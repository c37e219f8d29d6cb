"""The geometry of a DICOM image series, and its canonical RAS+ volumes.

The grid is built in LPS, the frame of DICOM patient coordinates: voxel (c, r, s) = column c,
row r of slice s lies at
``IPP_0 + c * col_spacing * row_cosine + r * row_spacing * column_cosine + s * slice_step``,
where slices (single-frame files or the frames of enhanced multi-frame files) are sorted by
``ImagePositionPatient`` projected on the slice normal (row cosine x column cosine), never by
file name or ``InstanceNumber``. All slices must share ``ImageOrientationPatient`` (within
1e-4) and be evenly spaced (gaps within 1 % or 0.01 mm of the median). Image data are float32
after ``RescaleSlope``/``RescaleIntercept``, in grid order (columns, rows, slices).

:func:`canonical_pair` reorients grid-order arrays exactly like
``medgrit.adapters.sources.nifti`` (nibabel's closest-canonical reorientation): data shape
(X, Y, Z), axis 0 toward the patient's Right, 1 Anterior, 2 Superior; spacing in mm; the affine
maps voxels to RAS+ mm. LPS becomes RAS by negating x and y.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from pydicom.dataset import Dataset

from medgrit.adapters.sources.dicom.files import read_dataset, read_pixels
from medgrit.adapters.sources.limits import MAX_VOXELS, check_pixels
from medgrit.core.cases import UnreadableImage, Volume

__all__ = ["ORIENTATION_TOL", "SeriesGrid", "canonical_pair", "functional_item", "read_series"]

# How far direction cosines may differ (each component) and still be one orientation.
ORIENTATION_TOL = 1e-4


@dataclass(frozen=True)
class SeriesGrid:
    """Geometry of a sorted image series, in the DICOM grid (c, r, s) and LPS mm.

    Attributes:
        shape: (columns, rows, slices) of the grid.
        affine_lps: 4x4 voxel (c, r, s) -> LPS mm.
        row_cosine, column_cosine, normal: unit vectors (LPS) of columns, rows and slices.
        spacing: (row spacing, column spacing, slice step) in mm.
        positions: (S, 3) ImagePositionPatient of each sorted slice (LPS mm).
        index: (SOPInstanceUID, 1-based frame number) -> slice index.
    """

    shape: tuple[int, int, int]
    affine_lps: np.ndarray
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float, float]
    positions: np.ndarray
    index: dict[tuple[str, int], int]

    def slice_at(self, point: np.ndarray) -> int | None:
        """The slice whose plane holds ``point`` (LPS mm, within half a slice), else None."""
        depth = (self.positions - point) @ self.normal
        best = int(np.argmin(np.abs(depth)))
        return best if abs(depth[best]) <= 0.5 * self.spacing[2] + 1e-3 else None

    def to_pixels(self, points: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(column, row) pixel coordinates on slice ``s`` of (N, 3) LPS points."""
        offset = points - self.positions[s]
        return (
            offset @ self.row_cosine / self.spacing[1],
            offset @ self.column_cosine / self.spacing[0],
        )


@dataclass(frozen=True)
class _Frame:
    sop_uid: str
    frame: int  # 1-based
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    thickness: float
    slope: float
    intercept: float
    file_index: int


def functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional group macro for a frame (per-frame first, then shared)."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items is not None and len(items) > i and sequence in items[i]:
            inner = items[i].get(sequence)
            if inner:
                return inner[0]
    return None


def _frames_of(ds: Dataset, file_index: int) -> list[_Frame]:
    sop = str(ds.get("SOPInstanceUID", ""))
    count = int(ds.get("NumberOfFrames", 1) or 1)
    top_slope = float(ds.get("RescaleSlope", 1) or 1)
    top_intercept = float(ds.get("RescaleIntercept", 0) or 0)
    frames = []
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if count > 1 and not enhanced:
        raise UnreadableImage("missing_geometry", "a multi-frame image has no per-frame positions")
    for i in range(count):
        if enhanced:
            plane = functional_item(ds, i, "PlanePositionSequence")
            orient = functional_item(ds, i, "PlaneOrientationSequence")
            measures = functional_item(ds, i, "PixelMeasuresSequence")
            transform = functional_item(ds, i, "PixelValueTransformationSequence")
            position = plane.get("ImagePositionPatient") if plane else None
            orientation = orient.get("ImageOrientationPatient") if orient else None
            spacing = measures.get("PixelSpacing") if measures else None
            thickness = measures.get("SliceThickness") if measures else None
            slope = transform.get("RescaleSlope", top_slope) if transform else top_slope
            intercept = (
                transform.get("RescaleIntercept", top_intercept) if transform else top_intercept
            )
        else:
            position = ds.get("ImagePositionPatient")
            orientation = ds.get("ImageOrientationPatient")
            spacing = ds.get("PixelSpacing")
            thickness = ds.get("SliceThickness")
            slope, intercept = top_slope, top_intercept
        if position is None or orientation is None or spacing is None:
            raise UnreadableImage(
                "missing_geometry", "an image has no position, orientation or pixel spacing"
            )
        frames.append(
            _Frame(
                sop_uid=sop,
                frame=i + 1,
                position=np.array([float(v) for v in position], dtype=np.float64),
                orientation=np.array([float(v) for v in orientation], dtype=np.float64),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                thickness=float(thickness or 0),
                slope=float(slope or 1),
                intercept=float(intercept or 0),
                file_index=file_index,
            )
        )
    return frames


def read_series(paths: list[Path]) -> tuple[SeriesGrid, np.ndarray, Dataset]:
    """Read an image series (single-frame files and/or enhanced multi-frame files).

    Args:
        paths: the files of one series, in any order.

    Returns:
        The grid; the rescaled image as float32 in the DICOM grid order (columns, rows,
        slices); the first file's dataset (for SUV tags). Call under ``quiet_pydicom``.

    Raises:
        UnreadableImage: ``file_missing``, ``dicom_unreadable``, ``missing_pixel_data``,
            ``missing_geometry``, ``inconsistent_shape``, ``inconsistent_orientation``,
            ``inconsistent_spacing``, ``unsupported_image`` (colour), ``too_large``.
    """
    datasets = [read_dataset(p, "image series") for p in paths]
    frames = [f for i, ds in enumerate(datasets) for f in _frames_of(ds, i)]
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) != 1:
        raise UnreadableImage("inconsistent_shape", f"slices differ in size: {sorted(shapes)}")
    if any(int(ds.get("SamplesPerPixel", 1) or 1) != 1 for ds in datasets):
        raise UnreadableImage("unsupported_image", "colour image series are not supported")
    rows, cols = shapes.pop()
    orientation = _common_orientation(frames)
    row_cos, col_cos = orientation[:3], orientation[3:]
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    depth = np.array([f.position @ normal for f in frames])
    order = np.argsort(depth, kind="stable")
    frames = [frames[i] for i in order]
    depth = depth[order]
    row_mm, col_mm = frames[0].pixel_spacing
    if len(frames) > 1:
        gaps = np.diff(depth)
        step = float(np.median(gaps))
        tol = max(0.01 * abs(step), 0.01)
        if step <= 0 or np.any(np.abs(gaps - step) > tol):
            raise UnreadableImage(
                "inconsistent_spacing",
                f"slice gaps range from {gaps.min():.3f} to {gaps.max():.3f} mm "
                f"(median {step:.3f} mm)",
            )
        slice_vector = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    else:
        step = frames[0].thickness or float(datasets[0].get("SpacingBetweenSlices", 0) or 0) or 1.0
        slice_vector = normal * step
    affine = np.eye(4)
    affine[:3, 0] = row_cos * col_mm
    affine[:3, 1] = col_cos * row_mm
    affine[:3, 2] = slice_vector
    affine[:3, 3] = frames[0].position
    image = _rescaled_image(datasets, frames, rows, cols)
    grid = SeriesGrid(
        shape=(cols, rows, len(frames)),
        affine_lps=affine,
        row_cosine=row_cos,
        column_cosine=col_cos,
        normal=normal,
        spacing=(row_mm, col_mm, abs(float(step))),
        positions=np.stack([f.position for f in frames]),
        index={(f.sop_uid, f.frame): s for s, f in enumerate(frames)},
    )
    return grid, image, datasets[0]


def _common_orientation(frames: list[_Frame]) -> np.ndarray:
    """The orientation (row and column cosines) every frame shares, after checking that the
    frames agree on it and on their pixel spacing."""
    orientation = frames[0].orientation
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - orientation)) > ORIENTATION_TOL:
            raise UnreadableImage(
                "inconsistent_orientation",
                f"slice orientations differ: {np.round(orientation, 4).tolist()} vs "
                f"{np.round(f.orientation, 4).tolist()}",
            )
    pixel_spacings = np.array([f.pixel_spacing for f in frames])
    if np.ptp(pixel_spacings, axis=0).max() > 1e-4:
        raise UnreadableImage("inconsistent_spacing", "slices differ in pixel spacing")
    return orientation


def _rescaled_image(
    datasets: list[Dataset], frames: list[_Frame], rows: int, cols: int
) -> np.ndarray:
    """The frames' pixels, rescaled (slope, intercept), as float32 (columns, rows, slices) in
    the order of ``frames``; each file's pixel data is decoded once."""
    check_pixels((cols, rows, len(frames)), "image series", limit=MAX_VOXELS)
    image = np.empty((cols, rows, len(frames)), dtype=np.float32)
    by_file: dict[int, list[tuple[int, _Frame]]] = defaultdict(list)
    for s, f in enumerate(frames):
        by_file[f.file_index].append((s, f))
    for file_index, placed in sorted(by_file.items()):
        pixels = read_pixels(datasets[file_index], "image series").reshape(-1, rows, cols)
        for s, f in placed:
            plane = pixels[f.frame - 1].astype(np.float32)
            image[:, :, s] = (plane * np.float32(f.slope) + np.float32(f.intercept)).T
    return image


def canonical_pair(
    image: np.ndarray, labels: np.ndarray, grid: SeriesGrid
) -> tuple[Volume, Volume]:
    """Reorient grid-order arrays to canonical RAS+ (as nibabel's as_closest_canonical)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine_lps  # LPS -> RAS
    ornt = io_orientation(affine)
    new_affine = affine @ inv_ornt_aff(ornt, image.shape)
    sx, sy, sz = (float(v) for v in np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0)))
    spacing = (sx, sy, sz)
    out_image = np.ascontiguousarray(apply_orientation(image, ornt), dtype=np.float32)
    out_labels = np.ascontiguousarray(apply_orientation(labels, ornt))
    return (
        Volume(out_image, spacing, new_affine),
        Volume(out_labels, spacing, new_affine.copy()),
    )
