"""Reading a DICOM case: a series with its SEG or RTSTRUCT as canonical volumes, a single
image as planar images, or the reject a case that cannot be read becomes.

Volumes are canonical RAS+ (``medgrit.adapters.sources.dicom.series``); image data float32
after rescale, label data the smallest unsigned dtype that holds the largest label id.
Intensity: ``hu`` for CT; ``suv`` for PET when the header allows SUVbw (Units BQML, patient
weight, dose, half-life, injection and series times, DecayCorrection START or ADMIN) or the
Units are already GML (``medgrit.core.suv``); else ``percentile``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medgrit.adapters.sources.dicom.cases import (
    DicomCase,
    DicomPlanarCase,
    DicomSeriesCase,
    DicomUnparseableCase,
)
from medgrit.adapters.sources.dicom.files import ATTRIBUTE_ERRORS, quiet_pydicom, read_dataset
from medgrit.adapters.sources.dicom.planar import read_planar
from medgrit.adapters.sources.dicom.rtstruct import rtstruct_labels
from medgrit.adapters.sources.dicom.seg import seg_labels
from medgrit.adapters.sources.dicom.series import canonical_pair, read_series
from medgrit.core.cases import LoadedCase, UnreadableImage
from medgrit.core.label_maps import as_label_array
from medgrit.core.suv import SUV_KEYWORDS, suv_factor
from medgrit.core.text import readable_labels

__all__ = ["read_case", "suv_tags"]

# The SUV keywords read from the first RadiopharmaceuticalInformationSequence item.
_DRUG_KEYWORDS = (
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "RadiopharmaceuticalStartDateTime",
    "RadiopharmaceuticalStartTime",
)


def estimate_images(case: DicomCase, plane: str) -> int:
    """The series' slice files for a volume case (along its acquisition), 1 otherwise."""
    return len(case.files) if isinstance(case, DicomSeriesCase) and case.files else 1


def read_case(case: DicomCase) -> LoadedCase:
    """Read a DICOM case listed by :func:`medgrit.adapters.sources.dicom.open_dicom`.

    Returns:
        A volume case (SEG / RTSTRUCT over a series) or a planar case (single image + PNG).

    Raises:
        UnreadableImage: ``dicom_unreadable`` (truncated or corrupt file, undecodable pixels,
            an unparseable header), ``missing_pixel_data``, ``referenced_series_missing``,
            ``inconsistent_orientation``, ``inconsistent_spacing``, ``inconsistent_shape``,
            ``missing_geometry``, ``unsupported_image``, ``shape_mismatch`` (mask grid differs
            from the images), ``mask_shape_mismatch`` / ``mask_unreadable`` (planar cases with
            no usable image).
    """
    if isinstance(case, DicomUnparseableCase):
        raise UnreadableImage("dicom_unreadable", "the DICOM header cannot be parsed")
    try:
        with quiet_pydicom():
            if isinstance(case, DicomPlanarCase):
                return read_planar(case)
            if isinstance(case, DicomSeriesCase):
                return _read_volume(case)
    except ATTRIBUTE_ERRORS as exc:
        # A required attribute is missing or malformed (a truncated header, a bad DS value).
        raise UnreadableImage(
            "dicom_unreadable", f"a DICOM attribute is missing or malformed ({type(exc).__name__})"
        ) from None
    raise TypeError(f"no DICOM reader for {type(case).__name__}")


def _read_volume(case: DicomSeriesCase) -> LoadedCase:
    if not case.files:
        raise UnreadableImage(
            "referenced_series_missing", "the image series the mask references is not in the source"
        )
    mask = read_dataset(Path(case.mask), "mask object")
    grid, image, first = read_series([Path(p) for p in case.files])
    kind = str(mask.get("Modality", "")).upper()
    rejects: list[tuple[str, str, int | None]] = []
    if kind == "SEG":
        labels, names = seg_labels(mask, grid, rejects)
    elif kind == "RTSTRUCT":
        labels, names = rtstruct_labels(mask, grid, rejects)
    else:
        raise UnreadableImage("dicom_unreadable", f"mask object has Modality {kind or '(none)'}")
    intensity = "hu" if case.modality == "ct" else "percentile"
    if case.modality == "pet":
        factor = suv_factor(suv_tags(first))
        if factor is not None:
            image = image * np.float32(factor)
            intensity = "suv"
    image_volume, label_volume = canonical_pair(image, as_label_array(labels), grid)
    return LoadedCase(
        modality=case.modality,
        intensity=intensity,
        volume=image_volume,
        label_volume=label_volume,
        label_names=readable_labels(names),
        written_label_names=names,
        rejects=tuple(rejects),
    )


def suv_tags(ds: Dataset) -> dict[str, str]:
    """The values ``medgrit.core.suv.suv_factor`` reads, as text (``""`` when absent or
    empty); ``{}`` when the header is too malformed to read them."""
    try:
        with quiet_pydicom():
            info = ds.get("RadiopharmaceuticalInformationSequence")
            drug = info[0] if info else Dataset()
            return {
                keyword: str((drug if keyword in _DRUG_KEYWORDS else ds).get(keyword, "") or "")
                for keyword in SUV_KEYWORDS
            }
    except ATTRIBUTE_ERRORS:
        return {}
