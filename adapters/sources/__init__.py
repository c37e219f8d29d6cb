"""Segmentation sources: the registry of formats, and opening sources and reading their cases.

A source spec is ``KIND:PATH``. Each format lives in its own module, which defines its frozen
case type (a :class:`medgrit.core.cases.Case`), an opener per source kind that lists a folder's
cases (reading metadata only), and ``read_case(case) -> LoadedCase``.
``medgrit.schemas.sources.FORMATS`` is the only place a format is added: the source kinds users
type, ``--help`` and the config's checks all come from it. A format's module is imported when
a source or case of it is first used, so each format's dependencies load only then.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from medgrit.core.cases import Case, LoadedCase, Source, SourceError
from medgrit.core.fsnames import escape_name
from medgrit.schemas.sources import FORMATS, SOURCE_KINDS

__all__ = [
    "FORMATS",
    "SOURCE_KINDS",
    "Case",
    "Source",
    "SourceError",
    "estimate_images",
    "load_case",
    "open_sources",
]


_BY_FORMAT = {fmt.name: fmt for fmt in FORMATS}


def parse_source_spec(spec: str) -> tuple[str, str]:
    """Split ``KIND:PATH`` (``demo`` alone is allowed)."""
    kind, _, path = spec.partition(":")
    return kind, path


def _demo_sources(root: Path, key: bytes) -> list[Source]:
    from medgrit.adapters.synthetic.demo import demo_source_specs, ensure_demo_data

    try:
        ensure_demo_data(root)
    except FileExistsError:
        raise SourceError(
            f"the demo folder {escape_name(str(root))} holds something else; point "
            "$MEDGRIT_DEMO_DIR (or demo:PATH) at a new folder"
        ) from None
    return [_open_one(spec, None, key) for spec in demo_source_specs(root)]


def _open_one(spec: str, modality: str | None, key: bytes) -> Source:
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
    module, _, function = SOURCE_KINDS[kind][1].partition(":")
    opener = getattr(importlib.import_module(module), function)
    return opener(spec, root.resolve(), modality, key)


def open_sources(
    specs: list[str],
    demo_dir: Path | None = None,
    modality: str | None = None,
    key: bytes = b"",
) -> list[Source]:
    """Open every source spec, in order (``demo`` expands to the bundled demo sources).

    Args:
        specs: ``KIND:PATH`` strings, or ``demo`` / ``demo:PATH``.
        demo_dir: where the demo lives (default: the user cache).
        modality: modality for sources whose metadata does not say.
        key: pseudonymisation key for sources that hash identifiers while listing (DICOM).

    Raises:
        SourceError: on the first source a user must fix.
    """
    out: list[Source] = []
    for spec in specs:
        kind, path = parse_source_spec(spec)
        if kind == "demo":
            from medgrit.adapters.synthetic.demo import default_demo_dir

            root = Path(path) if path else (demo_dir or default_demo_dir())
            out.extend(_demo_sources(root, key))
        else:
            out.append(_open_one(spec, modality, key))
    check_distinct(out)
    return out


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
    """Refuse label lists that give one label id of a dataset two names (two sources whose
    datasets share a name, or two ``labels.json`` files of one DICOM source): the tables would
    say two things by one (dataset, label id). DICOM SEG segments and RTSTRUCT ROIs are
    numbered per object (``Case.labels_per_case``): they are not compared here."""
    named: dict[tuple[str, int], tuple[str, str]] = {}
    checked: set[tuple[str, int]] = set()  # (source, id of a labels tuple) already compared
    for source in sources:
        for case in source.cases:
            if case.labels_per_case or (source.spec, id(case.labels)) in checked:
                continue
            checked.add((source.spec, id(case.labels)))
            for label_id, name in case.labels:
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
                    f"{label_id} is {first[0]!r} in one and {name!r} in the other; give one "
                    "label map per dataset, or name the datasets apart"
                )


def load_case(case: Case) -> LoadedCase:
    """Read one case with its format's reader.

    Raises:
        UnreadableImage: when the case cannot be read (the pipeline makes it a reject row).
    """
    fmt = _BY_FORMAT.get(case.format)
    if fmt is None:
        raise TypeError(f"{type(case).__name__} names no known format ({case.format!r})")
    return importlib.import_module(fmt.module).read_case(case)


def estimate_images(
    case: Case, plane: str, slice_stride: int = 1, max_slices: int | None = None
) -> int:
    """A cheap estimate of the images a case gives, for sizing shards (at least 1).

    The format's ``estimate_images(case, plane)`` counts the slices or images its listing or
    header holds (never pixels; slices without foreground are counted too); stride and cap
    apply as in the build. A format without one, or a case whose header cannot be read,
    counts as one image.
    """
    fmt = _BY_FORMAT.get(case.format)
    estimate = (
        getattr(importlib.import_module(fmt.module), "estimate_images", None) if fmt else None
    )
    try:
        n = int(estimate(case, plane)) if estimate is not None else 1
    except Exception:  # noqa: BLE001 - an unreadable case is the shard's reject row, not ours
        n = 1
    n = -(-max(1, n) // slice_stride)
    return max(1, min(n, max_slices) if max_slices else n)
