"""``dataset.json``: the manifest of a dataset directory and the single source of truth for resume.

Its layout (schema version 1) is the model :class:`medgrit.schemas.manifest.Manifest`: the
build's config, sources (with their label maps), generator, vocabulary, tables, one entry per
shard (its cases, status and, once it ran, rows, files with sha256, stats, tokens, seconds),
retired shards, totals, status, times and host. Every reader here parses the file into that
model and every writer writes one.

While a build runs, each finished shard's state is its own completion record,
``shards/{id}.json``; ``dataset.json`` is compacted from those at the end of the build and when a
build or resume starts (``medgrit.adapters.store.bookkeeping.load_dataset`` merges them).

The build writes it through ``medgrit.adapters.store.bookkeeping`` (new manifest, resume
decision, shard records, totals). Wall-clock times and the host name live only here, never in
table rows. The file is strict JSON (no NaN or Infinity) and is replaced atomically on every
update. :func:`load_manifest` accepts only a manifest medgrit wrote (see
``medgrit.adapters.store.dataset_dir``) whose structure it can use; anything else is a
:class:`ManifestError` with a one-line message.
"""

from __future__ import annotations

import fcntl
import json
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from medgrit.adapters.runtime.atomic import atomic_file
from medgrit.adapters.store.dataset_dir import (
    FORMAT_MARKER,
    KNOWN_SCHEMA_VERSIONS,
    MANIFEST,
    TABLE_DIRS,
    manifest_is_medgrit,
)
from medgrit.core.fsnames import escape_name
from medgrit.schemas.manifest import Manifest

__all__ = [
    "FORMAT_MARKER",
    "MANIFEST",
    "ManifestError",
    "check_shard_files",
    "load_manifest",
    "record_batch",
    "replace_manifest",
    "write_manifest",
]


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
    """Write ``dataset.json`` atomically (temp file, fsync, rename) as strict JSON.

    Raises:
        ValueError: a value is NaN or infinite (a bug: no such value may reach the file).
    """
    path = Path(out_dir) / MANIFEST
    with atomic_file(path, "w") as handle:
        json.dump(manifest.to_json(), handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")


_LOCK = threading.Lock()


def replace_manifest(
    out_dir: str | Path, change: Callable[[Manifest | None], Manifest]
) -> Manifest:
    """Read ``dataset.json``, write what ``change`` makes of it, as one step; returns that.

    Shard tasks (threads) and the flow both record things here (batch ids, shard results);
    a thread lock and an ``flock`` on ``.dataset.json.lock`` keep their updates from crossing.
    ``change`` gets None when there is no manifest yet.
    """
    out = Path(out_dir)
    with _LOCK, (out / f".{MANIFEST}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        manifest = change(load_manifest(out) if (out / MANIFEST).is_file() else None)
        write_manifest(out, manifest)
        return manifest


def record_batch(out_dir: str | Path, shard: str, batch_id: str) -> None:
    """Add an LLM batch id to a shard's entry, so a resumed build polls it, not resubmits."""

    def change(manifest: Manifest | None) -> Manifest:
        if manifest is None:
            raise ManifestError(f"no {MANIFEST} in {escape_name(str(out_dir))} to record in")
        entries = []
        for entry in manifest.shards:
            batches = entry.batches or []
            if entry.id == shard and batch_id not in batches:
                entry = entry.evolve(batches=[*batches, batch_id])
            entries.append(entry)
        return manifest.evolve(shards=entries)

    replace_manifest(out_dir, change)
