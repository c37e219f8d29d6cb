"""``dataset.json``: the manifest of a dataset directory and the single source of truth for resume.

Layout (schema version 1)::

    {"schema_version": 1, "medgrit_version": ..., "config": {...BuildConfig...},
     "sources": [{"spec", "kind", "dataset", "modality", "labels", "cases"}],
     "generator": {"name", "template_hash", "templates": {file: sha256}},
     "shards": [{"id", "cases": [{"source", "case", "split", "quota"}], "status",
                 "rows": {table: n}, "files": {path: sha256}, "tokens": {...},
                 "finished_at"}],
     "totals": {...}, "created_at", "updated_at", "host"}

Wall-clock times and the host name live only here, never in table rows. The file is replaced
atomically on every update.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

MANIFEST = "dataset.json"


class ManifestError(Exception):
    """The directory has no readable manifest."""


def read_manifest(out_dir: str | Path) -> dict:
    """Load ``dataset.json`` of a dataset directory.

    Raises:
        ManifestError: when it is missing or not valid JSON.
    """
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST} in {out_dir}: not a medgrit dataset directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc.msg}") from None


def write_manifest(out_dir: str | Path, manifest: dict) -> None:
    """Write ``dataset.json`` atomically (temp file, fsync, rename)."""
    path = Path(out_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=False)
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
