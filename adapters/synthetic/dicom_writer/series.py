"""Synthetic image series (CT, MR, PET), one file per slice, in shuffled file order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from medgrit.adapters.synthetic.dicom_writer.common import (
    _SOP_CLASSES,
    ORIENTATIONS,
    _digest,
    _ds_number,
    _file_dataset,
    _grid_geometry,
    _patient_attributes,
    _PetTags,
    _stored_values,
    _to_grid,
    _uid,
    series_affine,
)


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
        rescale = _default_rescale(modality, values)
    # Quantise the rescale to what the DS strings hold, so stored values match them exactly.
    slope, intercept = (float(_ds_number(v)) for v in rescale)
    stored, representation = _stored_values(values, slope, intercept)
    shape = (volume.shape[0], volume.shape[1], volume.shape[2])
    affine = series_affine(shape, spacing, origin)
    row_cos, col_cos, positions, spacing_mm = _grid_geometry(shape, affine, orientation)
    grid = _to_grid(stored, orientation)
    n_slices = grid.shape[2]
    uids = _series_uids(attributes, seed, modality, orientation, _digest(stored), spacing)
    order = _file_order(uids[1], n_slices, shuffle_names)
    paths = []
    for s in range(n_slices):
        ds = _file_dataset(_SOP_CLASSES[modality], _uid(uids[1], s))
        _set_series_attributes(ds, attributes, modality, uids, orientation)
        ds.InstanceNumber = int(order[s]) + 1
        _set_image_plane(ds, row_cos, col_cos, spacing_mm, positions[s])
        _set_image_pixels(ds, grid[:, :, s], representation, slope, intercept)
        _set_modality_attributes(ds, modality, pet)
        path = folder / f"IM{int(order[s]) + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _default_rescale(modality: str, values: np.ndarray) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) when none is given: (1, -1024) for CT, (max |value| /
    32000, 0) for PT, (1, 0) otherwise."""
    if modality == "CT":
        return (1.0, -1024.0)
    if modality == "PT":
        return (max(float(np.abs(values).max()), 1e-6) / 32000.0, 0.0)
    return (1.0, 0.0)


def _series_uids(
    attributes: Mapping[str, str],
    seed: str,
    modality: str,
    orientation: str,
    digest: str,
    spacing: tuple[float, float, float],
) -> tuple[str, str, str]:
    """The study, series and frame of reference UIDs: as ``attributes`` give them, else derived
    from the seed, the patient and (for the series) what it holds: the ``digest`` of its stored
    values and its grid."""
    study_uid = attributes.get("StudyInstanceUID") or _uid(seed, attributes["PatientID"], "study")
    series_uid = attributes.get("SeriesInstanceUID") or _uid(
        seed, study_uid, modality, orientation, digest, spacing
    )
    frame_uid = attributes.get("FrameOfReferenceUID") or _uid(study_uid, "frame")
    return study_uid, series_uid, frame_uid


def _file_order(series_uid: str, n_slices: int, shuffle: bool) -> np.ndarray:
    """The 0-based file (and InstanceNumber) index of each slice: the slice order, or with
    ``shuffle`` a permutation seeded by the series UID that is never the slice order."""
    order = np.arange(n_slices)
    if shuffle:
        order = np.random.default_rng(int(series_uid[-8:]) % (2**32)).permutation(n_slices)
        if n_slices > 1 and np.array_equal(order, np.arange(n_slices)):
            order = order[::-1].copy()
    return order


def _set_series_attributes(
    ds: Dataset,
    attributes: Mapping[str, str],
    modality: str,
    uids: tuple[str, str, str],
    orientation: str,
) -> None:
    """The patient's and study's ``attributes``, then the study, series and frame of reference
    ``uids`` and the series, equipment and image type attributes every file of the series
    shares."""
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = uids
    ds.PositionReferenceIndicator = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDate = attributes["StudyDate"]
    ds.SeriesTime = attributes["StudyTime"]
    ds.Manufacturer = "medgrit"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if orientation == "axial" else "OTHER"]


def _set_image_plane(
    ds: Dataset,
    row_cos: np.ndarray,
    col_cos: np.ndarray,
    spacing_mm: tuple[float, float, float],
    position: np.ndarray,
) -> None:
    """The Image Plane attributes of one slice: pixel spacing and slice thickness from
    ``spacing_mm`` (columns, rows, slices), orientation and position (LPS mm)."""
    col_mm, row_mm, slice_mm = spacing_mm
    ds.PixelSpacing = [_ds_number(row_mm), _ds_number(col_mm)]
    ds.SliceThickness = _ds_number(slice_mm)
    ds.SpacingBetweenSlices = _ds_number(slice_mm)
    ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_cos, *col_cos)]
    ds.ImagePositionPatient = [_ds_number(v) for v in position]


def _set_image_pixels(
    ds: Dataset, plane: np.ndarray, representation: int, slope: float, intercept: float
) -> None:
    """The Image Pixel attributes and pixels of one slice (``plane``: stored 16-bit integers,
    columns x rows), with the rescale that turns them into real values."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane.shape[1], plane.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = representation
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleIntercept = _ds_number(intercept)
    ds.PixelData = np.ascontiguousarray(plane.T).tobytes()


def _set_modality_attributes(ds: Dataset, modality: str, pet: _PetTags | None) -> None:
    """The CT attributes (HU), or the PET ones (Bq/ml, decay corrected to the series start,
    with the SUV tags of ``pet``); MR has none."""
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
