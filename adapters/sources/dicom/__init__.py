"""DICOM sources: image series with SEG or RTSTRUCT masks, and single images with PNG masks.

One job per module:

- ``headers``: reading each file's header (never its pixels) during discovery;
- ``discovery``: :func:`open_dicom`, grouping masks with the images they label into cases;
- ``cases``: the case types (:class:`DicomSeriesCase`, :class:`DicomPlanarCase`,
  :class:`DicomUnparseableCase`);
- ``files``: reading datasets and pixel data with pydicom silenced;
- ``series``: the geometry of an image series (LPS grid) and its canonical RAS+ volumes;
- ``seg`` and ``rtstruct``: the label maps of SEG and RTSTRUCT objects on that grid;
- ``planar``: single images (planar, stored orientation) with their mask PNGs;
- ``reader``: :func:`read_case`, which picks the reader by case type.

Volumes come back exactly like ``medgrit.adapters.sources.nifti``'s: data shape (X, Y, Z), axis
0 toward the patient's Right, 1 Anterior, 2 Superior (RAS+), spacing in mm, the affine mapping
voxels to RAS+ mm. Label ids are ``SegmentNumber`` (SEG), ``ROINumber`` (RTSTRUCT) or the PNG
pixel value (single images).

Privacy: case and patient ids are keyed pseudonyms; no DICOM attribute value other than
technical ones (modality, shapes, spacing, orientation, transfer syntax) appears in what this
package returns, raises or logs, and pydicom's warnings and log records, which may quote
attribute values, are silenced while it reads.
"""

from __future__ import annotations

from typing import ClassVar

from medgrit.adapters.sources.dicom.cases import (
    DicomCase,
    DicomPlanarCase,
    DicomSeriesCase,
    DicomUnparseableCase,
    MaskFrame,
)
from medgrit.adapters.sources.dicom.discovery import open_dicom
from medgrit.adapters.sources.dicom.headers import DICOM_MODALITIES, modality_from_dicom
from medgrit.adapters.sources.dicom.reader import estimate_images, read_case, suv_tags
from medgrit.adapters.sources.dicom.series import SeriesGrid, read_series

__all__ = [
    "DICOM_MODALITIES",
    "DicomCase",
    "DicomPlanarCase",
    "DicomReader",
    "DicomSeriesCase",
    "DicomUnparseableCase",
    "MaskFrame",
    "SeriesGrid",
    "estimate_images",
    "modality_from_dicom",
    "open_dicom",
    "read_case",
    "read_series",
    "suv_tags",
]


class DicomReader:
    """The reader of ``dicom:PATH`` sources: image series with SEG or RTSTRUCT masks, and single
    images with PNG masks."""

    format: ClassVar[str] = DicomCase.format
    open_source = staticmethod(open_dicom)
    read_case = staticmethod(read_case)
    estimate_images = staticmethod(estimate_images)
