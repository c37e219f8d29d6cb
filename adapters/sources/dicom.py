"""DICOM sources: image series with SEG or RTSTRUCT masks, and single images with PNG masks.

Discovery (:func:`open_dicom`) walks a folder recursively, reads every file's header (never its
pixels; ``force=True`` only for files without the DICM preamble) and lists one case per mask:

- a DICOM SEG (Modality ``SEG``) or RT Structure Set (Modality ``RTSTRUCT``) with the image
  series it references (SEG: ReferencedSeriesSequence, else the series of a per-frame source
  image; RTSTRUCT: ReferencedFrameOfReferenceSequence -> RTReferencedStudySequence ->
  RTReferencedSeriesSequence, else the series of a contour image): a *volume case*;
- a single DICOM image (CR, DX, US, ES, OP, XC, ...) with a label-map PNG next to it (pixel value
  = label id): ``{stem}_mask.png`` for frame 0, or ``{stem}_mask_{frame}.png`` per 0-based frame
  of a multi-frame file such as an ultrasound cine, where ``{stem}`` is the file name without a
  ``.dcm``/``.dicom``/``.ima`` suffix; label names come from ``labels.json``
  (``{"1": "left lung"}``) in the image's folder, else the root: a *planar case*.

Image series without a mask are not cases; files that are not DICOM (PNG, JSON, ...) and
DICOMDIRs are skipped. A file with the DICM preamble (or a ``.dcm``/``.dicom``/``.ima`` name, or
an empty file with no suffix, or a link that cannot be followed) whose header cannot be parsed
becomes a case (``members == (BROKEN,)``) that fails to load with ``dicom_unreadable``; a SEG or
RTSTRUCT whose series is absent becomes a case with ``members == ()`` that fails with
``referenced_series_missing``. Volume cases list the series' files, sorted, in ``members``;
planar cases hold ``"{frame}|{mask path}"`` strings there.

Volume cases load (:func:`load_dicom_case`) as canonical RAS+ :class:`Volume` objects exactly
like ``medgrit.adapters.sources.nifti`` (nibabel's closest-canonical reorientation): data shape
(X, Y, Z), axis 0 toward the patient's Right, 1 Anterior, 2 Superior; spacing in mm; the affine
maps voxels to RAS+ mm. The DICOM grid is built in LPS, the frame of DICOM patient coordinates:
voxel (c, r, s) = column c, row r of slice s lies at
``IPP_0 + c * col_spacing * row_cosine + r * row_spacing * column_cosine + s * slice_step``,
where slices (single-frame files or the frames of enhanced multi-frame files) are sorted by
``ImagePositionPatient`` projected on the slice normal (row cosine x column cosine), never by
file name or ``InstanceNumber``; LPS becomes RAS by negating x and y. All slices must share
``ImageOrientationPatient`` (within 1e-4) and be evenly spaced (gaps within 1 % or 0.01 mm of
the median). Image data are float32 after ``RescaleSlope``/``RescaleIntercept``; label data use
the smallest unsigned dtype that holds the largest label id.

- SEG: label id = ``SegmentNumber``. Frames map to slices by their referenced source instance
  (``DerivationImageSequence`` / ``SourceImageSequence``) or else by ``PlanePositionSequence``.
  FRACTIONAL segments count where the value is at least half of ``MaximumFractionalValue``.
  Where segments overlap, the higher segment number wins.
- RTSTRUCT: label id = ``ROINumber``. ``CLOSED_PLANAR`` contours (patient coordinates, mm) are
  rasterised on the slice they reference (``ContourImageSequence``) or else the slice at their
  position; a pixel is in when its centre is. All contours of one ROI on one slice combine by
  the even-odd rule, so an inner contour cuts a hole. Where ROIs overlap, the higher ROINumber
  wins. POINT and OPEN_PLANAR contours are ignored.
- Intensity: ``hu`` for CT; ``suv`` for PET when the header allows SUVbw (Units BQML, patient
  weight, dose, half-life, injection and series times, DecayCorrection START or ADMIN) or the
  Units are already GML; else ``percentile``.

Planar cases load as :class:`PlanarImage` objects (``plane="2d"``, stored orientation, one per
masked frame): greyscale as (H, W) float32 after rescale, MONOCHROME1 reflected within its value
range so that dense structures are bright, intensity ``hu`` for CT and ``percentile`` otherwise;
colour (RGB, YBR_FULL, YBR_FULL_422, YBR_ICT/RCT, PALETTE COLOR) as (H, W, 3) uint8 RGB with
intensity ``display``. A mask of the wrong size (``mask_shape_mismatch``), an unreadable mask
(``mask_unreadable``) or a mask for a frame the file lacks (``mask_frame_missing``) drops that
image with a ``LoadedCase.rejects`` entry; if no image is left, the first such reason is raised.

Privacy: case and patient ids are keyed HMAC-SHA256 pseudonyms (``medgrit.core.ids``) of
PatientID, StudyInstanceUID, SeriesInstanceUID and the mask's SOPInstanceUID (or mask path); the
patient id falls back to the StudyInstanceUID; ``dataset`` is the root folder's name. No other
DICOM attribute value (names, ids, dates, institutions, UIDs) appears in what this module
returns, raises or logs: error details name only technical values (modality, shapes, spacing,
orientation, transfer syntax) and exception class names. pydicom's warnings and log records,
which may quote attribute values, are silenced while this module reads (:func:`_quiet_pydicom`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from PIL import UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.pixels import pixel_array as decode_pixels

from medgrit.adapters.sources.limits import MAX_VOXELS, check_pixels, open_image
from medgrit.core.cases import (
    CaseRef,
    LoadedCase,
    PlanarImage,
    Source,
    SourceError,
    UnreadableImage,
    Volume,
)
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name
from medgrit.core.ids import pseudonymise_case
from medgrit.core.label_maps import as_label_array
from medgrit.core.text import MODALITIES, readable_label_name

__all__ = [
    "DICOM_MODALITIES",
    "SeriesGrid",
    "fill_even_odd",
    "load_dicom_case",
    "modality_from_dicom",
    "open_dicom",
    "read_mask_png",
    "read_series",
    "suv_factor",
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
_ORIENTATION_TOL = 1e-4
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_MASK_FRAME = re.compile(r"_mask_(\d+)\.png$")
# ``members`` of a case made for a file that claims to be DICOM but cannot be parsed.
BROKEN = "<unparseable DICOM header>"
# What pydicom raises for files it cannot parse or decode.
_READ_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    struct.error,
)
# What reading a missing or malformed attribute raises.
_ATTRIBUTE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


def modality_from_dicom(value: str) -> str | None:
    """Modality key for a DICOM Modality value (``CT`` -> ``ct``), or None when unknown."""
    return DICOM_MODALITIES.get(value.strip().upper())


# ---------------------------------------------------------------------------------------------
# Discovery


@dataclass(frozen=True)
class _Header:
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


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_DROP = _DropRecords()
_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_warnings: warnings.catch_warnings | None = None


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's log records and all warnings while pydicom reads.

    Both may quote attribute values (names, dates, UIDs of invalid form); values are converted
    lazily, so this must cover every access to a dataset, not only ``dcmread``. Entries and
    exits are counted under a lock, so that concurrent shards (threads) install the silencing
    once and restore the previous state once, after the last of them.
    """
    global _quiet_depth, _quiet_warnings
    with _quiet_lock:
        if _quiet_depth == 0:
            for logger in _pydicom_loggers():
                logger.addFilter(_DROP)
            _quiet_warnings = warnings.catch_warnings()
            _quiet_warnings.__enter__()
            warnings.simplefilter("ignore")
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                if _quiet_warnings is not None:
                    _quiet_warnings.__exit__(None, None, None)
                    _quiet_warnings = None
                for logger in _pydicom_loggers():
                    logger.removeFilter(_DROP)


def _pydicom_loggers() -> list[logging.Logger]:
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith("pydicom.")]
    return [logging.getLogger("pydicom"), *(logging.getLogger(n) for n in names)]


def _silenced_read(path: Path, force: bool) -> Dataset:
    with _quiet_pydicom():
        return pydicom.dcmread(path, stop_before_pixels=True, force=force)


def _claims_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _looks_like_raw_dicom(head: bytes) -> bool:
    # A file without preamble starts with a group 0002 or 0008 tag (little endian).
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _read_header(path: Path) -> _Header | str | None:
    with _quiet_pydicom():
        return _read_header_quietly(path)


def _read_header_quietly(path: Path) -> _Header | str | None:
    """The header of ``path``; None if it is not DICOM; ``"broken"`` if it claims to be but
    cannot be parsed."""
    named = path.suffix.lower() in _DICOM_SUFFIXES
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        if fails_the_shard(exc):
            raise  # the disk or the network: discovery must not skip files for it
        return "broken" if named else None  # e.g. a link that cannot be followed
    claims = _claims_dicom(head)
    if not claims and not _looks_like_raw_dicom(head):
        # A file named as DICOM, or an empty file with no suffix, is a broken DICOM file.
        return "broken" if named or (not head and not path.suffix) else None
    try:
        ds = _silenced_read(path, force=not claims)
    except _READ_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        return "broken" if claims or named else None
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
        return None
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not sop_uid:
        return "broken" if claims or named else None
    try:
        return _summarise(path, ds, sop_uid)
    except _ATTRIBUTE_ERRORS:
        return "broken" if claims or named else None


def _summarise(path: Path, ds: Dataset, sop_uid: str) -> _Header:
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
            return _Header(kind="other", **common)
        if not common["series_uid"]:
            raise ValueError("image without series")
        return _Header(kind="image", frames=int(ds.get("NumberOfFrames", 1) or 1), **common)
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
            labels.append((number, readable_label_name(raw)))
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
            (int(roi.ROINumber), readable_label_name(str(roi.get("ROIName", "") or "roi")))
            for roi in ds.get("StructureSetROISequence", [])
            if int(roi.ROINumber) in closed
        ]
    classes = [str(i.get("ReferencedSOPClassUID", "")) for i in instances]
    return _Header(
        kind=modality.lower(),
        ref_series=tuple(dict.fromkeys(r for r in series if r)),
        ref_instances=tuple(
            dict.fromkeys(str(i.get("ReferencedSOPInstanceUID", "")) for i in instances)
        ),
        ref_modality=_modality_of_classes(classes),
        labels=tuple(sorted(labels)),
        **common,
    )


def _modality_of_classes(classes: list[str]) -> str | None:
    found = [_SOP_CLASS_MODALITIES[c] for c in classes if c in _SOP_CLASS_MODALITIES]
    return Counter(found).most_common(1)[0][0] if found else None


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.name.startswith("."):
            continue
        if path.is_file() or (path.is_symlink() and not path.exists()):
            yield path


def _mask_frames(image: Path) -> list[tuple[int, Path]]:
    """(frame, mask PNG) pairs next to a single image, frames ascending."""
    stem = image.stem if image.suffix.lower() in (".dcm", ".dicom", ".ima") else image.name
    per_frame = []
    for candidate in image.parent.glob(f"{_glob_escape(stem)}_mask_*.png"):
        match = _MASK_FRAME.search(candidate.name)
        if match and candidate.name == f"{stem}_mask_{match.group(1)}.png":
            per_frame.append((int(match.group(1)), candidate))
    if per_frame:
        return sorted(per_frame)
    single = image.with_name(f"{stem}_mask.png")
    return [(0, single)] if single.is_file() else []


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


class _LabelFiles:
    """``labels.json`` files (id -> name), looked up in the image's folder, then the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[tuple[int, str], ...] | None] = {}

    def _read(self, folder: Path) -> tuple[tuple[int, str], ...] | None:
        if folder not in self._cache:
            path = folder / "labels.json"
            if not path.is_file():
                self._cache[folder] = None
            else:
                self._cache[folder] = _parse_labels_json(path)
        return self._cache[folder]

    def for_image(self, image: Path) -> tuple[tuple[int, str], ...]:
        found = self._read(image.parent)
        if found is None:
            found = self._read(self.root)
        if found is None:
            raise SourceError(
                f"mask PNGs under {self.root} have no labels.json: add one "
                '({"1": "left lung", ...}) next to the masks or in the root folder'
            )
        return found


def _parse_labels_json(path: Path) -> tuple[tuple[int, str], ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise SourceError(f'malformed {path}: expected JSON like {{"1": "left lung"}}') from None
    if not isinstance(data, dict):
        raise SourceError(f"malformed {path}: expected a JSON object of id -> name")
    pairs = []
    for key, value in data.items():
        try:
            label_id = int(key)
        except ValueError:
            raise SourceError(f"malformed {path}: label id {key!r} is not an integer") from None
        if label_id < 0 or not isinstance(value, str):
            raise SourceError(f"malformed {path}: label {key!r} needs a name and an id >= 0")
        if label_id != 0:
            pairs.append((label_id, readable_label_name(value)))
    return tuple(sorted(pairs))


def _pseudonym(kind: str, parts: list[str], key: bytes) -> str:
    return pseudonymise_case(f"dicom-{kind}", "\x1f".join(parts), key)


def open_dicom(spec: str, root: Path, key: bytes, modality: str | None = None) -> Source:
    """Open a folder of DICOM files (searched recursively) as a source.

    Args:
        spec: the source spec (``dicom:PATH``).
        root: the folder.
        key: the pseudonymisation key (see ``medgrit.adapters.runtime.keys``).
        modality: modality key for every case, overriding the DICOM Modality.

    Returns:
        The source, one case per SEG, RTSTRUCT and masked single image, sorted by case id.

    Raises:
        SourceError: missing folder, no DICOM file, an image modality medgrit cannot map (pass
            ``modality``), a malformed or missing ``labels.json`` for PNG masks.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"DICOM source folder does not exist: {root}")
    if modality is not None and modality not in MODALITIES:
        raise SourceError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    headers: list[_Header] = []
    broken: list[Path] = []
    for path in _walk(root):
        header = _read_header(path)
        if header == "broken":
            broken.append(path)
        elif isinstance(header, _Header):
            headers.append(header)
    if not headers and not broken:
        raise SourceError(f"no DICOM files under {root}: is this the right folder?")

    series: dict[str, list[_Header]] = defaultdict(list)
    series_of: dict[str, str] = {}  # SOPInstanceUID -> SeriesInstanceUID
    for header in headers:
        if header.kind == "image" and header.sop_uid not in series_of:  # copies count once
            series[header.series_uid].append(header)
            series_of[header.sop_uid] = header.series_uid
    dataset = escape_name(root.name)  # a display name: folders may hold any bytes
    label_files = _LabelFiles(root)

    def image_modality(header: _Header) -> str:
        if modality:
            return modality
        mapped = modality_from_dicom(header.modality)
        if mapped is None:
            raise SourceError(
                f"cannot tell the modality of DICOM Modality {header.modality or '(empty)'!r} "
                f"under {root}; pass --modality {'|'.join(MODALITIES)}"
            )
        return mapped

    def pseudonyms(header: _Header, series_uid: str, obj: str) -> dict[str, str]:
        parts = [header.patient_id, header.study_uid, series_uid, obj]
        return {
            "case": _pseudonym("case", parts, key),
            "patient": _pseudonym("patient", [header.patient_id or header.study_uid], key),
        }

    cases: list[CaseRef] = []
    orphans: list[_Header] = []  # masks whose image series is absent
    for header in headers:
        if header.kind in ("seg", "rtstruct"):
            # The referenced series, else the series of a referenced instance.
            candidates = [*header.ref_series, *(series_of.get(i, "") for i in header.ref_instances)]
            images = next((series[s] for s in candidates if s in series), None)
            if images is None:
                orphans.append(header)
                continue
            members = tuple(sorted(str(m.path) for m in images))
            cases.append(
                CaseRef(
                    source=spec,
                    dataset=dataset,
                    format="dicom",
                    image_path=members[0],
                    label_path=str(header.path),
                    modality=image_modality(images[0]),
                    labels=header.labels,
                    members=members,
                    **pseudonyms(header, images[0].series_uid, header.sop_uid),
                )
            )
        elif header.kind == "image":
            frames = _mask_frames(header.path)
            if not frames:
                continue
            mask_name = frames[0][1].relative_to(root).as_posix()
            cases.append(
                CaseRef(
                    source=spec,
                    dataset=dataset,
                    format="dicom",
                    image_path=str(header.path),
                    label_path=str(frames[0][1]),
                    modality=image_modality(header),
                    labels=label_files.for_image(header.path),
                    members=tuple(f"{frame}|{mask}" for frame, mask in frames),
                    **pseudonyms(header, header.series_uid, f"{header.sop_uid}/{mask_name}"),
                )
            )

    known = Counter(c.modality for c in cases) or Counter(
        h.ref_modality for h in orphans if h.ref_modality
    )
    dominant = modality or (known.most_common(1)[0][0] if known else None)
    for header in orphans:
        mod = modality or header.ref_modality or dominant
        if mod is None:
            raise SourceError(
                f"cannot tell the modality of a mask whose image series is missing under "
                f"{root}; pass --modality {'|'.join(MODALITIES)}"
            )
        cases.append(
            CaseRef(
                source=spec,
                dataset=dataset,
                format="dicom",
                image_path="",
                label_path=str(header.path),
                modality=mod,
                labels=header.labels,
                **pseudonyms(header, ",".join(header.ref_series), header.sop_uid),
            )
        )
    dominant = dominant or (
        Counter(c.modality for c in cases).most_common(1)[0][0] if cases else None
    )
    for path in broken:
        if dominant is None:
            raise SourceError(f"no DICOM header under {root} can be parsed")
        cases.append(
            CaseRef(
                source=spec,
                dataset=dataset,
                case=_pseudonym("file", [path.relative_to(root).as_posix()], key),
                format="dicom",
                image_path=str(path),
                label_path=str(path),
                modality=dominant,
                members=(BROKEN,),
            )
        )
    if not cases:
        raise SourceError(
            f"no DICOM SEG, RTSTRUCT or masked single image under {root}: image series alone "
            "are not cases"
        )
    cases = _distinct_cases(cases, root, key)
    cases.sort(key=lambda c: (c.case, c.label_path))
    return Source(
        spec=spec,
        kind="dicom",
        root=str(root),
        dataset=dataset,
        modality=dominant or cases[0].modality,
        labels=_merge_labels(cases),
        cases=tuple(cases),
    )


def _distinct_cases(cases: list[CaseRef], root: Path, key: bytes) -> list[CaseRef]:
    """Cases whose pseudonyms collide (files that share their UIDs, as copies and derived
    objects do) get the file's path inside the source folded into theirs, in file order."""
    from dataclasses import replace

    seen: set[str] = set()
    out: list[CaseRef] = []
    for ref in sorted(cases, key=lambda c: c.label_path):
        if ref.case in seen:
            where = os.fsencode(Path(ref.label_path).relative_to(root)).hex()
            ref = replace(ref, case=_pseudonym("case", [ref.case, where], key))
        seen.add(ref.case)
        out.append(ref)
    return out


def _merge_labels(cases: list[CaseRef]) -> tuple[tuple[int, str], ...]:
    """One name per label id over all cases: the most common one (ties: alphabetical)."""
    names: dict[int, Counter[str]] = defaultdict(Counter)
    for ref in cases:
        for label_id, name in ref.labels:
            names[label_id][name] += 1
    return tuple(
        (label_id, min(counts, key=lambda n: (-counts[n], n)))
        for label_id, counts in sorted(names.items())
    )


# ---------------------------------------------------------------------------------------------
# Loading


def load_dicom_case(ref: CaseRef) -> LoadedCase:
    """Load a DICOM case listed by :func:`open_dicom`.

    Returns:
        A volume case (SEG / RTSTRUCT over a series) or a planar case (single image + PNG).

    Raises:
        UnreadableImage: ``dicom_unreadable`` (truncated or corrupt file, undecodable pixels),
            ``missing_pixel_data``, ``referenced_series_missing``, ``inconsistent_orientation``,
            ``inconsistent_spacing``, ``inconsistent_shape``, ``missing_geometry``,
            ``unsupported_image``, ``shape_mismatch`` (mask grid differs from the images),
            ``mask_shape_mismatch`` / ``mask_unreadable`` (planar cases with no usable image).
    """
    if ref.members == (BROKEN,):
        raise UnreadableImage("dicom_unreadable", "the DICOM header cannot be parsed")
    try:
        with _quiet_pydicom():
            if ref.label_path.lower().endswith(".png"):
                return _load_planar(ref)
            return _load_volume(ref)
    except _ATTRIBUTE_ERRORS as exc:
        # A required attribute is missing or malformed (a truncated header, a bad DS value).
        raise UnreadableImage(
            "dicom_unreadable", f"a DICOM attribute is missing or malformed ({type(exc).__name__})"
        ) from None


def _load_volume(ref: CaseRef) -> LoadedCase:
    if not ref.members:
        raise UnreadableImage(
            "referenced_series_missing", "the image series the mask references is not in the source"
        )
    mask = _read_full(Path(ref.label_path), "mask object")
    grid, image, first = read_series([Path(p) for p in ref.members])
    kind = str(mask.get("Modality", "")).upper()
    rejects: list[tuple[str, str, int | None]] = []
    if kind == "SEG":
        labels, names = _seg_labels(mask, grid, rejects)
    elif kind == "RTSTRUCT":
        labels, names = _rtstruct_labels(mask, grid, rejects)
    else:
        raise UnreadableImage("dicom_unreadable", f"mask object has Modality {kind or '(none)'}")
    intensity = "hu" if ref.modality == "ct" else "percentile"
    if ref.modality == "pet":
        factor = suv_factor(first)
        if factor is not None:
            image = image * np.float32(factor)
            intensity = "suv"
    image_volume, label_volume = _canonical_pair(image, as_label_array(labels), grid)
    return LoadedCase(
        modality=ref.modality,
        intensity=intensity,
        volume=image_volume,
        label_volume=label_volume,
        label_names=names,
        rejects=tuple(rejects),
    )


def _read_full(path: Path, role: str) -> Dataset:
    if not path.is_file():
        raise UnreadableImage("file_missing", f"a file of the {role} is missing")
    try:
        return pydicom.dcmread(path, force=True)
    except _READ_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        raise UnreadableImage(
            "dicom_unreadable", f"{role} cannot be read ({type(exc).__name__})"
        ) from None


def _pixels(ds: Dataset, role: str, index: int | None = None) -> np.ndarray:
    """Decoded stored values (no rescale), as pydicom returns them; frame ``index`` if given."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnreadableImage("missing_pixel_data", f"{role} has no pixel data")
    try:
        declared = (
            int(ds.get("NumberOfFrames", 1) or 1) if index is None else 1,
            int(ds.get("Rows", 0) or 0),
            int(ds.get("Columns", 0) or 0),
            int(ds.get("SamplesPerPixel", 1) or 1),
        )
    except _ATTRIBUTE_ERRORS:
        raise UnreadableImage(
            "dicom_unreadable", f"{role} has malformed image dimensions"
        ) from None
    check_pixels(declared[1:3], role)  # one frame: the 2D limit of the PNG readers
    check_pixels(declared, role, limit=MAX_VOXELS)
    try:
        if index is None:
            return decode_pixels(ds, as_rgb=False)
        return decode_pixels(ds, index=index, as_rgb=False)
    except _READ_ERRORS as exc:
        if fails_the_shard(exc):
            raise
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?"))
        raise UnreadableImage(
            "dicom_unreadable",
            f"{role} pixel data cannot be decoded ({type(exc).__name__}, transfer syntax "
            f"{getattr(pydicom.uid.UID(syntax), 'name', syntax)})",
        ) from None


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


def _functional(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
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
            plane = _functional(ds, i, "PlanePositionSequence")
            orient = _functional(ds, i, "PlaneOrientationSequence")
            measures = _functional(ds, i, "PixelMeasuresSequence")
            transform = _functional(ds, i, "PixelValueTransformationSequence")
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
        slices); the first file's dataset (for SUV tags).

    Raises:
        UnreadableImage: see :func:`load_dicom_case`.
    """
    datasets = [_read_full(p, "image series") for p in paths]
    frames = [f for i, ds in enumerate(datasets) for f in _frames_of(ds, i)]
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) != 1:
        raise UnreadableImage("inconsistent_shape", f"slices differ in size: {sorted(shapes)}")
    if any(int(ds.get("SamplesPerPixel", 1) or 1) != 1 for ds in datasets):
        raise UnreadableImage("unsupported_image", "colour image series are not supported")
    rows, cols = shapes.pop()
    orientation = frames[0].orientation
    for f in frames[1:]:
        if np.max(np.abs(f.orientation - orientation)) > _ORIENTATION_TOL:
            raise UnreadableImage(
                "inconsistent_orientation",
                f"slice orientations differ: {np.round(orientation, 4).tolist()} vs "
                f"{np.round(f.orientation, 4).tolist()}",
            )
    pixel_spacings = np.array([f.pixel_spacing for f in frames])
    if np.ptp(pixel_spacings, axis=0).max() > 1e-4:
        raise UnreadableImage("inconsistent_spacing", "slices differ in pixel spacing")
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
    check_pixels((cols, rows, len(frames)), "image series", limit=MAX_VOXELS)
    image = np.empty((cols, rows, len(frames)), dtype=np.float32)
    by_file: dict[int, list[tuple[int, _Frame]]] = defaultdict(list)
    for s, f in enumerate(frames):
        by_file[f.file_index].append((s, f))
    for file_index, placed in sorted(by_file.items()):
        pixels = _pixels(datasets[file_index], "image series").reshape(-1, rows, cols)
        for s, f in placed:
            plane = pixels[f.frame - 1].astype(np.float32)
            image[:, :, s] = (plane * np.float32(f.slope) + np.float32(f.intercept)).T
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


def _canonical_pair(
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


def _seg_labels(
    seg: Dataset, grid: SeriesGrid, rejects: list[tuple[str, str, int | None]]
) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
    """Label map (grid order) of a SEG; higher segment numbers overwrite lower ones."""
    cols, rows, _ = grid.shape
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise UnreadableImage(
            "shape_mismatch",
            f"SEG frames are {int(seg.Rows)}x{int(seg.Columns)}, images {rows}x{cols}",
        )
    names = []
    for segment in seg.get("SegmentSequence", []):
        number = int(segment.SegmentNumber)
        names.append(
            (
                number,
                readable_label_name(str(segment.get("SegmentLabel", "") or f"segment {number}")),
            )
        )
    count = int(seg.get("NumberOfFrames", 1) or 1)
    pixels = _pixels(seg, "SEG").reshape(count, rows, cols)
    fractional = str(seg.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    top = float(seg.get("MaximumFractionalValue", 255) or 255)
    placed: list[tuple[int, int, int]] = []  # (segment, slice, frame)
    unmatched = 0
    for i in range(count):
        ident = _functional(seg, i, "SegmentIdentificationSequence")
        if ident is None:
            raise UnreadableImage("dicom_unreadable", "a SEG frame names no segment")
        orient = _functional(seg, i, "PlaneOrientationSequence")
        if orient is not None and "ImageOrientationPatient" in orient:
            iop = np.array([float(v) for v in orient.ImageOrientationPatient])
            expected = np.concatenate([grid.row_cosine, grid.column_cosine])
            if np.max(np.abs(iop - expected)) > _ORIENTATION_TOL:
                raise UnreadableImage(
                    "inconsistent_orientation",
                    f"SEG orientation {np.round(iop, 4).tolist()} differs from the images'",
                )
        s = _seg_frame_slice(seg, i, grid)
        if s is None:
            unmatched += 1
            continue
        placed.append((int(ident.ReferencedSegmentNumber), s, i))
    labels = np.zeros(grid.shape, dtype=np.uint32)
    for number, s, i in sorted(placed):
        frame = pixels[i]
        on = frame.astype(np.float64) * 2 >= top if fractional else frame > 0
        labels[:, :, s][on.T] = number
    if unmatched:
        rejects.append(
            ("seg_frame_unmatched", f"{unmatched} SEG frame(s) match no slice of the series", None)
        )
    return labels, tuple(sorted(names))


def _seg_frame_slice(seg: Dataset, i: int, grid: SeriesGrid) -> int | None:
    """The slice a SEG frame lies on: by its source image reference, else by its position."""
    derivation = _functional(seg, i, "DerivationImageSequence")
    for item in derivation.get("SourceImageSequence", []) if derivation is not None else []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        numbers = item.get("ReferencedFrameNumber", 1)
        numbers = list(numbers) if isinstance(numbers, MultiValue | list) else [numbers or 1]
        for number in numbers:
            s = grid.index.get((uid, int(number)))
            if s is not None:
                return s
    plane = _functional(seg, i, "PlanePositionSequence")
    if plane is None or "ImagePositionPatient" not in plane:
        return None
    point = np.array([float(v) for v in plane.ImagePositionPatient])
    s = grid.slice_at(point)
    if s is None:
        return None
    col, row = grid.to_pixels(point[None, :], s)
    return s if abs(col[0]) <= 0.5 and abs(row[0]) <= 0.5 else None


def _rtstruct_labels(
    rt: Dataset, grid: SeriesGrid, rejects: list[tuple[str, str, int | None]]
) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
    """Label map (grid order) of an RTSTRUCT; higher ROI numbers overwrite lower ones."""
    cols, rows, _ = grid.shape
    roi_names = {
        int(roi.ROINumber): str(roi.get("ROIName", "") or "roi")
        for roi in rt.get("StructureSetROISequence", [])
    }
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
    names = tuple(sorted((n, readable_label_name(roi_names.get(n, f"roi {n}"))) for n in present))
    return labels, names


def fill_even_odd(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise closed polygons with the even-odd rule: a pixel is in when its centre is.

    Args:
        polygons: (N, 2) arrays of (x = column, y = row) vertices in pixel units; each polygon
            closes on its own (the last vertex joins the first).
        height, width: the output grid.

    Returns:
        (height, width) bool mask. A pixel centre lying inside an odd number of polygons is set,
        so an inner polygon cuts a hole into an outer one. Edges are half-open: a centre exactly
        on a left edge is inside, on a right edge outside.
    """
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    for poly in polygons:
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
            if ay == by:
                continue
            lo, hi = (ay, by) if ay < by else (by, ay)
            first = max(math.ceil(lo), 0)
            last = min(math.ceil(hi) - 1, height - 1)  # rows y with lo <= y < hi
            if first > last:
                continue
            ys = np.arange(first, last + 1, dtype=np.float64)
            xs = ax + (ys - ay) * (bx - ax) / (by - ay)
            # Centre c is right of the crossing when c >= x, i.e. c >= ceil(x).
            cs = np.clip(np.ceil(xs), 0, width).astype(np.intp)
            np.add.at(toggles, (ys.astype(np.intp), cs), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)


# ---------------------------------------------------------------------------------------------
# PET SUV


def _seconds(text: str) -> float | None:
    match = re.fullmatch(r"\s*(\d{2})(\d{2})?(\d{2})?(\.\d+)?\s*", text or "")
    if not match:
        return None
    hours, minutes, secs, frac = match.groups()
    return int(hours) * 3600 + int(minutes or 0) * 60 + int(secs or 0) + float(frac or 0)


def _day(text: str) -> int | None:
    match = re.fullmatch(r"\s*(\d{4})(\d{2})(\d{2})\s*", text or "")
    if not match:
        return None
    from datetime import date

    try:
        return date(*(int(g) for g in match.groups())).toordinal()
    except ValueError:
        return None


def suv_factor(ds: Dataset) -> float | None:
    """Factor turning a PET series' rescaled values (Bq/ml) into SUVbw, or None if the header
    does not allow it.

    SUVbw = activity concentration [Bq/ml] * weight [g] / decayed dose [Bq]. With
    DecayCorrection START the dose decays from the injection to the series start (SeriesTime,
    else AcquisitionTime; over midnight when only times are known); with ADMIN it does not
    decay. Units GML are SUVbw already (factor 1). Malformed tags give None.
    """
    try:
        return _suv_factor(ds)
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError):
        return None


def _suv_factor(ds: Dataset) -> float | None:
    units = str(ds.get("Units", "") or "").upper()
    if units == "GML":
        return 1.0
    if units != "BQML":
        return None
    weight = float(ds.get("PatientWeight", 0) or 0)
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if weight <= 0 or not info:
        return None
    drug = info[0]
    dose = float(drug.get("RadionuclideTotalDose", 0) or 0)
    half_life = float(drug.get("RadionuclideHalfLife", 0) or 0)
    if dose <= 0 or half_life <= 0:
        return None
    correction = str(ds.get("DecayCorrection", "") or "").upper()
    if correction == "ADMIN":
        return weight * 1000.0 / dose
    if correction != "START":
        return None
    start_dt = str(drug.get("RadiopharmaceuticalStartDateTime", "") or "")
    start_day = _day(start_dt[:8]) if len(start_dt) >= 8 else None
    start = _seconds(start_dt[8:]) if start_day is not None else None
    if start is None:
        start = _seconds(str(drug.get("RadiopharmaceuticalStartTime", "") or ""))
    series = _seconds(str(ds.get("SeriesTime", "") or "")) or _seconds(
        str(ds.get("AcquisitionTime", "") or "")
    )
    if start is None or series is None:
        return None
    series_day = _day(str(ds.get("SeriesDate", "") or ds.get("AcquisitionDate", "") or ""))
    if start_day is not None and series_day is not None:
        elapsed = (series_day - start_day) * 86400.0 + series - start
        if elapsed < 0:
            return None
    else:
        elapsed = series - start
        if elapsed < 0:
            elapsed += 86400.0
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return weight * 1000.0 / decayed


# ---------------------------------------------------------------------------------------------
# Single images


def _load_planar(ref: CaseRef) -> LoadedCase:
    ds = _read_full(Path(ref.image_path), "image")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    rejects: list[tuple[str, str, int | None]] = []
    images: list[PlanarImage] = []
    intensity = "percentile"
    for member in ref.members:
        frame_text, _, mask_path = member.partition("|")
        frame = int(frame_text)
        try:
            if frame >= count:
                raise UnreadableImage("mask_frame_missing", f"the image has {count} frame(s)")
            labels = read_mask_png(Path(mask_path))
            decoded = _pixels(ds, "image", index=frame if count > 1 else None)
            pixels, intensity = _display_pixels(ds, decoded, ref.modality)
            if labels.shape != pixels.shape[:2]:
                raise UnreadableImage(
                    "mask_shape_mismatch",
                    f"mask {labels.shape[1]}x{labels.shape[0]} vs image "
                    f"{pixels.shape[1]}x{pixels.shape[0]} (width x height)",
                )
        except UnreadableImage as exc:
            if exc.reason in ("missing_pixel_data", "dicom_unreadable", "unsupported_image"):
                raise  # the image itself is unusable, not one mask
            rejects.append((exc.reason, exc.detail, frame))
            continue
        images.append(PlanarImage(slice_index=frame, pixels=pixels, labels=labels, plane="2d"))
    if not images:
        reason, detail, _ = rejects[0] if rejects else ("mask_unreadable", "no mask", None)
        raise UnreadableImage(reason, detail)
    return LoadedCase(
        modality=ref.modality,
        intensity=intensity,
        images=tuple(images),
        label_names=ref.labels,
        rejects=tuple(rejects),
    )


def _display_pixels(ds: Dataset, frame: np.ndarray, modality: str) -> tuple[np.ndarray, str]:
    """One frame as (H, W) float32 or (H, W, 3) uint8 RGB, and its intensity kind."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    stored_top = 2 ** int(ds.get("BitsStored", 8) or 8) - 1
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        return _to_uint8_rgb(rgb, 255 if rgb.dtype == np.uint8 else 65535), "display"
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        rgb = convert_color_space(frame, photometric, "RGB")
        return _to_uint8_rgb(rgb, stored_top), "display"
    if photometric in ("RGB", "YBR_ICT", "YBR_RCT"):  # JPEG 2000 decoders return RGB
        return _to_uint8_rgb(frame, stored_top), "display"
    if frame.ndim != 2:
        raise UnreadableImage("unsupported_image", f"photometric {photometric} is not supported")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if photometric == "MONOCHROME1":
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = np.array([low, high], dtype=np.float64) * slope + intercept
        values = np.float32(ends.min() + ends.max()) - values
    return values.astype(np.float32), ("hu" if modality == "ct" else "percentile")


def _to_uint8_rgb(rgb: np.ndarray, top: int) -> np.ndarray:
    """(H, W, 3) colour with values in [0, top] as uint8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise UnreadableImage("unsupported_image", f"colour pixels of shape {rgb.shape}")
    if rgb.dtype == np.uint8 and top == 255:
        return np.ascontiguousarray(rgb)
    scaled = np.rint(rgb.astype(np.float64) * (255.0 / top))
    return np.ascontiguousarray(np.clip(scaled, 0, 255).astype(np.uint8))


def read_mask_png(path: Path) -> np.ndarray:
    """A label-map PNG (pixel value = label id) as an (H, W) unsigned integer array.

    Raises:
        UnreadableImage: ``mask_unreadable`` for a missing, corrupt or colour PNG; ``too_large``
            for one over the pixel limit (checked before decoding).
    """
    try:
        with open_image(path, "mask PNG") as image:
            image.load()
            mode = image.mode
            data = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        if fails_the_shard(exc):
            raise
        raise UnreadableImage(
            "mask_unreadable", f"mask PNG cannot be read ({type(exc).__name__})"
        ) from None
    if mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr") or data.ndim != 2:
        raise UnreadableImage("mask_unreadable", f"mask PNG is {mode}; expected a label map")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype.kind not in "ui" or (data.size and data.min() < 0):
        raise UnreadableImage("mask_unreadable", "mask PNG holds no non-negative label ids")
    return as_label_array(data)
