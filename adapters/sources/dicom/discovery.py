"""Discovery of a DICOM source: one case per mask, grouped with the images it labels.

:func:`open_dicom` walks a folder recursively (hidden files skipped), reads every file's header
(``medgrit.adapters.sources.dicom.headers``) and lists one case per mask:

- a DICOM SEG (Modality ``SEG``) or RT Structure Set (Modality ``RTSTRUCT``) with the image
  series it references (SEG: ReferencedSeriesSequence, else the series of a per-frame source
  image; RTSTRUCT: ReferencedFrameOfReferenceSequence -> RTReferencedStudySequence ->
  RTReferencedSeriesSequence, else the series of a contour image): a
  :class:`DicomSeriesCase` listing the series' files, sorted; a SEG or RTSTRUCT whose series is
  absent lists none (``files == ()``) and fails to read with ``referenced_series_missing``;
- a single DICOM image (CR, DX, US, ES, OP, XC, ...) with a label-map PNG next to it (pixel value
  = label id): ``{stem}_mask.png`` for frame 0, or ``{stem}_mask_{frame}.png`` per 0-based frame
  of a multi-frame file such as an ultrasound cine, where ``{stem}`` is the file name without a
  ``.dcm``/``.dicom``/``.ima`` suffix; label names come from ``labels.json``
  (``{"1": "left lung"}``, optionally with ``"synonyms"``) in the image's folder, else the
  root: a :class:`DicomPlanarCase`;
- a file that claims to be DICOM but whose header cannot be parsed: a
  :class:`DicomUnparseableCase`, which fails to read with ``dicom_unreadable``.

Image series without a mask are not cases. Copies of an image (same SOPInstanceUID) count once.

Privacy: case and patient ids are keyed HMAC-SHA256 pseudonyms (``medgrit.core.ids``) of
PatientID, StudyInstanceUID, SeriesInstanceUID and the mask's SOPInstanceUID (or mask path); the
patient id falls back to the StudyInstanceUID; ``dataset`` is the root folder's name. Cases whose
pseudonyms collide (copies, derived objects sharing UIDs) get the mask's path inside the source
folded in. Cases are sorted by pseudonym, then mask file.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from medgrit.adapters.sources.dicom.cases import (
    DicomCase,
    DicomPlanarCase,
    DicomSeriesCase,
    DicomUnparseableCase,
    MaskFrame,
)
from medgrit.adapters.sources.dicom.headers import (
    DICOM_SUFFIXES,
    Header,
    Unparseable,
    modality_from_dicom,
    read_header,
)
from medgrit.adapters.sources.masks import read_label_names
from medgrit.core.cases import Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.ids import pseudonymise_case
from medgrit.core.label_names import checked_dataset_name
from medgrit.core.text import readable_labels
from medgrit.core.vocab import MODALITIES

__all__ = ["open_dicom"]

_MASK_FRAME = re.compile(r"_mask_(\d+)\.png$")


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.name.startswith("."):
            continue
        if path.is_file() or (path.is_symlink() and not path.exists()):
            yield path


def _mask_frames(image: Path) -> list[tuple[int, Path]]:
    """(frame, mask PNG) pairs next to a single image, frames ascending."""
    stem = image.stem if image.suffix.lower() in DICOM_SUFFIXES else image.name
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


_LabelFile = tuple[tuple[tuple[int, str], ...], tuple[tuple[str, str], ...]]
"""A ``labels.json``'s (label id, name as written) pairs and (synonym, label name) pairs."""


class _LabelFiles:
    """``labels.json`` files (id -> name, and synonyms), looked up in the image's folder, then
    the root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, _LabelFile | None] = {}

    def _read(self, folder: Path) -> _LabelFile | None:
        if folder not in self._cache:
            path = folder / "labels.json"
            if not path.is_file():
                self._cache[folder] = None
            else:
                self._cache[folder] = read_label_names(path)
        return self._cache[folder]

    def for_image(self, image: Path) -> _LabelFile:
        found = self._read(image.parent)
        if found is None:
            found = self._read(self.root)
        if found is None:
            raise SourceError(
                f"mask PNGs under {self.root} have no labels.json: add one "
                '({"1": "left lung", ...}) next to the masks or in the root folder'
            )
        return found


def _pseudonym(kind: str, parts: list[str], key: bytes) -> str:
    return pseudonymise_case(f"dicom-{kind}", "\x1f".join(parts), key)


def open_dicom(spec: str, root: Path, modality: str | None = None, key: bytes = b"") -> Source:
    """Open a folder of DICOM files (searched recursively) as a source.

    Args:
        spec: the source spec (``dicom:PATH``).
        root: the folder.
        modality: modality key for every case, overriding the DICOM Modality.
        key: the pseudonymisation key (see ``medgrit.adapters.runtime.keys``).

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
    headers, broken = _read_headers(root)
    if not headers and not broken:
        raise SourceError(f"no DICOM files under {root}: is this the right folder?")
    dataset = checked_dataset_name(root.name, f"the folder name of {escape_name(str(root))}")
    folder = _Folder(spec, root, dataset, modality, key)
    cases, orphans = _masked_cases(headers, folder)
    known = Counter(c.modality for c in cases) or Counter(
        h.ref_modality for h in orphans if h.ref_modality
    )
    dominant = modality or (known.most_common(1)[0][0] if known else None)
    cases.extend(_orphan_case(header, folder, dominant) for header in orphans)
    dominant = dominant or (
        Counter(c.modality for c in cases).most_common(1)[0][0] if cases else None
    )
    cases.extend(_unparseable_case(path, folder, dominant) for path in broken)
    if not cases:
        raise SourceError(
            f"no DICOM SEG, RTSTRUCT or masked single image under {root}: image series alone "
            "are not cases"
        )
    cases = _distinct_cases(cases, root, key)
    cases.sort(key=lambda c: (c.case, c.label_file))
    return Source(
        spec=spec,
        kind="dicom",
        root=str(root),
        dataset=dataset,
        modality=dominant or cases[0].modality,
        labels=_merge_labels(cases),
        cases=tuple(cases),
    )


@dataclass(frozen=True)
class _Folder:
    """What the cases of one DICOM source share: its spec, folder and dataset name, the
    modality that overrides every file's (None: read each file's), and the pseudonymisation
    key."""

    spec: str
    root: Path
    dataset: str
    modality: str | None
    key: bytes

    def image_modality(self, header: Header) -> str:
        """The modality key of an image: the override, else its DICOM Modality mapped."""
        if self.modality:
            return self.modality
        mapped = modality_from_dicom(header.modality)
        if mapped is None:
            raise SourceError(
                f"cannot tell the modality of DICOM Modality {header.modality or '(empty)'!r} "
                f"under {self.root}; pass --modality {'|'.join(MODALITIES)}"
            )
        return mapped

    def pseudonyms(self, header: Header, series_uid: str, obj: str) -> dict[str, str]:
        """The case and patient pseudonyms of the case of mask object ``obj`` on a series."""
        parts = [header.patient_id, header.study_uid, series_uid, obj]
        return {
            "case": _pseudonym("case", parts, self.key),
            "patient": _pseudonym("patient", [header.patient_id or header.study_uid], self.key),
        }


def _read_headers(root: Path) -> tuple[list[Header], list[Path]]:
    """The parsed headers of the DICOM files under ``root``, and the files that claim to be
    DICOM but whose header cannot be parsed, in path order."""
    headers: list[Header] = []
    broken: list[Path] = []
    for path in _walk(root):
        header = read_header(path)
        if isinstance(header, Unparseable):
            broken.append(header.path)
        elif isinstance(header, Header):
            headers.append(header)
    return headers, broken


def _masked_cases(headers: list[Header], folder: _Folder) -> tuple[list[DicomCase], list[Header]]:
    """A case per SEG or RTSTRUCT with its image series and per single image with mask PNGs,
    in header order; and the SEGs and RTSTRUCTs whose image series is absent."""
    series: dict[str, list[Header]] = defaultdict(list)
    series_of: dict[str, str] = {}  # SOPInstanceUID -> SeriesInstanceUID
    for header in headers:
        if header.kind == "image" and header.sop_uid not in series_of:  # copies count once
            series[header.series_uid].append(header)
            series_of[header.sop_uid] = header.series_uid
    label_files = _LabelFiles(folder.root)
    cases: list[DicomCase] = []
    orphans: list[Header] = []  # masks whose image series is absent
    for header in headers:
        if header.kind in ("seg", "rtstruct"):
            # The referenced series, else the series of a referenced instance.
            candidates = [*header.ref_series, *(series_of.get(i, "") for i in header.ref_instances)]
            images = next((series[s] for s in candidates if s in series), None)
            if images is None:
                orphans.append(header)
            else:
                cases.append(_series_case(header, images, folder))
        elif header.kind == "image":
            frames = _mask_frames(header.path)
            if frames:
                written, synonyms = label_files.for_image(header.path)
                cases.append(_planar_case(header, frames, written, synonyms, folder))
    return cases, orphans


def _series_case(header: Header, images: list[Header], folder: _Folder) -> DicomSeriesCase:
    """The case of a SEG or RTSTRUCT and the image series it labels."""
    return DicomSeriesCase(
        source=folder.spec,
        dataset=folder.dataset,
        modality=folder.image_modality(images[0]),
        labels=readable_labels(header.labels),
        written_labels=header.labels,
        files=tuple(sorted(str(m.path) for m in images)),
        mask=str(header.path),
        **folder.pseudonyms(header, images[0].series_uid, header.sop_uid),
    )


def _planar_case(
    header: Header,
    frames: list[tuple[int, Path]],
    written: tuple[tuple[int, str], ...],
    synonyms: tuple[tuple[str, str], ...],
    folder: _Folder,
) -> DicomPlanarCase:
    """The case of a single image and its mask PNGs, named by ``labels.json`` (``written``,
    with its ``synonyms``)."""
    mask_name = frames[0][1].relative_to(folder.root).as_posix()
    return DicomPlanarCase(
        source=folder.spec,
        dataset=folder.dataset,
        modality=folder.image_modality(header),
        labels=readable_labels(written),
        written_labels=written,
        synonyms=synonyms,
        image=str(header.path),
        frames=tuple(MaskFrame(frame, str(mask)) for frame, mask in frames),
        **folder.pseudonyms(header, header.series_uid, f"{header.sop_uid}/{mask_name}"),
    )


def _orphan_case(header: Header, folder: _Folder, dominant: str | None) -> DicomSeriesCase:
    """The case of a SEG or RTSTRUCT whose image series is absent (it lists no files), of the
    modality its header names, else the source's ``dominant`` one."""
    mod = folder.modality or header.ref_modality or dominant
    if mod is None:
        raise SourceError(
            f"cannot tell the modality of a mask whose image series is missing under "
            f"{folder.root}; pass --modality {'|'.join(MODALITIES)}"
        )
    return DicomSeriesCase(
        source=folder.spec,
        dataset=folder.dataset,
        modality=mod,
        labels=readable_labels(header.labels),
        written_labels=header.labels,
        files=(),
        mask=str(header.path),
        **folder.pseudonyms(header, ",".join(header.ref_series), header.sop_uid),
    )


def _unparseable_case(path: Path, folder: _Folder, dominant: str | None) -> DicomUnparseableCase:
    """The case of a file whose DICOM header cannot be parsed, of the source's modality."""
    if dominant is None:
        raise SourceError(f"no DICOM header under {folder.root} can be parsed")
    return DicomUnparseableCase(
        source=folder.spec,
        dataset=folder.dataset,
        case=_pseudonym("file", [path.relative_to(folder.root).as_posix()], folder.key),
        modality=dominant,
        path=str(path),
    )


def _distinct_cases(cases: list[DicomCase], root: Path, key: bytes) -> list[DicomCase]:
    """Cases whose pseudonyms collide (files that share their UIDs, as copies and derived
    objects do) get the file's path inside the source folded into theirs, in file order."""
    seen: set[str] = set()
    out: list[DicomCase] = []
    for case in sorted(cases, key=lambda c: c.label_file):
        if case.case in seen:
            where = os.fsencode(Path(case.label_file).relative_to(root)).hex()
            case = replace(case, case=_pseudonym("case", [case.case, where], key))
        seen.add(case.case)
        out.append(case)
    return out


def _merge_labels(cases: list[DicomCase]) -> tuple[tuple[int, str], ...]:
    """One name per label id over all cases: the most common one (ties: alphabetical)."""
    names: dict[int, Counter[str]] = defaultdict(Counter)
    for case in cases:
        for label_id, name in case.labels:
            names[label_id][name] += 1
    return tuple(
        (label_id, min(counts, key=lambda n: (-counts[n], n)))
        for label_id, counts in sorted(names.items())
    )
