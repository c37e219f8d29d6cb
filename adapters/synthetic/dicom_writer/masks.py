"""Synthetic DICOM SEG and RTSTRUCT objects over a written series."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from scipy import ndimage

from medgrit.adapters.synthetic.dicom_writer.common import (
    _RTSTRUCT_SOP_CLASS,
    _STUDY_COMPONENT_SOP_CLASS,
    _digest,
    _ds_number,
    _file_dataset,
    _uid,
)
from medgrit.adapters.synthetic.dicom_writer.series import _frames, _read_series


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
    stack = _segment_stack(np.asarray(label_volume), numbers)
    frames = _frames(stack, datasets, orientation)  # (slices, rows, cols, N)
    if fractional:
        pixel_array = _fractional_frames(frames)
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
    _pin_seg_stamps(seg, datasets[0], _uid(seed, series_uid, "dimension-organisation"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _segment_stack(volume: np.ndarray, numbers: list[int]) -> np.ndarray:
    """An (X, Y, Z, N) boolean stack, one segment per number: from a label map, or a stack
    given as one."""
    if volume.ndim == 3:
        return np.stack([volume == n for n in numbers], axis=-1)
    if volume.ndim == 4 and volume.shape[3] == len(numbers):
        return volume.astype(bool)
    raise ValueError("label_volume must be (X, Y, Z) or (X, Y, Z, len(names))")


def _fractional_frames(frames: np.ndarray) -> np.ndarray:
    """Probabilities of (slices, rows, cols, N) boolean frames: 1.0 inside each segment, 0.3 on
    a one-pixel ring around it in-plane, 0.0 elsewhere."""
    ring = np.zeros(frames.shape, dtype=bool)
    for i in range(frames.shape[0]):
        for n in range(frames.shape[3]):
            ring[i, :, :, n] = ndimage.binary_dilation(frames[i, :, :, n]) & ~frames[i, :, :, n]
    return np.where(frames, 1.0, np.where(ring, 0.3, 0.0)).astype(np.float32)


def _pin_seg_stamps(seg: Dataset, first: Dataset, organisation: str) -> None:
    """Set the creation dates and times highdicom stamps to the study's, and its random
    dimension organisation UID to ``organisation``, so that the file is byte-for-byte
    reproducible."""
    day = str(first.get("StudyDate", "") or "20240101")
    time = str(first.get("StudyTime", "") or "120000")
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if keyword in seg:
            setattr(seg, keyword, day)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, time)
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = day + time
    for sequence in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(sequence, []):
            item.DimensionOrganizationUID = organisation


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
    datasets, orientation = _read_series(series_files)
    frames = _frames(np.asarray(label_volume), datasets, orientation)  # (slices, rows, cols)
    first = datasets[0]
    series_uid = str(first.SeriesInstanceUID)
    sop_uid = _uid(seed, series_uid, "rtstruct", _digest(frames))
    ds = _file_dataset(_RTSTRUCT_SOP_CLASS, sop_uid)
    for keyword in _PATIENT_AND_STUDY:
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
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_frame_of_reference(datasets)])

    rois, contours, observations = [], [], []
    for number in sorted(names):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = str(names[number])
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        items = _contour_items(frames, datasets, number)
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


# What an RT Structure Set copies from its image series.
_PATIENT_AND_STUDY = (
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
)


def _image_ref(image: Dataset) -> Dataset:
    """A reference to one image (its SOP class and instance UIDs)."""
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    return item


def _frame_of_reference(datasets: list[Dataset]) -> Dataset:
    """The item of ReferencedFrameOfReferenceSequence: the frame of reference of the series,
    its study, and the series with every image of it."""
    first = datasets[0]
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = str(first.SeriesInstanceUID)
    series_ref.ContourImageSequence = DicomSequence([_image_ref(d) for d in datasets])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    return frame_ref


def _contour_items(frames: np.ndarray, datasets: list[Dataset], number: int) -> list[Dataset]:
    """The ContourSequence items of label ``number``: per slice, each boundary of the label
    traced at level 0.5 on the padded mask, as a CLOSED_PLANAR polygon in LPS mm."""
    from skimage.measure import find_contours

    first = datasets[0]
    row_cos = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_cos = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    items = []
    for s, image in enumerate(datasets):
        mask = np.pad(frames[s] == number, 1)
        if not mask.any():
            continue
        origin = np.array([float(v) for v in image.ImagePositionPatient])
        for line in find_contours(mask.astype(np.float32), 0.5):
            rows, cols = line[:-1, 0] - 1.0, line[:-1, 1] - 1.0  # closed: drop repeat
            points = origin + np.outer(cols * col_mm, row_cos) + np.outer(rows * row_mm, col_cos)
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_image_ref(image)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourData = [_ds_number(v) for v in points.ravel()]
            items.append(item)
    return items
