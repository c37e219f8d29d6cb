"""``dataset.json``: the manifest of a dataset directory and the single source of truth for resume.

Its layout (schema version 1) is the model :class:`medgrit.schemas.manifest.Manifest`: the
build's config, sources (with their label maps), generator, vocabulary, tables, one entry per
shard (its cases, status and, once it ran, rows, files with sha256, stats, tokens, seconds),
retired shards, totals, status, times and host. Every reader here parses the file into that
model and every writer writes one.

While a build runs, each finished shard's state is its own completion record,
``shards/{id}.json``, and each LLM batch a shard submits is added to ``shards/{id}-batches.json``
(:func:`record_batch`); ``dataset.json`` is compacted from those at the end of the build and when
a build or resume starts (``medgrit.adapters.store.bookkeeping.load_dataset`` merges them).

A large plan keeps its shards' case lists out of ``dataset.json``, in ``shards/cases-*.json``
(:func:`write_case_lists`; the manifest's ``case_lists`` names them, oldest first, and each
shard's entry has its ``case_count`` and ``plan_sha256`` instead): the manifest then holds one
line per shard. Their names are their content's sha256, so a plan written again as it was reuses
them; files no manifest names are removed when the manifest is compacted.

The build writes it through ``medgrit.adapters.store.bookkeeping`` (new manifest, resume
decision, shard records, totals). Wall-clock times and the host name live only here, never in
table rows. The file is strict JSON (no NaN or Infinity) and is replaced atomically on every
update. :func:`load_manifest` accepts only a manifest medgrit wrote (see
``medgrit.adapters.store.dataset_dir``) whose structure it can use; anything else is a
:class:`ManifestError` with a one-line message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from medgrit.adapters.runtime.atomic import atomic_file
from medgrit.adapters.store.dataset_dir import (
    FORMAT_MARKER,
    KNOWN_SCHEMA_VERSIONS,
    MANIFEST,
    RECORDS_DIR,
    TABLE_DIRS,
    manifest_is_medgrit,
)
from medgrit.core.fsnames import escape_name
from medgrit.core.shard_rows import CaseTask
from medgrit.schemas.manifest import Manifest, ShardEntry

__all__ = [
    "CASE_LISTS_PREFIX",
    "FORMAT_MARKER",
    "MANIFEST",
    "CaseListFiles",
    "ManifestError",
    "case_json",
    "case_keys",
    "check_shard_files",
    "load_manifest",
    "manifest_lock",
    "plan_digest",
    "read_case_lists",
    "record_batch",
    "recorded_batches",
    "replace_manifest",
    "with_case_lists",
    "with_recorded_batches",
    "write_case_lists",
    "write_manifest",
    "write_plan_cases",
]

CASE_LISTS_PREFIX = "cases-"
"""Case-list files are ``shards/cases-{sha256[:16]}.json``."""
CASES_PER_LIST_FILE = 20_000
"""Cases per case-list file (about 4 MB): writers and readers hold one file's cases at a time."""
_BATCHES_SUFFIX = "-batches"
_CASE_LIST_NAME = re.compile(rf"{RECORDS_DIR}/{CASE_LISTS_PREFIX}[0-9a-f]{{16}}\.json")


class ManifestError(Exception):
    """The directory has no manifest medgrit can use; the message is one line."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"not strict JSON: {name}")


def load_manifest(out_dir: str | Path) -> Manifest:
    """Load and check ``dataset.json`` of a dataset directory.

    Raises:
        ManifestError: when it is missing, unreadable, not strict JSON, not written by
            medgrit, of an unknown schema version, not of the manifest's structure
            (:class:`~medgrit.schemas.manifest.Manifest`), or naming files outside the dataset.
    """
    where = escape_name(str(out_dir))
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST} in {where}: not a medgrit dataset directory")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}/{MANIFEST} is not valid JSON: {exc.msg}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{where}/{MANIFEST} is not valid JSON: {str(exc)[:200]}") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {where}/{MANIFEST}: {exc.strerror}") from None
    if not manifest_is_medgrit(data):
        raise ManifestError(
            f"{where}/{MANIFEST} is not a medgrit manifest (no {FORMAT_MARKER!r} marker); "
            "is this a source folder?"
        )
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in KNOWN_SCHEMA_VERSIONS:
        known = ", ".join(map(str, KNOWN_SCHEMA_VERSIONS))
        raise ManifestError(
            f"{where}/{MANIFEST} has schema_version {version!r}; this medgrit reads {known}"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_invalid(f"{where}/{MANIFEST}", data, exc)) from None
    for shard in manifest.shards:
        check_shard_files(shard.id, shard.files, f"{where}/{MANIFEST}")
    return manifest


# What each part of the manifest must be, as the one-line message of a part that is not.
_HINTS = {
    "shards": "has no valid 'shards' list (id and status each)",
    "config": "has no build 'config' object",
    "retired": "'retired' is not a list of shards (a numeric id and a whole generation each)",
    "sources": "'sources' is not a list of sources (a spec each)",
    "totals": "'totals' is not an object of objects",
}
_SHARD_PARTS = {
    "files": "'files' must map path -> sha256",
    "rows": "'rows' is not an object of counts",
    "stats": "'stats' is not an object of counts",
    "tokens": "'tokens' is not an object of counts",
}


def _invalid(where: str, data: dict, exc: ValidationError) -> str:
    """One line on the first part of ``data`` the manifest model refused: what that part must
    be, and where and why it is not."""
    error = exc.errors()[0]
    loc = error["loc"]
    place = ".".join(str(part) for part in loc)
    why = f"({escape_name(place)}: {escape_name(error['msg'])})"
    head = loc[0] if loc else None
    item = data.get(head) if isinstance(head, str) else None
    if head == "shards" and len(loc) > 2 and loc[2] in _SHARD_PARTS and isinstance(item, list):
        shard_id = escape_name(str(item[loc[1]].get("id")))  # type: ignore[index]
        return f"{where}: shard {shard_id} {_SHARD_PARTS[str(loc[2])]} {why}"
    if head == "sources" and len(loc) > 2 and loc[2] in ("label_maps", "label_words"):
        spec = escape_name(str(item[loc[1]].get("spec")))  # type: ignore[index]
        return (
            f"{where}: source {spec} has a '{loc[2]}' that is not "
            f"{{dataset: {{label id: name}}}} {why}"
        )
    hint = _HINTS.get(head) if isinstance(head, str) else None
    if hint is None:
        return f"{where} is not a manifest medgrit can use {why}"
    joiner = " " if hint.startswith("has ") else ": "
    return f"{where}{joiner}{hint} {why}"


def check_shard_files(shard_id: str, files: dict[str, str] | None, where: str) -> None:
    """A shard's files (in its manifest entry or completion record) must be
    ``{table}/part-{id}.parquet``: never a path that leaves the
    dataset directory (absolute, ``..``) or names another file."""
    allowed = {f"{table}/part-{shard_id}.parquet" for table in TABLE_DIRS}
    for rel in files or {}:
        if rel not in allowed:
            raise ManifestError(
                f"{where}: shard {escape_name(shard_id)} names the file "
                f"{escape_name(str(rel))!r}; its parts are {{table}}/part-{escape_name(shard_id)}"
                ".parquet inside the dataset"
            )


def write_manifest(out_dir: str | Path, manifest: Manifest) -> None:
    """Write ``dataset.json`` atomically (temp file, fsync, rename) as strict JSON: indented,
    or where ``case_lists`` holds the shards' cases, with one line per shard and no cases.

    Raises:
        ValueError: a value is NaN or infinite (a bug: no such value may reach the file).
    """
    path = Path(out_dir) / MANIFEST
    data = manifest.to_json()
    with atomic_file(path, "w") as handle:
        if manifest.case_lists is None:
            json.dump(data, handle, indent=2, sort_keys=False, allow_nan=False)
        else:
            handle.write(_lined(data))
        handle.write("\n")


def _lined(data: dict) -> str:
    """``data`` indented, its ``shards`` one compact line each, without their ``cases``."""
    shards = [{k: v for k, v in shard.items() if k != "cases"} for shard in data["shards"]]
    here = f"\x00shards {secrets.token_hex(16)}\x00"  # no value of the manifest holds it
    text = json.dumps({**data, "shards": here}, indent=2, allow_nan=False)
    lines = ",\n".join(
        "    " + json.dumps(shard, separators=(",", ":"), allow_nan=False) for shard in shards
    )
    return text.replace(json.dumps(here), f"[\n{lines}\n  ]" if shards else "[]", 1)


_LOCK = threading.Lock()


@contextmanager
def manifest_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold the manifest's lock: a thread lock and an ``flock`` on ``.dataset.json.lock``, so
    that shard tasks (threads, processes) and the flow recording things do not cross."""
    with _LOCK, (Path(out_dir) / f".{MANIFEST}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def replace_manifest(
    out_dir: str | Path,
    change: Callable[[Manifest | None], Manifest],
    then: Callable[[Manifest], None] | None = None,
) -> Manifest:
    """Read ``dataset.json``, write what ``change`` makes of it, as one step (under
    :func:`manifest_lock`); returns that. ``change`` gets None when there is no manifest yet;
    ``then`` is called with what was written, still under the lock.
    """
    out = Path(out_dir)
    with manifest_lock(out):
        manifest = change(load_manifest(out) if (out / MANIFEST).is_file() else None)
        write_manifest(out, manifest)
        if then is not None:
            then(manifest)
        return manifest


def record_batch(out_dir: str | Path, shard: str, batch_id: str) -> None:
    """Add an LLM batch id to a shard's ``shards/{id}-batches.json``, so a resumed build polls
    it, not resubmits; the manifest takes it in when it is compacted. O(1) in the build's size.
    """
    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        raise ManifestError(f"no {MANIFEST} in {escape_name(str(out_dir))} to record in")
    folder = out / RECORDS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{shard}{_BATCHES_SUFFIX}.json"
    with manifest_lock(out):
        known = _read_batches(path)
        if batch_id not in known:
            with atomic_file(path, "w") as handle:
                json.dump([*known, batch_id], handle)


def _read_batches(path: Path) -> list[str]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return []
    return [b for b in found if isinstance(b, str)] if isinstance(found, list) else []


def recorded_batches(out_dir: str | Path) -> dict[str, list[str]]:
    """The batch ids :func:`record_batch` recorded since the manifest was last compacted, by
    shard id."""
    folder = Path(out_dir) / RECORDS_DIR
    if not folder.is_dir():
        return {}
    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob(f"*{_BATCHES_SUFFIX}.json")):
        batches = _read_batches(path)
        if batches:
            found[path.name[: -len(f"{_BATCHES_SUFFIX}.json")]] = batches
    return found


def with_recorded_batches(
    out: str | Path, manifest: Manifest, on_disk: Manifest | None
) -> Manifest:
    """``manifest`` with the batch ids OUT holds for its shards (in ``on_disk``, the manifest
    there, and in the batch files of :func:`record_batch`)."""
    recorded = {s.id: s.batches for s in on_disk.shards if s.batches} if on_disk else {}
    for shard, batches in recorded_batches(out).items():
        recorded[shard] = [*recorded.get(shard, []), *batches]
    if not recorded:
        return manifest
    entries = []
    for entry in manifest.shards:
        merged = list(dict.fromkeys([*(entry.batches or []), *recorded.get(entry.id, [])]))
        if merged and merged != entry.batches:
            entry = entry.evolve(batches=merged)
        entries.append(entry)
    return manifest.evolve(shards=entries)


# -- case lists of large plans ---------------------------------------------------------------


def plan_digest(cases: Iterable[dict]) -> str:
    """sha256 of what a shard plans, case by case (source, case, id, split, quota: not what
    tells a changed case), from its cases' manifest entries (JSON)."""
    planned = [[c["source"], c["case"], c["case_id"], c["split"], c["quota"]] for c in cases]
    canonical = json.dumps(planned, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass
class CaseListFiles:
    """The case lists of a plan as written (:func:`write_case_lists`): the files' names
    (relative to the dataset), each shard's ``(id, case count, plan digest)``, and the files
    this write created (the others were there, with the same content)."""

    names: list[str] = field(default_factory=list)
    shards: list[tuple[str, int, str]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)


def write_case_lists(
    out_dir: str | Path,
    shards: Iterable[tuple[str, list[dict]]],
    per_file: int = CASES_PER_LIST_FILE,
) -> CaseListFiles:
    """Write the shards' case lists (each case its manifest entry, JSON) to ``shards/cases-*
    .json`` as they come, about ``per_file`` cases a file: memory holds one file's cases."""
    out = Path(out_dir)
    (out / RECORDS_DIR).mkdir(parents=True, exist_ok=True)
    written = CaseListFiles()
    batch: list[dict] = []
    held = 0
    for shard, cases in shards:
        batch.append({"id": shard, "cases": cases})
        written.shards.append((shard, len(cases), plan_digest(cases)))
        held += len(cases)
        if held >= per_file:
            _write_case_list(out, batch, written)
            batch, held = [], 0
    if batch:
        _write_case_list(out, batch, written)
    return written


def _write_case_list(out: Path, batch: list[dict], written: CaseListFiles) -> None:
    data = json.dumps({"shards": batch}, separators=(",", ":"), allow_nan=False).encode()
    name = f"{RECORDS_DIR}/{CASE_LISTS_PREFIX}{hashlib.sha256(data).hexdigest()[:16]}.json"
    path = out / name
    if not (path.is_file() and path.stat().st_size == len(data)):
        with atomic_file(path, "wb") as handle:
            handle.write(data)
        written.created.append(name)
    written.names.append(name)


def read_case_lists(out_dir: str | Path, names: Iterable[str]) -> Iterator[tuple[str, list]]:
    """``(shard id, its cases' entries)`` from the case-list files ``names``, in order, one
    file in memory at a time.

    Raises:
        ManifestError: a file is missing, unreadable or not a case list.
    """
    out = Path(out_dir)
    for name in names:
        where = escape_name(f"{out}/{name}")
        if _CASE_LIST_NAME.fullmatch(name) is None:
            raise ManifestError(f"{where}: case lists are {RECORDS_DIR}/{CASE_LISTS_PREFIX}*.json")
        try:
            data = json.loads((out / name).read_bytes(), parse_constant=_reject_constant)
            for shard in data["shards"]:
                yield str(shard["id"]), list(shard["cases"])
        except OSError as exc:
            raise ManifestError(f"cannot read {where}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ManifestError(f"{where} is not a case list of this dataset") from None


def with_case_lists(out: str | Path, manifest: Manifest) -> Manifest:
    """``manifest`` with each shard's cases read from its case lists (checked against the
    shard's ``case_count`` and ``plan_sha256``).

    Raises:
        ManifestError: a case list is missing, unreadable, or disagrees with the manifest.
    """
    out = Path(out)
    where = {e.id: i for i, e in enumerate(manifest.shards)}
    entries: list[ShardEntry | None] = [None] * len(manifest.shards)
    for shard, cases in read_case_lists(out, manifest.case_lists or ()):
        i = where.get(shard)
        if i is None:
            continue  # a retired shard
        entry = manifest.shards[i]
        if len(cases) != entry.case_count or plan_digest(cases) != entry.plan_sha256:
            raise ManifestError(
                f"{escape_name(str(out))}: the case list of shard {escape_name(shard)} does not "
                "hold the cases its dataset.json entry counts and digests"
            )
        try:
            entries[i] = entry.evolve(cases=cases)
        except ValueError as exc:
            raise ManifestError(
                f"{escape_name(str(out))}: shard {escape_name(shard)} has a case list medgrit "
                f"cannot use ({escape_name(str(exc).splitlines()[0])})"
            ) from None
    missing = [e.id for e, found in zip(manifest.shards, entries, strict=True) if found is None]
    if missing:
        raise ManifestError(
            f"{escape_name(str(out))}: no case list holds shard {escape_name(missing[0])} "
            f"({len(missing)} shards in all); the dataset is incomplete"
        )
    return manifest.evolve(shards=entries)


def case_keys(manifest: Manifest, out: str | Path | None = None) -> set[tuple[str, str, str]]:
    """``(source, case, case id)`` of every case of ``manifest``'s shards: listed in their
    entries, or read from the case lists in ``out`` that it names."""
    if manifest.case_lists is None or out is None or all(s.cases for s in manifest.shards):
        return {(c.source, c.case, c.case_id) for s in manifest.shards for c in s.cases}
    ids = {s.id for s in manifest.shards}
    return {
        (c["source"], c["case"], c["case_id"])
        for shard, cases in read_case_lists(out, manifest.case_lists)
        if shard in ids
        for c in cases
    }


def case_json(c: CaseTask) -> dict:
    """A planned case as its shard's entry records it (the JSON of its ``CaseEntry``)."""
    return {
        "source": escape_name(c.ref.source),
        "case": escape_name(c.ref.case),
        "case_id": c.case_id,
        "split": c.split,
        "quota": c.quota,
        **({} if c.listed is None else {"listed_images": c.listed}),
        **({} if c.fingerprint is None else {"fingerprint": c.fingerprint}),
        **({} if c.content is None else {"content_sha256": c.content}),
        **({"labels_per_case": True} if c.ref.labels_per_case else {}),
    }


def write_plan_cases(out: str | Path, plan: Iterable[tuple[str, list[CaseTask]]]) -> CaseListFiles:
    """Write the case lists of ``plan`` to OUT as its shards are read (a shard's tasks, with
    their fingerprints, are made then: ``medgrit.core.sharding.CompactPlan``), for
    ``medgrit.adapters.store.bookkeeping.plan_manifest``'s ``case_lists``."""
    return write_case_lists(out, ((shard, [case_json(c) for c in cases]) for shard, cases in plan))
