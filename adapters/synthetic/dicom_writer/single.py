"""Synthetic single DICOM images (X-ray, ultrasound, photographs) and their PNG label maps."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.datadict import tag_for_keyword

from medgrit.adapters.synthetic.dicom_writer.common import (
    _SOP_CLASSES,
    _digest,
    _file_dataset,
    _patient_attributes,
    _uid,
)


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
