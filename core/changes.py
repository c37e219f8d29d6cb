"""What changed in a dataset's sources since it was built: label maps and cases.

A dataset is built from one label map per source, forever. Its manifest records, per source,
the label map of each dataset the source holds (label id -> readable name, as
:func:`label_maps_of` gives it, with its sha256), and, per planned case, what its listing showed
(``listed_images``), a fingerprint of its labels and files (``fingerprint``) and, when asked
for, a hash of its files' bytes (``content_sha256``). A later build, resume or scheduled append
compares them with the sources as they are now (:func:`case_change`, :func:`label_map_changes`):
a case that changed is never kept beside cases built under another meaning of its labels.

Cases whose label ids are numbered per case (DICOM SEG segments, RTSTRUCT ROIs:
``Case.labels_per_case``) carry their names in their fingerprint instead of a source-wide map.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

from medgrit.core.cases import Case
from medgrit.core.fsnames import escape_name

__all__ = [
    "case_change",
    "describe_label_change",
    "label_map_changes",
    "label_map_digest",
    "label_maps_of",
]


def label_maps_of(cases: Iterable[Case]) -> dict[str, dict[str, str]]:
    """Dataset name (escaped) -> {label id as text: name} of cases whose ids mean one thing
    per dataset; cases numbered per case are left out."""
    maps: dict[str, dict[str, str]] = {}
    for case in cases:
        if case.labels_per_case:
            continue
        maps.setdefault(escape_name(case.dataset), {}).update(
            {str(i): escape_name(n) for i, n in case.labels}
        )
    return {d: dict(sorted(m.items(), key=lambda kv: int(kv[0]))) for d, m in maps.items()}


def label_map_digest(maps: Mapping[str, Mapping[str, str]]) -> str:
    """sha256 of a source's label maps (canonical JSON)."""
    canonical = json.dumps(maps, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def describe_label_change(before: Mapping[str, str], now: Mapping[str, str]) -> str:
    """``3: 'liver' then, 'spleen' now; 5: new 'tumour'`` (the first few differences)."""
    parts = []
    for label_id in sorted(set(before) | set(now), key=int):
        old, new = before.get(label_id), now.get(label_id)
        if old == new:
            continue
        if old is None:
            parts.append(f"{label_id}: new {new!r}")
        elif new is None:
            parts.append(f"{label_id}: {old!r} gone")
        else:
            parts.append(f"{label_id}: {old!r} then, {new!r} now")
    shown = "; ".join(parts[:4])
    return shown + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


def label_map_changes(
    recorded_sources: Sequence[Mapping], cases: Sequence[Case]
) -> dict[tuple[str, str], str]:
    """(source spec, dataset) -> what changed in its label map since the dataset was built.

    Args:
        recorded_sources: the manifest's ``sources`` (``spec``, ``label_maps``; a manifest
            written before label maps were recorded has each dataset's ``labels`` under
            ``datasets``, compared for sources other than DICOM, whose SEG segments are numbered
            per case).
        cases: every case of the build's sources now.
    """
    by_source: dict[str, list[Case]] = {}
    for case in cases:
        by_source.setdefault(escape_name(case.source), []).append(case)
    changes: dict[tuple[str, str], str] = {}
    for entry in recorded_sources:
        if not isinstance(entry, Mapping) or entry.get("spec") not in by_source:
            continue  # a source no longer given: its cases are gone, said as such
        recorded = _recorded_maps(entry)
        now = label_maps_of(by_source[entry["spec"]])
        for dataset, before in recorded.items():
            if dataset not in now:
                continue
            before = {str(k): str(v) for k, v in before.items()}
            if before != now[dataset]:
                changes[(entry["spec"], dataset)] = describe_label_change(before, now[dataset])
    return changes


def _recorded_maps(entry: Mapping) -> dict[str, Mapping]:
    """Dataset -> recorded label map of one manifest source entry (see label_map_changes)."""
    maps = entry.get("label_maps")
    if isinstance(maps, Mapping):
        return {d: m for d, m in maps.items() if isinstance(m, Mapping)}
    datasets = entry.get("datasets")
    if entry.get("kind") == "dicom" or not isinstance(datasets, Mapping):
        return {}
    return {
        d: info["labels"]
        for d, info in datasets.items()
        if isinstance(info, Mapping) and isinstance(info.get("labels"), Mapping)
    }


def case_change(
    entry: Mapping,
    listed: int | None,
    fingerprint: tuple[str, str | None] | None,
) -> str | None:
    """Why a recorded case no longer holds what it was built from, or None.

    Args:
        entry: the case's entry in the manifest (``listed_images``, ``fingerprint``,
            ``content_sha256``; entries of older datasets may have none of them).
        listed: the images its listing shows now (None: not known).
        fingerprint: its (fingerprint, content digest or None) now; None: not computed.
    """
    before = entry.get("listed_images")
    if before is not None and listed is not None and before != listed:
        return f"{before} images then, {listed} now"
    if fingerprint is None:
        return None
    stamp, content = fingerprint
    if content is not None and entry.get("content_sha256"):
        same = content == entry["content_sha256"]
    elif entry.get("fingerprint"):
        same = stamp == entry["fingerprint"]
    else:
        return None
    return None if same else "its files or labels changed"
