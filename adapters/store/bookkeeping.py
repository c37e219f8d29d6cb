"""A build's bookkeeping: ``OUT/dataset.json``, the shards' completion records, the resume
decision and the final totals.

A build writes its manifest (the plan: every shard pending) once before any shard runs. Each
shard that finishes (or fails) writes only its own small completion record,
``OUT/shards/{id}.json`` (status, files with sha256, rows, stats, tokens), atomically: O(1) per
shard, whatever the size of the build. ``dataset.json`` is compacted from the records at the end
of a build and when a build or resume starts; :func:`read_dataset` reads the manifest with the
records merged, so ``status``, ``validate`` and resume see every finished shard even when a
build was killed between a record and the compaction. A record counts only for the shard, cases
and content settings it was written for (its ``key``). An interrupted build can be resumed: a
rerun over the same directory and settings keeps the shards whose files are present with their
recorded sha256. A directory holding a build of other sources
or settings is :class:`DatasetMismatch` (finished shards are never thrown away) unless the
caller owns it (medgrit's staging folder). Names from the sources are escaped wherever people or
other tools read them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
from pathlib import Path

from medgrit.adapters.store.dataset_dir import RECORDS_DIR, is_stale_temporary, temp_suffix
from medgrit.adapters.store.manifest import (
    FORMAT_MARKER,
    MANIFEST,
    ManifestError,
    check_shard_files,
    read_manifest,
    update_manifest,
)
from medgrit.adapters.store.parquet import sha256_file
from medgrit.core.cases import Source
from medgrit.core.changes import label_map_digest, label_maps_of
from medgrit.core.failures import StopRequested, is_disk_full
from medgrit.core.fsnames import escape_name
from medgrit.core.shard_rows import CaseTask
from medgrit.core.summary import merge_stats, render_summary
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.tables import SCHEMA_VERSION, TABLES

try:
    from importlib.metadata import version as _version

    MEDGRIT_VERSION = _version("medgrit")
except Exception:  # noqa: BLE001 - running from a source tree without metadata
    MEDGRIT_VERSION = "unknown"

Plan = list[tuple[str, list[CaseTask]]]


class BuildFailed(RuntimeError):
    """Some shards failed after their retries; the manifest says which."""


class DatasetMismatch(RuntimeError):
    """The dataset directory holds a build of other sources or settings: finishing it would
    replace its finished shards (a user error; ``--overwrite`` replaces a dataset)."""


class DiskFull(OSError):
    """The disk holding the dataset is full; the manifest keeps the shards that finished."""


def now() -> str:
    """The time the manifest records (UTC, seconds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def shard_done(out: Path, entry: dict) -> bool:
    """Whether a manifest entry's shard is done and its files hold what it recorded."""
    if entry.get("status") != "done":
        return False
    return all(
        (out / rel).is_file() and sha256_file(out / rel) == digest
        for rel, digest in entry.get("files", {}).items()
    )


def save_manifest(out: Path, manifest: dict) -> None:
    """Write the build's manifest, keeping batch ids that shard tasks recorded meanwhile."""

    def change(on_disk: dict) -> None:
        recorded = {s.get("id"): s.get("batches", []) for s in on_disk.get("shards", [])}
        for entry in manifest["shards"]:
            merged = list(
                dict.fromkeys([*entry.get("batches", []), *recorded.get(entry["id"], [])])
            )
            if merged:
                entry["batches"] = merged
        on_disk.clear()
        on_disk.update(manifest)

    update_manifest(out, change)


def llm_totals(shards: list[dict]) -> dict:
    """Requests, tokens and cost over all shards (what this build sent and spent)."""
    keys = ("requests", "cache_hits", "prompt", "completion", "cost_usd")
    totals = {k: 0 for k in keys}
    for shard in shards:
        for k in keys:
            totals[k] += shard.get("tokens", {}).get(k, 0)
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return totals


# Build settings that change how a build runs or what it compares, never what its tables hold:
# they may differ between the runs that build one dataset.
RUN_SETTINGS = ("out", "workers", "runner", "dask_address", "verify_sources", "rebuild_changed")


def content_config(config: dict) -> dict:
    """The settings that decide table contents (not where they go or how fast)."""
    return {k: v for k, v in config.items() if k not in RUN_SETTINGS}


# -- completion records ----------------------------------------------------------------------

_RECORD_FIELDS = (
    "status",
    "rows",
    "files",
    "stats",
    "tokens",
    "seconds",
    "finished_at",
    "error",
)


def _settings_digest(config: dict) -> str:
    canonical = json.dumps(content_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record_key(settings_digest: str, entry: dict) -> str:
    """What a completion record is valid for: the shard id, its cases and the build's content
    settings (``settings_digest`` of the manifest's config)."""
    canonical = json.dumps(
        [settings_digest, entry["id"], entry.get("cases")], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_shard_record(out: Path, manifest: dict, entry: dict) -> None:
    """Write a shard's completion record atomically (temp file, fsync, rename)."""
    folder = out / RECORDS_DIR
    folder.mkdir(exist_ok=True)
    record = {k: entry[k] for k in _RECORD_FIELDS if k in entry}
    record["id"] = entry["id"]
    record["key"] = record_key(_settings_digest(manifest["config"]), entry)
    path = folder / f"{entry['id']}.json"
    tmp = folder / f".{path.name}{temp_suffix()}"
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            json.dump(record, handle, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # unreadable: as if absent, the shard is built again
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k), str) for k in ("id", "status", "key")
    ):
        return None
    try:
        check_shard_files(record, str(path))
    except ManifestError:
        return None
    return record


def merge_records(out: Path, manifest: dict) -> int:
    """Merge the completion records in ``OUT/shards`` into ``manifest`` (in place); returns how
    many were merged. Records of other shards, cases or settings are ignored."""
    folder = out / RECORDS_DIR
    if not folder.is_dir():
        return 0
    digest = _settings_digest(manifest["config"])
    entries = {e["id"]: e for e in manifest["shards"]}
    merged = 0
    for path in sorted(folder.glob("*.json")):
        entry = entries.get(path.stem)
        if entry is None:
            continue
        record = _read_record(path)
        if record is None or record["key"] != record_key(digest, entry):
            continue
        for k in _RECORD_FIELDS:
            entry.pop(k, None)
        entry.update({k: record[k] for k in _RECORD_FIELDS if k in record})
        merged += 1
    return merged


def clear_records(out: Path, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Remove completion records (after a compaction wrote them into ``dataset.json``), and
    temporaries of writers that are gone; ``keep``: shard ids whose records stay."""
    folder = out / RECORDS_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        name = path.name
        if name.startswith("."):
            if is_stale_temporary(name):
                path.unlink(missing_ok=True)
        elif name.endswith(".json") and name[:-5] not in keep:
            path.unlink(missing_ok=True)


def compact(out: Path, manifest: dict) -> None:
    """Write ``dataset.json`` with every shard's state, then drop the records it now holds."""
    save_manifest(out, manifest)
    clear_records(out)


def read_dataset(out: str | Path) -> dict:
    """``dataset.json`` with the shards' completion records merged: the state of a dataset
    directory, also while a build runs or after one was killed.

    Raises:
        ManifestError: see ``medgrit.adapters.store.manifest.read_manifest``.
    """
    manifest = read_manifest(out)
    merge_records(Path(out), manifest)
    return manifest


def _datasets_of(source: Source) -> dict:
    """Per dataset of a source: case count, modalities and label names known at discovery
    (for people; ``label_maps`` beside it is what a later build compares)."""
    out: dict[str, dict] = {}
    for case in source.cases:
        entry = out.setdefault(
            escape_name(case.dataset), {"cases": 0, "modalities": [], "labels": {}}
        )
        entry["cases"] += 1
        if case.modality not in entry["modalities"]:
            entry["modalities"].append(case.modality)
        entry["labels"].update({str(i): n for i, n in case.labels})
    return out


def _source_entry(source: Source) -> dict:
    """A source as the manifest records it, with the label map of each of its datasets as its
    label files write it (and its sha256) and as the text words it (cases whose ids are
    numbered per case, as DICOM SEG segments are, keep their names in their fingerprints)."""
    maps = label_maps_of(source.cases)
    return {
        "spec": escape_name(source.spec),
        "kind": source.kind,
        "dataset": escape_name(source.dataset),
        "modality": source.modality,
        "cases": len(source.cases),
        "label_maps": maps,
        "label_map_sha256": label_map_digest(maps),
        "label_words": label_maps_of(source.cases, words=True),
        "datasets": _datasets_of(source),
    }


def new_manifest(
    config: BuildConfig,
    sources: list[Source],
    plan: Plan,
    generator: dict,
    vocabulary: tuple[str, ...] = (),
    appended: dict[str, tuple[int, tuple[str, ...]]] | None = None,
    retired: list[dict] | None = None,
) -> dict:
    """The manifest of a build that has not started: every shard pending. ``vocabulary`` (the
    build's label names, which every turn was read with) lets ``validate`` read them alike.
    ``appended``: shards that extend the dataset (``medgrit.core.sharding.extend_plan``), with
    their plan generation and the vocabulary they are read with, recorded in their entries.
    ``retired``: shards no longer part of the dataset (their cases changed and were planned
    again), ``{"id", "generation", "cases", "reason", "retired_at"}`` each, oldest first: their
    ids are never used again."""
    appended = appended or {}

    def shard_entry(shard: str, cases: list[CaseTask]) -> dict:
        entry: dict = {
            "id": shard,
            "cases": [
                {
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
                for c in cases
            ],
            "status": "pending",
        }
        if shard in appended:
            generation, words = appended[shard]
            entry["generation"] = generation
            entry["vocabulary"] = [escape_name(name) for name in words]
        return entry

    return {
        "format": FORMAT_MARKER,
        "schema_version": SCHEMA_VERSION,
        "medgrit_version": MEDGRIT_VERSION,
        "config": config.model_dump(mode="json"),
        "sources": [_source_entry(s) for s in sources],
        "generator": generator,
        "vocabulary": [escape_name(name) for name in vocabulary],
        "tables": sorted(TABLES),
        "shards": [shard_entry(shard, cases) for shard, cases in plan],
        **({"retired": retired} if retired else {}),
        "created_at": now(),
        "host": socket.gethostname(),
    }


def _case_keys(shards: list[dict]) -> set[tuple]:
    return {
        (c.get("source"), c.get("case"), c.get("case_id"))
        for s in shards
        for c in (s.get("cases") or [])
        if isinstance(c, dict)
    }


def mismatch_message(previous: dict, manifest: dict, same_config: bool, shown: str) -> str:
    """Why ``previous`` (OUT's build) cannot be finished as ``manifest``, and what to do."""
    hint = (
        "Restore the sources, build into a new folder, or replace it with "
        "`medgrit build ... --overwrite`"
    )
    if not same_config:
        what = "the build settings differ from the ones it was built with"
    else:
        before, now_ = _case_keys(previous["shards"]), _case_keys(manifest["shards"])
        gone, added = len(before - now_), len(now_ - before)
        what = f"its sources changed since it was built ({len(before)} cases then, {len(now_)} now"
        what += f": {gone} gone, {added} new)" if gone or added else ")"
        if added and not gone:
            hint = (
                "`medgrit build` with the same sources and settings adds the new cases as new "
                "shards; a resume only finishes what was planned"
            )
    return f"{shown} holds another build: {what}; nothing was changed. {hint}"


_PLAN_KEYS = ("source", "case", "case_id", "split", "quota")


def _plan_of(shard: dict) -> tuple:
    """What a shard entry plans: its id and, per case, what it builds and how (not what tells
    a changed case, which a dataset written before fingerprints were recorded lacks)."""
    cases = shard.get("cases")
    if not isinstance(cases, list):
        return (shard.get("id"), cases)
    return (
        shard.get("id"),
        [tuple(c.get(k) for k in _PLAN_KEYS) if isinstance(c, dict) else c for c in cases],
    )


def resume_from(out: Path, manifest: dict, rebuild_if_changed: bool, extends: bool = False) -> None:
    """Fill ``manifest`` with what ``OUT`` already holds of the same build (finished shards,
    submitted batches), and write it. ``extends``: ``manifest`` may hold OUT's plan followed
    by new shards (its sources gained cases); otherwise the plans must be equal.

    Raises:
        DatasetMismatch: ``OUT`` holds a build of other sources or settings and
            ``rebuild_if_changed`` is false.
        DiskFull: the manifest could not be written for want of space.
    """
    if (out / MANIFEST).is_file():
        previous = read_dataset(out)
        same_config = content_config(previous["config"]) == content_config(manifest["config"])
        # The same plan, or that plan with new shards after it (sources that gained cases),
        # less the shards the plan retires (their cases changed and are planned again).
        retired = {str(r.get("id")) for r in manifest.get("retired") or []}
        kept = [s for s in previous["shards"] if s["id"] not in retired]
        recorded = [_plan_of(s) for s in kept]
        planned = [_plan_of(s) for s in manifest["shards"]]
        same_plan = (planned[: len(recorded)] if extends else planned) == recorded
        if same_config and same_plan:
            manifest["created_at"] = previous.get("created_at", manifest["created_at"])
            for entry, old in zip(manifest["shards"], kept, strict=False):
                if shard_done(out, old):
                    # The same cases (same plan); what tells them changed is the build's own.
                    entry.update({k: v for k, v in old.items() if k != "cases"})
                elif old.get("batches"):
                    entry["batches"] = list(old["batches"])  # resumed, not resubmitted
        elif not rebuild_if_changed:
            raise DatasetMismatch(
                mismatch_message(previous, manifest, same_config, escape_name(str(out)))
            )
    try:
        compact(out, manifest)  # dataset.json now holds every record
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(exc.errno, exc.strerror, str(out / MANIFEST)) from exc
        raise


def shard_error(exc: BaseException) -> str:
    """What the manifest and the logs say of a failed shard: the error's class and message,
    escaped; for OSError its number and text only, never the path (DICOM file names may carry
    identifiers)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return escape_name(f"{type(exc).__name__}: {exc}")[:500]


def record_outcome(entry: dict, outcome: dict | BaseException) -> str:
    """Record a shard's outcome (its result, or what it raised) in its manifest entry.

    Returns:
        ``done``, ``failed``, or ``stopped`` (a stop request: it stays pending for the resume).
    """
    if isinstance(outcome, StopRequested):
        return "stopped"
    if isinstance(outcome, BaseException):
        entry.update(status="failed", error=shard_error(outcome))
        return "failed"
    entry.update(status="done", finished_at=now(), **outcome)
    entry.pop("error", None)
    return "done"


def finalise(out: Path, manifest: dict) -> str:
    """Totals, status and the time written to the manifest; returns the build summary."""
    done = [s for s in manifest["shards"] if s["status"] == "done"]
    rows = {t: sum(s["rows"][t] for s in done) for t in TABLES}
    totals = merge_stats([s["stats"] for s in done])
    failed = [s["id"] for s in manifest["shards"] if s["status"] == "failed"]
    manifest["totals"] = {"rows": rows, **totals}
    manifest["status"] = "complete" if len(done) == len(manifest["shards"]) else "incomplete"
    manifest["totals"]["llm"] = llm_totals(manifest["shards"])
    manifest["updated_at"] = now()
    compact(out, manifest)
    return render_summary(
        escape_name(str(out)),
        rows,
        totals,
        len(done),
        len(manifest["shards"]),
        failed,
        llm=manifest["totals"]["llm"] if manifest["config"]["generator"] == "llm" else None,
    )
