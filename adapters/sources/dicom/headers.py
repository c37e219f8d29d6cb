"""Reading the headers of the files under a DICOM source (discovery reads nothing else).

A file's header is read without its pixels (``force=True`` only for files without the DICM
preamble) and summarised in a :class:`Header`: its kind (image, SEG, RTSTRUCT or other), the
UIDs discovery groups by, and for a SEG or RTSTRUCT the series and instances it references and
its label names (SEG: label id = ``SegmentNumber``; RTSTRUCT: label id = ``ROINumber``, for
ROIs with a ``CLOSED_PLANAR`` contour). Files that are not DICOM (PNG, JSON, ...) and
DICOMDIRs give None; a file with the DICM preamble (or a ``.dcm``/``.dicom``/``.ima`` name, or
an empty file with no suffix, or a link that cannot be followed) whose header cannot be parsed
gives :class:`Unparseable`. A header never leaves discovery: it holds identifiers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from medgrit.adapters.sources.dicom.files import (
    ATTRIBUTE_ERRORS,
    READ_ERRORS,
    quiet_pydicom,
    read_header_dataset,
)
from medgrit.core.failures import fails_the_shard
from medgrit.core.label_names import label_name_problem, normalise_label_name

__all__ = [
    "DICOM_MODALITIES",
    "DICOM_SUFFIXES",
    "Header",
    "Unparseable",
    "modality_from_dicom",
    "read_header",
]

# DICOM Modality (0008,0060) -> medgrit modality key.
DICOM_MODALITIES: dict[str, str] = {
    "CT": "ct",
    "MR": "mr",
    "PT": "pet",
    "CR": "xray",
    "DX": "xray",
    "DR": "xray",
    "MG": "xray",
    "RF": "xray",
    "XA": "xray",
    "PX": "xray",
    "IO": "xray",
    "US": "ultrasound",
    "ES": "endoscopy",
    "OP": "fundus",
    "OPT": "fundus",
    "XC": "dermoscopy",
}
# SOP classes a SEG or RTSTRUCT may reference, for the modality of a case whose series is absent.
_SOP_CLASS_MODALITIES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "ct",
    "1.2.840.10008.5.1.4.1.1.2.1": "ct",
    "1.2.840.10008.5.1.4.1.1.4": "mr",
    "1.2.840.10008.5.1.4.1.1.4.1": "mr",
    "1.2.840.10008.5.1.4.1.1.128": "pet",
    "1.2.840.10008.5.1.4.1.1.130": "pet",
}
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_NOT_IMAGES = ("SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "SR", "KO", "REG")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def modality_from_dicom(value: str) -> str | None:
    """Modality key for a DICOM Modality value (``CT`` -> ``ct``), or None when unknown."""
    return DICOM_MODALITIES.get(value.strip().upper())


@dataclass(frozen=True)
class Header:
    """What discovery keeps of one parsed file (never written anywhere)."""

    path: Path
    kind: str  # image | seg | rtstruct | other
    modality: str
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    frames: int = 1
    ref_series: tuple[str, ...] = ()
    ref_instances: tuple[str, ...] = ()
    ref_modality: str | None = None
    labels: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Unparseable:
    """A file that claims to be DICOM but whose header cannot be parsed."""

    path: Path


def _claims_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _looks_like_raw_dicom(head: bytes) -> bool:
    # A file without preamble starts with a group 0002 or 0008 tag (little endian).
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def read_header(path: Path) -> Header | Unparseable | None:
    """The header of ``path``: None if it is not DICOM (or a DICOMDIR)."""
    with quiet_pydicom():
        return _read_header_quietly(path)


def _read_header_quietly(path: Path) -> Header | Unparseable | None:
    named = path.suffix.lower() in DICOM_SUFFIXES
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        if fails_the_shard(exc):
            raise  # the disk or the network: discovery must not skip files for it
        return Unparseable(path) if named else None  # e.g. a link that cannot be followed
    claims = _claims_dicom(head)
    if not claims and not _looks_like_raw_dicom(head):
        # A file named as DICOM, or an empty file with no suffix, is a broken DICOM file.
        return Unparseable(path) if named or (not head and not path.suffix) else None
    try:
        ds = read_header_dataset(path, force=not claims)
    except READ_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        return Unparseable(path) if claims or named else None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
        return None
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not sop_uid:
        return Unparseable(path) if claims or named else None
    try:
        return _summarise(path, ds, sop_uid)
    except ATTRIBUTE_ERRORS:
        return Unparseable(path) if claims or named else None


def _summarise(path: Path, ds: Dataset, sop_uid: str) -> Header:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    common = {
        "path": path,
        "modality": modality,
        "sop_uid": sop_uid,
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
        "patient_id": str(ds.get("PatientID", "") or ""),
    }
    if modality not in ("SEG", "RTSTRUCT"):
        if "Rows" not in ds or "Columns" not in ds or modality in _NOT_IMAGES:
            return Header(kind="other", **common)
        if not common["series_uid"]:
            raise ValueError("image without series")
        return Header(kind="image", frames=int(ds.get("NumberOfFrames", 1) or 1), **common)
    series: list[str] = []
    instances: list[Dataset] = []  # items with ReferencedSOPClassUID / ReferencedSOPInstanceUID
    labels: list[tuple[int, str]] = []
    if modality == "SEG":
        for item in ds.get("ReferencedSeriesSequence", []):
            series.append(str(item.get("SeriesInstanceUID", "")))
            instances += list(item.get("ReferencedInstanceSequence", []))
        for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
            for derivation in frame.get("DerivationImageSequence", []):
                instances += list(derivation.get("SourceImageSequence", []))
        for segment in ds.get("SegmentSequence", []):
            number = int(segment.SegmentNumber)
            raw = str(segment.get("SegmentLabel", "") or f"segment {number}")
            labels.append((number, raw))
    else:
        for frame_ref in ds.get("ReferencedFrameOfReferenceSequence", []):
            for study in frame_ref.get("RTReferencedStudySequence", []):
                for item in study.get("RTReferencedSeriesSequence", []):
                    series.append(str(item.get("SeriesInstanceUID", "")))
                    instances += list(item.get("ContourImageSequence", []))
        closed = set()
        for roi in ds.get("ROIContourSequence", []):
            for contour in roi.get("ContourSequence", []):
                if str(contour.get("ContourGeometricType", "")) == "CLOSED_PLANAR":
                    closed.add(int(roi.ReferencedROINumber))
                    instances += list(contour.get("ContourImageSequence", []))
        labels = [
            (int(roi.ROINumber), str(roi.get("ROIName", "") or "roi"))
            for roi in ds.get("StructureSetROISequence", [])
            if int(roi.ROINumber) in closed
        ]
    classes = [str(i.get("ReferencedSOPClassUID", "")) for i in instances]
    return Header(
        kind=modality.lower(),
        ref_series=tuple(dict.fromkeys(r for r in series if r)),
        ref_instances=tuple(
            dict.fromkeys(str(i.get("ReferencedSOPInstanceUID", "")) for i in instances)
        ),
        ref_modality=_modality_of_classes(classes),
        labels=usable_names(labels),
        **common,
    )


def usable_names(labels: list[tuple[int, str]]) -> tuple[tuple[int, str], ...]:
    """Names of segments or ROIs as written (normalised), by number. A name that cannot name a
    structure
    (:func:`medgrit.core.label_names.label_name_problem`: no letter, markup, control
    characters) is left out, so its pixels become ``unknown_label`` rejects, as does a number
    given twice (which of its names is meant cannot be told)."""
    counts = Counter(number for number, _ in labels)
    out = []
    for number, raw in labels:
        name = normalise_label_name(raw)
        if counts[number] == 1 and label_name_problem(name) is None:
            out.append((number, name))
    return tuple(sorted(out))


def _modality_of_classes(classes: list[str]) -> str | None:
    found = [_SOP_CLASS_MODALITIES[c] for c in classes if c in _SOP_CLASS_MODALITIES]
    return Counter(found).most_common(1)[0][0] if found else None
