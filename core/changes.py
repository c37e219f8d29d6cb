"""What changed in a dataset's sources since it was built: label maps and cases.

A dataset is built from one label map per source, forever. Its manifest records, per source and
dataset, the label map as the source's label file writes it (``label_maps``: label id -> name,
normalised; :func:`label_maps_of`) and as medgrit words it in the text (``label_words``), and,
per planned case, what its listing showed (``listed_images``), a fingerprint of its files
(``fingerprint``) and, when asked for, a hash of their bytes (``content_sha256``). A later build,
resume or scheduled append compares them with the sources as they are now
(:func:`label_map_changes`, :func:`case_change`): a case is never kept beside cases built under
another meaning, or another wording, of its labels.

- A label renamed, removed or added changes a label map. An added label changes what existing
  masks say too: pixels of its id were rejected before, or read as the only label (a binary
  mask of a one-label image folder); and the names the build's texts are verified with change.
- The same names worded otherwise (a newer medgrit) change the wording: shards built before
  would say one id with other words than shards built now.

Cases whose label ids are numbered per case (DICOM SEG segments, RTSTRUCT ROIs:
``Case.labels_per_case``) carry their names in their fingerprint instead of a source-wide map.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from medgrit.core.cases import Case
from medgrit.core.fsnames import escape_name

__all__ = [
    "MISSING_PREFIX",
    "CaseChange",
    "LabelMapChange",
    "case_change",
    "describe_label_change",
    "label_map_changes",
    "label_map_digest",
    "label_maps_of",
]


def _by_id(item: tuple[str, object]) -> tuple[bool, int, str]:
    """Sort key of label ids as text (a hand-edited manifest may hold any text)."""
    text = str(item[0])
    return (not text.isdigit(), int(text) if text.isdigit() else 0, text)


def label_maps_of(cases: Iterable[Case], words: bool = False) -> dict[str, dict[str, str]]:
    """Dataset name (escaped) -> {label id as text: name} of cases whose ids mean one thing
    per dataset (cases numbered per case are left out): the names as written, or with
    ``words`` as the text says them. A region-based label's name as written is followed by the
    stored values whose union it is (``whole tumor [1, 2, 3]``), so a change of them is a
    change of the label map."""
    maps: dict[str, dict[str, str]] = {}
    seen: set[tuple[str, int]] = set()
    for case in cases:
        labels = case.labels if words else (case.written_labels or case.labels)
        if case.labels_per_case or (case.dataset, id(labels)) in seen:
            continue
        seen.add((case.dataset, id(labels)))
        groups = {} if words else dict(case.label_groups)
        maps.setdefault(escape_name(case.dataset), {}).update(
            {
                str(i): escape_name(n) + (f" {list(groups[i])}" if i in groups else "")
                for i, n in labels
            }
        )
    return {d: dict(sorted(m.items(), key=_by_id)) for d, m in maps.items()}


def label_map_digest(maps: Mapping[str, Mapping[str, str]]) -> str:
    """sha256 of a source's label maps (canonical JSON)."""
    canonical = json.dumps(maps, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def describe_label_change(before: Mapping[str, str], now: Mapping[str, str]) -> str:
    """``3: 'liver' then, 'spleen' now; 4: 'tumour' gone; 5: new 'cyst'`` (the first few
    differences), or "" when the maps are equal."""
    parts = []
    for label_id in sorted({**before, **now}, key=lambda k: _by_id((k, None))):
        old, new = before.get(label_id), now.get(label_id)
        if old is None:
            parts.append(f"{label_id}: new {new!r}")
        elif new is None:
            parts.append(f"{label_id}: {old!r} gone")
        elif new != old:
            parts.append(f"{label_id}: {old!r} then, {new!r} now")
    shown = "; ".join(parts[:4])
    return shown + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


@dataclass(frozen=True)
class LabelMapChange:
    """A dataset of a source whose labels mean, or read, otherwise than when it was built.

    Attributes:
        spec: the source (escaped spec); dataset: the dataset's name.
        renamed: the label file renamed or removed labels (else medgrit words them otherwise).
        what: the differences (:func:`describe_label_change`).
    """

    spec: str
    dataset: str
    renamed: bool
    what: str

    @property
    def reason(self) -> str:
        """Why its shards are retired, for ``dataset.json``."""
        if self.renamed:
            return "its source's label map changed"
        return "its labels are worded otherwise now"

    def __str__(self) -> str:
        if self.renamed:
            return f"the label map of {self.spec} ({self.dataset}) changed: {self.what}"
        return (
            f"medgrit words the labels of {self.spec} ({self.dataset}) otherwise than the "
            f"dataset's shards do: {self.what}"
        )


def _recorded(entry: Mapping, key: str) -> dict[str, Mapping]:
    maps = entry.get(key)
    if isinstance(maps, Mapping):
        return {d: m for d, m in maps.items() if isinstance(m, Mapping)}
    return {}


def _recorded_words(entry: Mapping) -> dict[str, Mapping]:
    """The wording a manifest source entry records: ``label_words``; a manifest written
    before label maps were recorded has each dataset's ``labels`` (for sources other than
    DICOM, whose SEG segments are numbered per case)."""
    if "label_words" in entry:
        return _recorded(entry, "label_words")
    datasets = entry.get("datasets")
    if entry.get("kind") == "dicom" or not isinstance(datasets, Mapping):
        return {}
    return {
        d: info["labels"]
        for d, info in datasets.items()
        if isinstance(info, Mapping) and isinstance(info.get("labels"), Mapping)
    }


def label_map_changes(
    recorded_sources: Sequence[Mapping], cases: Sequence[Case]
) -> dict[tuple[str, str], LabelMapChange]:
    """(source spec, dataset) -> how its labels changed since the dataset was built.

    Args:
        recorded_sources: the manifest's ``sources`` (``spec``, ``label_maps``,
            ``label_words``).
        cases: every case of the build's sources now.
    """
    by_source: dict[str, list[Case]] = {}
    for case in cases:
        by_source.setdefault(escape_name(case.source), []).append(case)
    changes: dict[tuple[str, str], LabelMapChange] = {}
    for entry in recorded_sources:
        if not isinstance(entry, Mapping) or entry.get("spec") not in by_source:
            continue  # a source no longer given: its cases are gone, said as such
        spec = str(entry["spec"])
        now = by_source[spec]
        # A manifest that records no label_words holds only the words of each label: a change
        # there is most likely a label renamed in the source.
        worded = "label_words" in entry
        for renamed, before_maps, now_maps in (
            (True, _recorded(entry, "label_maps"), label_maps_of(now)),
            (not worded, _recorded_words(entry), label_maps_of(now, words=True)),
        ):
            for dataset, before in before_maps.items():
                if dataset in now_maps and (spec, dataset) not in changes:
                    recorded = {str(k): str(v) for k, v in before.items()}
                    what = describe_label_change(recorded, now_maps[dataset])
                    if what:
                        changes[(spec, dataset)] = LabelMapChange(spec, dataset, renamed, what)
    return changes


# How a fingerprint starts when a file of its case could not be read (missing, unmounted).
MISSING_PREFIX = "missing-"


@dataclass(frozen=True)
class CaseChange:
    """Why a recorded case no longer holds what it was built from.

    ``unreadable``: a file of it cannot be read now, which a mount or a permission that comes
    back would undo; such a case is never rebuilt from what is readable of it.
    """

    why: str
    unreadable: bool = False


def _files_of(stamp: str) -> tuple[bool, int | None]:
    """(a file was unreadable, file count) of a recorded or current fingerprint."""
    missing = stamp.startswith(MISSING_PREFIX)
    count, sep, _ = stamp.removeprefix(MISSING_PREFIX).partition(":")
    return missing, int(count) if sep and count.isdigit() else None


def _lost_files(recorded: str, now: str) -> str | None:
    """Why a case lost files it was built from (unreadable now, or fewer listed), or None.
    A mount or a permission that comes back undoes it, so it is never rebuilt from."""
    if not recorded or not now:
        return None
    was_missing, was = _files_of(recorded)
    is_missing, count = _files_of(now)
    if is_missing and not was_missing:
        return "a file of it cannot be read now"
    if was is not None and count is not None and count < was:
        return f"{was} files then, {count} now"
    return None


def case_change(
    entry: Mapping,
    listed: int | None,
    fingerprint: tuple[str, str | None] | None,
) -> CaseChange | None:
    """How a recorded case changed since it was built, or None.

    Args:
        entry: the case's entry in the manifest (``listed_images``, ``fingerprint``,
            ``content_sha256``; entries of older datasets may have none of them).
        listed: the images its listing shows now (None: not known).
        fingerprint: its (fingerprint, content digest or None) now; None: not computed.
    """
    recorded = str(entry.get("fingerprint") or "")
    if fingerprint is not None:
        lost = _lost_files(recorded, fingerprint[0]) or _lost_files(
            str(entry.get("content_sha256") or ""), fingerprint[1] or ""
        )
        if lost:
            return CaseChange(lost, unreadable=True)
    before = entry.get("listed_images")
    if before is not None and listed is not None and str(before) != str(listed):
        return CaseChange(f"{before} images then, {listed} now")
    if fingerprint is None:
        return None
    stamp, content = fingerprint
    if content is not None and entry.get("content_sha256"):
        same = content == entry["content_sha256"]
    elif recorded:
        same = stamp == recorded
    else:
        return None
    return None if same else CaseChange("its files or labels changed")
