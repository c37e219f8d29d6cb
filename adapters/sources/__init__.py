"""Segmentation sources: opening a ``KIND:PATH`` source and reading its cases.

Each format lives in its own module, which defines its frozen case type (a
:class:`medgrit.core.cases.Case`) and a reader class per source kind that lists a folder's cases
(reading metadata only) and reads one case (``medgrit.adapters.sources.registry``). A format's
module is imported when a source or case of it is first used, so each format's dependencies load
only then. The bundled demo (``demo``, ``demo:PATH``) is no source kind here: it is expanded
into sources of these kinds by ``medgrit.adapters.source_specs``.
"""

from __future__ import annotations

from pathlib import Path

from medgrit.adapters.sources.registry import READERS, Reader
from medgrit.core.cases import Case, LoadedCase, Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.schemas.sources import FORMATS, SOURCE_KINDS

__all__ = [
    "Case",
    "Source",
    "SourceError",
    "check_distinct",
    "estimate_images",
    "load_case",
    "open_source",
    "parse_source_spec",
]

# Format -> its first source kind: every kind of a format reads its cases alike.
_KIND_OF_FORMAT = {fmt.name: next(iter(fmt.kinds)) for fmt in FORMATS}


def parse_source_spec(spec: str) -> tuple[str, str]:
    """Split ``KIND:PATH`` (``demo`` alone is allowed)."""
    kind, _, path = spec.partition(":")
    return kind, path


def open_source(spec: str, modality: str | None = None, key: bytes = b"") -> Source:
    """Open one ``KIND:PATH`` source with its kind's reader.

    Args:
        spec: ``KIND:PATH``.
        modality: modality for a source whose metadata does not say.
        key: pseudonymisation key for sources that hash identifiers while listing (DICOM).

    Raises:
        SourceError: an unknown kind, a missing path, or a folder a user must fix.
    """
    kind, path = parse_source_spec(spec)
    if kind not in SOURCE_KINDS:
        kinds = ", ".join(f"{k}:PATH" for k in SOURCE_KINDS)
        raise SourceError(f"unknown source kind {kind!r} in {spec!r}; use {kinds} or demo")
    if not path:
        raise SourceError(f"source {spec!r} needs a path: {kind}:PATH")
    root = Path(path).expanduser()
    if not root.exists():
        raise SourceError(f"source path does not exist: {root}")
    if not root.is_dir():
        raise SourceError(f"source path is not a folder: {root}")
    return READERS[kind]().open_source(spec, root.resolve(), modality, key)


def check_distinct(sources: list[Source]) -> None:
    """Refuse sources that overlap: one folder given twice (or through a link), or two
    sources holding a case of the same name in a dataset of the same name, whose ids would
    collide.

    Raises:
        SourceError: naming the sources that overlap.
    """
    roots: dict[str, str] = {}
    for source in sources:
        real = str(Path(source.root).resolve())
        if real in roots:
            raise SourceError(
                f"{escape_name(source.spec)} is the same folder as {escape_name(roots[real])}; "
                "give each source once"
            )
        roots[real] = source.spec
    seen: dict[tuple[str, str], str] = {}
    for source in sources:
        for case in source.cases:
            key = (case.dataset, case.case)
            if key in seen and seen[key] == source.spec:
                raise SourceError(
                    f"{escape_name(source.spec)} lists case {escape_name(case.case)!r} twice; "
                    "give each case once"
                )
            if key in seen:
                raise SourceError(
                    f"{escape_name(seen[key])} and {escape_name(source.spec)} both hold case "
                    f"{escape_name(case.case)!r} of dataset {case.dataset!r} (a copy?); "
                    "give each case once, or name the datasets apart"
                )
            seen[key] = source.spec
    _check_one_label_map(sources)


def _check_one_label_map(sources: list[Source]) -> None:
    """Refuse label lists that give one label id of a dataset two meanings (two sources whose
    datasets share a name, or two ``labels.json`` files of one DICOM source): two names, or
    one name over other stored values (``Case.label_groups``). The tables would say two things
    by one (dataset, label id). DICOM SEG segments and RTSTRUCT ROIs are numbered per object
    (``Case.labels_per_case``): they are not compared here."""
    named: dict[tuple[str, int], tuple[str, str]] = {}
    checked: set[tuple[str, int]] = set()  # (source, id of a labels tuple) already compared
    for source in sources:
        for case in source.cases:
            if case.labels_per_case or (source.spec, id(case.labels)) in checked:
                continue
            checked.add((source.spec, id(case.labels)))
            groups = dict(case.label_groups)
            for label_id, label in case.labels:
                values = groups.get(label_id, (label_id,))
                shown = ", ".join(map(str, values))
                name = repr(label) if values == (label_id,) else f"{label!r} (values {shown})"
                first = named.setdefault((case.dataset, label_id), (name, source.spec))
                if first[0] == name:
                    continue
                where = (
                    f"two label files of {escape_name(source.spec)}"
                    if first[1] == source.spec
                    else f"{escape_name(first[1])} and {escape_name(source.spec)}"
                )
                raise SourceError(
                    f"{where} both name labels of dataset {case.dataset!r}, but label "
                    f"{label_id} is {first[0]} in one and {name} in the other; give one "
                    "label map per dataset, or name the datasets apart"
                )


def _reader_of(case: Case) -> Reader | None:
    kind = _KIND_OF_FORMAT.get(case.format)
    return READERS[kind]() if kind is not None else None


def load_case(case: Case) -> LoadedCase:
    """Read one case with its format's reader.

    Raises:
        UnreadableImage: when the case cannot be read (the pipeline makes it a reject row).
    """
    reader = _reader_of(case)
    if reader is None:
        raise TypeError(f"{type(case).__name__} names no known format ({case.format!r})")
    return reader.read_case(case)


def estimate_images(
    case: Case, plane: str, slice_stride: int = 1, max_slices: int | None = None
) -> int:
    """A cheap estimate of the images a case gives, for sizing shards (at least 1).

    The reader's ``estimate_images(case, plane)`` counts the slices or images its listing or
    header holds (never pixels; slices without foreground are counted too); stride and cap
    apply as in the build. A case of no known format, or whose header cannot be read, counts
    as one image.
    """
    reader = _reader_of(case)
    try:
        n = int(reader.estimate_images(case, plane)) if reader is not None else 1
    except Exception:  # noqa: BLE001 - an unreadable case is the shard's reject row, not ours
        n = 1
    n = -(-max(1, n) // slice_stride)
    return max(1, min(n, max_slices) if max_slices else n)
