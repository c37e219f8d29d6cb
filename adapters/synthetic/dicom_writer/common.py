"""Shared parts of the synthetic DICOM writers: grid geometry, deterministic UIDs, file
headers, patient attributes, stored pixel values."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

# For each DICOM grid axis (columns, rows, slices): (canonical axis, runs opposite to it).
ORIENTATIONS: dict[str, tuple[tuple[int, bool], tuple[int, bool], tuple[int, bool]]] = {
    "axial": ((0, True), (1, True), (2, False)),
    "coronal": ((0, True), (2, True), (1, True)),
    "sagittal": ((1, True), (2, True), (0, False)),
}
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US_MULTIFRAME": "1.2.840.10008.5.1.4.1.1.3.1",
    "ES": "1.2.840.10008.5.1.4.1.1.77.1.1",
    "OP": "1.2.840.10008.5.1.4.1.1.77.1.5.1",
    "XC": "1.2.840.10008.5.1.4.1.1.77.1.4",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}
_RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

# Synthetic defaults; any DICOM keyword in ``patient`` replaces or adds to them.
DEFAULT_PATIENT: dict[str, str] = {
    "PatientName": "Synthetic^Phantom",
    "PatientID": "SYNTHETIC-0001",
    "PatientBirthDate": "",
    "PatientSex": "O",
    "StudyDate": "20240101",
    "StudyTime": "120000",
    "StudyID": "1",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "InstitutionName": "medgrit synthetic data",
}


_UID_NAMESPACE = uuid.UUID("6f1d3c2a-52c5-4b8e-9a57-6d6564677269")


def _uid(*parts: object) -> str:
    # pydicom's generate_uid(prefix=None, ...) ignores entropy_srcs and returns a random UUID,
    # so derive the 2.25 UID from a name-based (SHA-1) UUID instead.
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(str(p) for p in parts)).int}"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def series_affine(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """The canonical RAS+ affine of a volume written by :func:`write_series`."""
    if origin is None:
        origin = (
            -(shape[0] - 1) * spacing[0] / 2.0,
            -(shape[1] - 1) * spacing[1] / 2.0,
            -(shape[2] - 1) * spacing[2] / 2.0,
        )
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


def _to_grid(volume: np.ndarray, orientation: str) -> np.ndarray:
    """Canonical (X, Y, Z[, ...]) -> DICOM grid (columns, rows, slices[, ...])."""
    axes = ORIENTATIONS[orientation]
    grid = np.transpose(volume, [a for a, _ in axes] + list(range(3, volume.ndim)))
    for i, (_, flipped) in enumerate(axes):
        if flipped:
            grid = np.flip(grid, axis=i)
    return grid


def _grid_geometry(
    shape: tuple[int, int, int], affine: np.ndarray, orientation: str
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], tuple[float, float, float]]:
    """Row cosine, column cosine, per-slice positions (LPS) and grid spacing (col, row, slice)."""
    axes = ORIENTATIONS[orientation]
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    directions = [
        _LPS_FROM_RAS @ affine[:3, m] / spacing[m] * (-1.0 if flipped else 1.0)
        for m, flipped in axes
    ]
    grid_shape = [shape[m] for m, _ in axes]

    def position(slice_index: int) -> np.ndarray:
        index = np.zeros(3)
        for d, (m, flipped) in zip((0, 0, slice_index), axes, strict=True):
            index[m] = (shape[m] - 1 - d) if flipped else d
        return _LPS_FROM_RAS @ (affine[:3, :3] @ index + affine[:3, 3])

    positions = [position(s) for s in range(grid_shape[2])]
    col_mm, row_mm, slice_mm = (float(spacing[m]) for m, _ in axes)
    return directions[0], directions[1], positions, (col_mm, row_mm, slice_mm)


def _ds_number(value: float) -> str:
    """A DS string (at most 16 characters) for ``value``."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.6e}"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _file_dataset(sop_class: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _patient_attributes(patient: Mapping[str, str] | None) -> dict[str, str]:
    merged = {**DEFAULT_PATIENT, **(patient or {})}
    for keyword in merged:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"patient attribute {keyword!r} is not a DICOM keyword")
    return merged


def _stored_values(values: np.ndarray, slope: float, intercept: float) -> tuple[np.ndarray, int]:
    """Stored integers for real values under a rescale, and the PixelRepresentation."""
    if slope == 0:
        raise ValueError("rescale slope must not be 0")
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    low, high = (stored.min(), stored.max()) if stored.size else (0, 0)
    if low >= 0 and high <= 65535:
        return stored.astype(np.uint16), 0
    if low >= -32768 and high <= 32767:
        return stored.astype(np.int16), 1
    raise ValueError(
        f"values {values.min()}..{values.max()} do not fit 16 bits "
        f"with rescale slope {slope}, intercept {intercept}"
    )


@dataclass(frozen=True)
class _PetTags:
    weight_kg: float
    dose_bq: float
    injection_time: str
    series_time: str
    half_life_s: float = 6586.2  # F-18

    @classmethod
    def parse(cls, given: Mapping[str, float | str]) -> _PetTags:
        missing = {"weight_kg", "dose_bq", "injection_time", "series_time"} - set(given)
        if missing:
            raise ValueError(f"pet_suv needs {sorted(missing)}")
        return cls(
            weight_kg=float(given["weight_kg"]),
            dose_bq=float(given["dose_bq"]),
            injection_time=str(given["injection_time"]),
            series_time=str(given["series_time"]),
            half_life_s=float(given.get("half_life_s", 6586.2)),
        )

    def suv_per_bqml(self) -> float:
        """SUVbw per Bq/ml, the dose decayed from injection to series start."""
        elapsed = _seconds(self.series_time) - _seconds(self.injection_time)
        if elapsed < 0:
            elapsed += 86400.0
        return self.weight_kg * 1000.0 / (self.dose_bq * 2.0 ** (-elapsed / self.half_life_s))


def _seconds(hhmmss: str) -> float:
    return int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + float(hhmmss[4:] or 0)
