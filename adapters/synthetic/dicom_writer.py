"""Synthetic DICOM for tests and the demo: image series, SEG, RTSTRUCT, single images, PNG masks.

Nothing here is patient data. Every file is deterministic: UIDs are ``2.25`` UIDs derived from a
seed, the patient attributes and the content (name-based UUIDs), and no wall-clock time is
written.

Geometry. Volumes are given in canonical RAS+ voxel order, shape (X, Y, Z): axis 0 toward the
patient's Right, 1 Anterior, 2 Superior (see ``medgrit.core.slicing``), spacing in mm per axis,
and ``origin`` = RAS+ mm of voxel (0, 0, 0) (default: the volume centred on 0). The canonical
affine is therefore ``diag(spacing)`` plus ``origin``, which is what a NIfTI of the same volume
holds. The series is written in DICOM's LPS patient frame (x toward Left, y Posterior,
z Superior), one file per slice of the chosen acquisition plane:

============  ======================  ====================  =====================
orientation   row direction (LPS)     column direction      slice normal
============  ======================  ====================  =====================
axial         +x (toward Left)        +y (Posterior)        +z (Superior)
coronal       +x (toward Left)        -z (Inferior)         +y (Posterior)
sagittal      +y (Posterior)          -z (Inferior)         -x (toward Right)
============  ======================  ====================  =====================

File names (and InstanceNumber) are shuffled by default, so a reader must sort slices by
``ImagePositionPatient``. :func:`write_seg` and :func:`write_rtstruct` take a label volume on
the same canonical grid plus the series files, and recover each file's slice from its position.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from scipy import ndimage

__all__ = [
    "ORIENTATIONS",
    "series_affine",
    "write_mask_png",
    "write_rtstruct",
    "write_seg",
    "write_series",
    "write_single_image",
]

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


def write_series(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    folder: str | Path,
    *,
    modality: str = "CT",
    patient: Mapping[str, str] | None = None,
    rescale: tuple[float, float] | None = None,
    pet_suv: Mapping[str, float | str] | None = None,
    shuffle_names: bool = True,
    orientation: str = "axial",
    origin: tuple[float, float, float] | None = None,
    seed: str = "medgrit",
) -> list[Path]:
    """Write a canonical volume as a DICOM series, one file per slice.

    Args:
        volume: (X, Y, Z) canonical RAS+ values in real units (HU for CT; SUVbw for PET when
            ``pet_suv`` is given, else Bq/ml; arbitrary for MR). They are stored as 16-bit
            integers under ``rescale``, so a reader gets them back rounded to the slope.
        spacing: voxel size in mm along X, Y, Z.
        folder: created if needed.
        modality: DICOM Modality: ``CT``, ``MR`` or ``PT``.
        patient: DICOM keyword -> value written to every file (PatientName, PatientID,
            PatientBirthDate, InstitutionName, StudyDate, StudyInstanceUID, ...).
        rescale: (RescaleSlope, RescaleIntercept) of the stored integers. Default: (1, -1024)
            for CT, (max |value| / 32000, 0) for PT, (1, 0) otherwise.
        pet_suv: for PT, the SUV tags: ``weight_kg``, ``dose_bq``, ``injection_time`` and
            ``series_time`` (``HHMMSS``), optional ``half_life_s`` (default F-18, 6586.2 s).
            The volume is then SUVbw and is stored as Bq/ml (Units BQML, DecayCorrection START).
        shuffle_names: give files (and InstanceNumber) an order unrelated to their positions.
        orientation: acquisition plane, ``axial``, ``coronal`` or ``sagittal`` (see module).
        origin: RAS+ mm of voxel (0, 0, 0); default centres the volume on 0.
        seed: part of every UID, to tell apart series written for the same patient.

    Returns:
        The files, in slice order (ascending along the slice normal).
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (X, Y, Z), got shape {volume.shape}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS)}")
    modality = modality.upper()
    if modality not in ("CT", "MR", "PT"):
        raise ValueError("modality must be CT, MR or PT")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    attributes = _patient_attributes(patient)
    values = volume.astype(np.float64)
    pet = _PetTags.parse(pet_suv) if modality == "PT" and pet_suv is not None else None
    if pet is not None:
        values = values / pet.suv_per_bqml()  # SUV -> Bq/ml
    if rescale is None:
        if modality == "CT":
            rescale = (1.0, -1024.0)
        elif modality == "PT":
            rescale = (max(float(np.abs(values).max()), 1e-6) / 32000.0, 0.0)
        else:
            rescale = (1.0, 0.0)
    # Quantise the rescale to what the DS strings hold, so stored values match them exactly.
    slope, intercept = (float(_ds_number(v)) for v in rescale)
    stored, representation = _stored_values(values, slope, intercept)

    shape = (volume.shape[0], volume.shape[1], volume.shape[2])
    affine = series_affine(shape, spacing, origin)
    row_cos, col_cos, positions, (col_mm, row_mm, slice_mm) = _grid_geometry(
        shape, affine, orientation
    )
    grid = _to_grid(stored, orientation)
    n_slices = grid.shape[2]
    study_uid = attributes.get("StudyInstanceUID") or _uid(seed, attributes["PatientID"], "study")
    series_uid = attributes.get("SeriesInstanceUID") or _uid(
        seed, study_uid, modality, orientation, _digest(stored), spacing
    )
    frame_uid = attributes.get("FrameOfReferenceUID") or _uid(study_uid, "frame")
    order = np.arange(n_slices)
    if shuffle_names:
        order = np.random.default_rng(int(series_uid[-8:]) % (2**32)).permutation(n_slices)
        if n_slices > 1 and np.array_equal(order, np.arange(n_slices)):
            order = order[::-1].copy()
    paths = []
    for s in range(n_slices):
        sop_uid = _uid(series_uid, s)
        ds = _file_dataset(_SOP_CLASSES[modality], sop_uid)
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Modality = modality
        ds.SeriesNumber = 1
        ds.SeriesDate = attributes["StudyDate"]
        ds.SeriesTime = attributes["StudyTime"]
        ds.InstanceNumber = int(order[s]) + 1
        ds.Manufacturer = "medgrit"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if orientation == "axial" else "OTHER"]
        ds.PixelSpacing = [_ds_number(row_mm), _ds_number(col_mm)]
        ds.SliceThickness = _ds_number(slice_mm)
        ds.SpacingBetweenSlices = _ds_number(slice_mm)
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [_ds_number(v) for v in positions[s]]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = grid.shape[1], grid.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = representation
        ds.RescaleSlope = _ds_number(slope)
        ds.RescaleIntercept = _ds_number(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        if modality == "PT":
            ds.Units = "BQML"
            ds.CorrectedImage = ["ATTN", "DECY"]
            ds.DecayCorrection = "START"
            if pet is not None:
                ds.PatientWeight = _ds_number(pet.weight_kg)
                ds.SeriesTime = ds.AcquisitionTime = pet.series_time
                drug = Dataset()
                drug.Radiopharmaceutical = "Fluorodeoxyglucose"
                drug.RadiopharmaceuticalStartTime = pet.injection_time
                drug.RadionuclideTotalDose = _ds_number(pet.dose_bq)
                drug.RadionuclideHalfLife = _ds_number(pet.half_life_s)
                ds.RadiopharmaceuticalInformationSequence = DicomSequence([drug])
        ds.PixelData = np.ascontiguousarray(grid[:, :, s].T).tobytes()
        path = folder / f"IM{int(order[s]) + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _read_series(series_files: Sequence[str | Path]) -> tuple[list[Dataset], str]:
    """Series headers sorted along the slice normal, and the orientation they were written in."""
    datasets = [pydicom.dcmread(p) for p in series_files]
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    unit = series_affine((2, 2, 2), (1.0, 1.0, 1.0))
    for name in ORIENTATIONS:
        row_cos, col_cos, _, _ = _grid_geometry((2, 2, 2), unit, name)
        if np.allclose(np.concatenate([row_cos, col_cos]), iop, atol=1e-4):
            return datasets, name
    raise ValueError("series files were not written by write_series (unknown orientation)")


def _frames(label_volume: np.ndarray, datasets: list[Dataset], orientation: str) -> np.ndarray:
    """(slices, rows, columns[, ...]) frames of a canonical volume, one per sorted dataset."""
    grid = _to_grid(label_volume, orientation)
    if grid.shape[2] != len(datasets) or (grid.shape[1], grid.shape[0]) != (
        int(datasets[0].Rows),
        int(datasets[0].Columns),
    ):
        raise ValueError("label volume does not match the series grid")
    return np.moveaxis(grid, (0, 1, 2), (2, 1, 0))


def write_seg(
    label_volume: np.ndarray,
    names: Mapping[int, str],
    series_files: Sequence[str | Path],
    path: str | Path,
    fractional: bool = False,
    *,
    seed: str = "medgrit",
) -> Path:
    """Write a DICOM SEG (with highdicom) over a series written by :func:`write_series`.

    Args:
        label_volume: (X, Y, Z) canonical label map (segment numbers, 0 = background), or an
            (X, Y, Z, N) boolean stack of possibly overlapping segments, one per key of
            ``names`` in ascending order.
        names: segment number -> segment label; numbers must be 1..N.
        series_files: the image series.
        path: the SEG file.
        fractional: write a FRACTIONAL (probability) SEG, max value 255: each segment holds 1.0
            inside its voxels and 0.3 on a one-voxel ring around them in-plane, so a reader
            that does not threshold at 0.5 grows every structure.
        seed: part of the SEG's UIDs.

    Returns:
        ``path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    numbers = sorted(names)
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError("segment numbers must be 1..N")
    datasets, orientation = _read_series(series_files)
    volume = np.asarray(label_volume)
    if volume.ndim == 3:
        stack = np.stack([volume == n for n in numbers], axis=-1)
    elif volume.ndim == 4 and volume.shape[3] == len(numbers):
        stack = volume.astype(bool)
    else:
        raise ValueError("label_volume must be (X, Y, Z) or (X, Y, Z, len(names))")
    frames = _frames(stack, datasets, orientation)  # (slices, rows, cols, N)
    if fractional:
        ring = np.zeros(frames.shape, dtype=bool)
        for i in range(frames.shape[0]):
            for n in range(frames.shape[3]):
                ring[i, :, :, n] = ndimage.binary_dilation(frames[i, :, :, n]) & ~frames[i, :, :, n]
        pixel_array = np.where(frames, 1.0, np.where(ring, 0.3, 0.0)).astype(np.float32)
        seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        pixel_array = frames.astype(np.uint8)
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=str(names[n]),
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Organ,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n in numbers
    ]
    series_uid = str(datasets[0].SeriesInstanceUID)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel_array,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=_uid(seed, series_uid, "seg", fractional),
        series_number=100,
        sop_instance_uid=_uid(seed, series_uid, "seg-instance", fractional, _digest(frames)),
        instance_number=1,
        manufacturer="medgrit",
        manufacturer_model_name="dicom_writer",
        software_versions="1",
        device_serial_number="0",
        max_fractional_value=255,
        content_creator_name="medgrit^writer",
        content_label="SEGMENTATION",
    )
    # highdicom stamps creation times and a random dimension organisation UID: pin them so
    # the file is byte-for-byte reproducible.
    day = str(datasets[0].get("StudyDate", "") or "20240101")
    time = str(datasets[0].get("StudyTime", "") or "120000")
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if keyword in seg:
            setattr(seg, keyword, day)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, time)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = day + time
    organisation = _uid(seed, series_uid, "dimension-organisation")
    for sequence in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(sequence, []):
            item.DimensionOrganizationUID = organisation
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def write_rtstruct(
    label_volume: np.ndarray,
    names: Mapping[int, str],
    series_files: Sequence[str | Path],
    path: str | Path,
    *,
    seed: str = "medgrit",
) -> Path:
    """Write an RT Structure Set over a series written by :func:`write_series`.

    Each label becomes one ROI (ROINumber = label id). Per slice, the label's boundaries are
    traced with ``skimage.measure.find_contours`` at level 0.5 on the padded mask, so the
    contours pass midway between pixel centres; inner boundaries (holes) are separate contours
    of the same ROI, as CLOSED_PLANAR polygons in LPS mm.

    Args:
        label_volume: (X, Y, Z) canonical label map.
        names: label id -> ROIName.
        series_files: the image series.
        path: the RTSTRUCT file.
        seed: part of its UIDs.

    Returns:
        ``path``.
    """
    from skimage.measure import find_contours

    datasets, orientation = _read_series(series_files)
    frames = _frames(np.asarray(label_volume), datasets, orientation)  # (slices, rows, cols)
    first = datasets[0]
    series_uid = str(first.SeriesInstanceUID)
    sop_uid = _uid(seed, series_uid, "rtstruct", _digest(frames))
    ds = _file_dataset(_RTSTRUCT_SOP_CLASS, sop_uid)
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "InstitutionName",
    ):
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = _uid(seed, series_uid, "rtstruct-series")
    ds.SeriesNumber = 200
    ds.InstanceNumber = 1
    ds.Manufacturer = "medgrit"
    ds.StructureSetLabel = "medgrit"
    ds.StructureSetDate = str(first.get("StudyDate", "20240101"))
    ds.StructureSetTime = str(first.get("StudyTime", "120000"))

    def image_ref(image: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = series_uid
    series_ref.ContourImageSequence = DicomSequence([image_ref(d) for d in datasets])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    rois, contours, observations = [], [], []
    row_cos = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_cos = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    for number in sorted(names):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = str(names[number])
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        items = []
        for s, image in enumerate(datasets):
            mask = np.pad(frames[s] == number, 1)
            if not mask.any():
                continue
            origin = np.array([float(v) for v in image.ImagePositionPatient])
            for line in find_contours(mask.astype(np.float32), 0.5):
                rows, cols = line[:-1, 0] - 1.0, line[:-1, 1] - 1.0  # closed: drop repeat
                points = (
                    origin + np.outer(cols * col_mm, row_cos) + np.outer(rows * row_mm, col_cos)
                )
                item = Dataset()
                item.ContourImageSequence = DicomSequence([image_ref(image)])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(points)
                item.ContourData = [_ds_number(v) for v in points.ravel()]
                items.append(item)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = [255, 0, 0]
        contour.ContourSequence = DicomSequence(items)
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_single_image(
    pixels: np.ndarray,
    path: str | Path,
    *,
    modality: str,
    photometric: str = "MONOCHROME2",
    patient: Mapping[str, str] | None = None,
    seed: str = "medgrit",
) -> Path:
    """Write one 2D image (or a multi-frame cine) as a DICOM file.

    Args:
        pixels: what a viewer should show, uint8 or uint16: (H, W) grey, (F, H, W) grey frames,
            (H, W, 3) RGB or (F, H, W, 3) RGB frames (uint8 only).
        path: the file.
        modality: DICOM Modality (CR, DX, MG, US, ES, OP, XC, CT, ...).
        photometric: ``MONOCHROME2``, ``MONOCHROME1`` (stored values are inverted within the
            bit depth, so a reader that honours MONOCHROME1 recovers ``pixels``) or ``RGB``.
        patient: DICOM keyword -> value (see :func:`write_series`).
        seed: part of its UIDs.

    Returns:
        ``path``.
    """
    pixels = np.asarray(pixels)
    modality = modality.upper()
    photometric = photometric.upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise ValueError("photometric must be MONOCHROME1, MONOCHROME2 or RGB")
    colour = photometric == "RGB"
    if colour and (pixels.dtype != np.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] != 3):
        raise ValueError("RGB pixels must be uint8 of shape (H, W, 3) or (F, H, W, 3)")
    if not colour and (pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3)):
        raise ValueError("grey pixels must be uint8 or uint16 of shape (H, W) or (F, H, W)")
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    bits = pixels.dtype.itemsize * 8
    stored = pixels
    if photometric == "MONOCHROME1":
        stored = (np.iinfo(pixels.dtype).max - pixels).astype(pixels.dtype)
    attributes = _patient_attributes(patient)
    study_uid = attributes.get("StudyInstanceUID") or _uid(seed, attributes["PatientID"], "study")
    series_uid = attributes.get("SeriesInstanceUID") or _uid(
        seed, study_uid, modality, Path(path).name
    )
    sop_class = _SOP_CLASSES.get(
        "US_MULTIFRAME" if modality == "US" and frames > 1 else modality, _SOP_CLASSES["OT"]
    )
    ds = _file_dataset(sop_class, _uid(series_uid, _digest(stored)))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "medgrit"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if sop_class == _SOP_CLASSES["OT"]:
        ds.ConversionType = "WSD"  # secondary capture: workstation
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameTime = "33.3"
        ds.FrameIncrementPointer = tag_for_keyword("FrameTime")
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_mask_png(labels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W) label map (pixel value = label id) as an 8- or 16-bit grey PNG."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "uib":
        raise ValueError("labels must be an (H, W) integer array")
    if labels.size and labels.min() < 0:
        raise ValueError("label ids must be >= 0")
    top = int(labels.max(initial=0))
    if top > 65535:
        raise ValueError("label ids must be <= 65535")
    array = labels.astype(np.uint8 if top <= 255 else np.uint16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path
