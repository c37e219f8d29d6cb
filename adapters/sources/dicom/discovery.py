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
  (``{"1": "left lung"}``) in the image's folder, else the root: a :class:`DicomPlanarCase`;
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
from dataclasses import replace
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
from medgrit.core.text import MODALITIES, readable_labels

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
                self._cache[folder] = read_label_names(path)
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
    headers: list[Header] = []
    broken: list[Path] = []
    for path in _walk(root):
        header = read_header(path)
        if isinstance(header, Unparseable):
            broken.append(header.path)
        elif isinstance(header, Header):
            headers.append(header)
    if not headers and not broken:
        raise SourceError(f"no DICOM files under {root}: is this the right folder?")

    series: dict[str, list[Header]] = defaultdict(list)
    series_of: dict[str, str] = {}  # SOPInstanceUID -> SeriesInstanceUID
    for header in headers:
        if header.kind == "image" and header.sop_uid not in series_of:  # copies count once
            series[header.series_uid].append(header)
            series_of[header.sop_uid] = header.series_uid
    dataset = checked_dataset_name(root.name, f"the folder name of {escape_name(str(root))}")
    label_files = _LabelFiles(root)

    def image_modality(header: Header) -> str:
        if modality:
            return modality
        mapped = modality_from_dicom(header.modality)
        if mapped is None:
            raise SourceError(
                f"cannot tell the modality of DICOM Modality {header.modality or '(empty)'!r} "
                f"under {root}; pass --modality {'|'.join(MODALITIES)}"
            )
        return mapped

    def pseudonyms(header: Header, series_uid: str, obj: str) -> dict[str, str]:
        parts = [header.patient_id, header.study_uid, series_uid, obj]
        return {
            "case": _pseudonym("case", parts, key),
            "patient": _pseudonym("patient", [header.patient_id or header.study_uid], key),
        }

    cases: list[DicomCase] = []
    orphans: list[Header] = []  # masks whose image series is absent
    for header in headers:
        if header.kind in ("seg", "rtstruct"):
            # The referenced series, else the series of a referenced instance.
            candidates = [*header.ref_series, *(series_of.get(i, "") for i in header.ref_instances)]
            images = next((series[s] for s in candidates if s in series), None)
            if images is None:
                orphans.append(header)
                continue
            cases.append(
                DicomSeriesCase(
                    source=spec,
                    dataset=dataset,
                    modality=image_modality(images[0]),
                    labels=readable_labels(header.labels),
                    written_labels=header.labels,
                    files=tuple(sorted(str(m.path) for m in images)),
                    mask=str(header.path),
                    **pseudonyms(header, images[0].series_uid, header.sop_uid),
                )
            )
        elif header.kind == "image":
            frames = _mask_frames(header.path)
            if not frames:
                continue
            mask_name = frames[0][1].relative_to(root).as_posix()
            written = label_files.for_image(header.path)
            cases.append(
                DicomPlanarCase(
                    source=spec,
                    dataset=dataset,
                    modality=image_modality(header),
                    labels=readable_labels(written),
                    written_labels=written,
                    image=str(header.path),
                    frames=tuple(MaskFrame(frame, str(mask)) for frame, mask in frames),
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
            DicomSeriesCase(
                source=spec,
                dataset=dataset,
                modality=mod,
                labels=readable_labels(header.labels),
                written_labels=header.labels,
                files=(),
                mask=str(header.path),
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
            DicomUnparseableCase(
                source=spec,
                dataset=dataset,
                case=_pseudonym("file", [path.relative_to(root).as_posix()], key),
                modality=dominant,
                path=str(path),
            )
        )
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
