"""``dataset.json``: the manifest of a dataset directory and the single source of truth for resume.

Layout (schema version 1)::

    {"format": "medgrit-dataset", "schema_version": 1, "medgrit_version": ...,
     "config": {...BuildConfig...},
     "sources": [{"spec", "kind", "dataset", "modality", "cases": n,
                  "label_maps": {dataset: {id: name as written}}, "label_map_sha256",
                  "label_words": {dataset: {id: name as the text says it}},
                  "datasets": {name: {"cases", "modalities", "labels": {id: name}}}}],
     "generator": {"name", "template_hash", "templates": {file: sha256}, "model"?, ...},
     "tables": ["conversations", "images", "regions", "rejects"],
     "shards": [{"id", "cases": [{"source", "case", "case_id", "split", "quota",
                                  "listed_images"?, "fingerprint"?, "content_sha256"?,
                                  "labels_per_case"?}],
                 "status": "pending" | "done" | "failed", "error"?, "batches"?,
                 "generation"?, "vocabulary"?,
                 "rows": {table: n}, "files": {path: sha256}, "stats": {...},
                 "tokens": {...}, "seconds", "finished_at"}],
     "retired"?: [{"id", "generation", "cases": n, "reason", "retired_at"}],
     "totals": {"rows", ..., "llm": {...}}, "status": "complete" | "incomplete",
     "created_at", "updated_at", "host"}

While a build runs, each finished shard's state is its own completion record,
``shards/{id}.json``; ``dataset.json`` is compacted from those at the end of the build and when a
build or resume starts (``medgrit.adapters.store.bookkeeping.read_dataset`` merges them).

The build writes it through ``medgrit.adapters.store.bookkeeping`` (new manifest, resume
decision, shard records, totals). Wall-clock times and the host name live only here, never in
table rows. The file is strict JSON (no NaN or Infinity) and is replaced atomically on every
update. :func:`read_manifest` accepts only a manifest medgrit wrote (see
``medgrit.adapters.store.dataset_dir``) whose structure it can use; anything else is a
:class:`ManifestError` with a one-line message.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from medgrit.adapters.store.dataset_dir import (
    FORMAT_MARKER,
    KNOWN_SCHEMA_VERSIONS,
    MANIFEST,
    manifest_is_medgrit,
    temp_suffix,
)
from medgrit.core.fsnames import escape_name

__all__ = [
    "FORMAT_MARKER",
    "MANIFEST",
    "ManifestError",
    "check_shard_files",
    "read_manifest",
    "record_batch",
    "update_manifest",
    "write_manifest",
]


class ManifestError(Exception):
    """The directory has no manifest medgrit can use; the message is one line."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"not strict JSON: {name}")


def read_manifest(out_dir: str | Path) -> dict:
    """Load and check ``dataset.json`` of a dataset directory.

    Raises:
        ManifestError: when it is missing, unreadable, not strict JSON, not written by
            medgrit, of an unknown schema version, or without a usable shard list.
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
    shards = data.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("id"), str) and isinstance(s.get("status"), str)
        for s in shards
    ):
        raise ManifestError(f"{where}/{MANIFEST} has no valid 'shards' list (id and status each)")
    if not isinstance(data.get("config"), dict):
        raise ManifestError(f"{where}/{MANIFEST} has no build 'config' object")
    retired = data.get("retired", [])
    if not isinstance(retired, list) or not all(
        isinstance(r, dict)
        and isinstance(r.get("id"), str)
        and r["id"].isdigit()
        and isinstance(r.get("generation", 0), int)
        and not isinstance(r.get("generation", 0), bool)
        for r in retired
    ):
        raise ManifestError(
            f"{where}/{MANIFEST}: 'retired' is not a list of shards (a numeric id and a whole "
            "generation each)"
        )
    _check_sources(data.get("sources", []), f"{where}/{MANIFEST}")
    for shard in shards:
        check_shard_files(shard, f"{where}/{MANIFEST}")
        for key in ("rows", "stats", "tokens"):
            if key in shard and not isinstance(shard[key], dict):
                raise ManifestError(
                    f"{where}/{MANIFEST}: shard {shard['id']} '{key}' is not an object"
                )
    totals = data.get("totals")
    if totals is not None and not (
        isinstance(totals, dict)
        and all(isinstance(v, dict) for k, v in totals.items() if k != "non_finite_values")
    ):
        raise ManifestError(f"{where}/{MANIFEST}: 'totals' is not an object of objects")
    return data


_TABLES = ("images", "regions", "conversations", "rejects")


def _is_label_maps(maps: object) -> bool:
    return isinstance(maps, dict) and all(
        isinstance(m, dict) and all(isinstance(k, str) and k.isdigit() for k in m)
        for m in maps.values()
    )


def _check_sources(sources: object, where: str) -> None:
    """The recorded sources must be what a later build compares its sources with."""
    if not isinstance(sources, list) or not all(
        isinstance(s, dict) and isinstance(s.get("spec"), str) for s in sources
    ):
        raise ManifestError(f"{where}: 'sources' is not a list of sources (a spec each)")
    for source in sources:
        for key in ("label_maps", "label_words"):
            if key in source and not _is_label_maps(source[key]):
                raise ManifestError(
                    f"{where}: source {escape_name(source['spec'])} has a '{key}' that is not "
                    "{dataset: {label id: name}}"
                )


def check_shard_files(shard: dict, where: str) -> None:
    """A shard's files (in its manifest entry or completion record) must be
    ``{table}/part-{id}.parquet``: never a path that leaves the
    dataset directory (absolute, ``..``) or names another file."""
    files = shard.get("files", {})
    if not isinstance(files, dict):
        raise ManifestError(f"{where}: shard {shard['id']} 'files' must map path -> sha256")
    allowed = {f"{table}/part-{shard['id']}.parquet" for table in _TABLES}
    for rel in files:
        if rel not in allowed:
            raise ManifestError(
                f"{where}: shard {shard['id']} names the file {escape_name(str(rel))!r}; "
                f"its parts are {{table}}/part-{shard['id']}.parquet inside the dataset"
            )


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    """Write ``dataset.json`` atomically (temp file, fsync, rename) as strict JSON.

    Raises:
        ValueError: a value is NaN or infinite (a bug: no such value may reach the file).
    """
    path = Path(out_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}{temp_suffix()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=False, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_LOCK = threading.Lock()


def update_manifest(out_dir: str | Path, change: Callable[[dict], None]) -> dict:
    """Read, change and write ``dataset.json`` as one step.

    Shard tasks (threads) and the flow both record things here (batch ids, shard results);
    a thread lock and an ``flock`` on ``.dataset.json.lock`` keep their updates from crossing.
    A missing manifest starts as an empty object.
    """
    out = Path(out_dir)
    with _LOCK, (out / f".{MANIFEST}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        manifest = read_manifest(out) if (out / MANIFEST).is_file() else {}
        change(manifest)
        write_manifest(out, manifest)
        return manifest


def record_batch(out_dir: str | Path, shard: str, batch_id: str) -> None:
    """Add an LLM batch id to a shard's entry, so a resumed build polls it, not resubmits."""

    def change(manifest: dict) -> None:
        for entry in manifest.get("shards", []):
            if entry.get("id") == shard:
                batches = entry.setdefault("batches", [])
                if batch_id not in batches:
                    batches.append(batch_id)

    update_manifest(out_dir, change)
