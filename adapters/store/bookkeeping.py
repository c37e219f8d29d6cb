"""A build's bookkeeping in ``OUT/dataset.json``: the new manifest, the resume decision, shard
records and the final totals.

A build writes its manifest before any shard runs and after each shard finishes, so an
interrupted build can be resumed: a rerun over the same directory and settings keeps the shards
whose files are present with their recorded sha256. A directory holding a build of other sources
or settings is :class:`DatasetMismatch` (finished shards are never thrown away) unless the
caller owns it (medgrit's staging folder). Names from the sources are escaped wherever people or
other tools read them.
"""

from __future__ import annotations

import datetime as _dt
import socket
from pathlib import Path

from medgrit.adapters.store.manifest import (
    FORMAT_MARKER,
    MANIFEST,
    read_manifest,
    update_manifest,
)
from medgrit.adapters.store.parquet import sha256_file
from medgrit.core.cases import Source
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


def content_config(config: dict) -> dict:
    """The settings that decide table contents (not where they go or how fast)."""
    return {k: v for k, v in config.items() if k not in ("out", "workers")}


def _datasets_of(source: Source) -> dict:
    """Per dataset of a source: case count, modalities and label names known at discovery."""
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


def new_manifest(
    config: BuildConfig,
    sources: list[Source],
    plan: Plan,
    generator: dict,
    vocabulary: tuple[str, ...] = (),
) -> dict:
    """The manifest of a build that has not started: every shard pending. ``vocabulary`` (the
    build's label names, which every turn was read with) lets ``validate`` read them alike."""
    return {
        "format": FORMAT_MARKER,
        "schema_version": SCHEMA_VERSION,
        "medgrit_version": MEDGRIT_VERSION,
        "config": config.model_dump(mode="json"),
        "sources": [
            {
                "spec": escape_name(s.spec),
                "kind": s.kind,
                "dataset": escape_name(s.dataset),
                "modality": s.modality,
                "cases": len(s.cases),
                "datasets": _datasets_of(s),
            }
            for s in sources
        ],
        "generator": generator,
        "vocabulary": [escape_name(name) for name in vocabulary],
        "tables": sorted(TABLES),
        "shards": [
            {
                "id": shard,
                "cases": [
                    {
                        "source": escape_name(c.ref.source),
                        "case": escape_name(c.ref.case),
                        "case_id": c.case_id,
                        "split": c.split,
                        "quota": c.quota,
                    }
                    for c in cases
                ],
                "status": "pending",
            }
            for shard, cases in plan
        ],
        "created_at": now(),
        "host": socket.gethostname(),
    }


def _mismatch(previous: dict, manifest: dict, same_config: bool, shown: str) -> str:
    if not same_config:
        what = "the build settings differ from the ones it was built with"
    else:
        before = sum(len(s.get("cases") or []) for s in previous["shards"])
        now_ = sum(len(s["cases"]) for s in manifest["shards"])
        what = f"its sources changed since it was built ({before} cases then, {now_} now)"
    return (
        f"{shown} holds another build: {what}; nothing was changed. Restore the sources, "
        "build into a new folder, or replace it with `medgrit build ... --overwrite`"
    )


def resume_from(out: Path, manifest: dict, rebuild_if_changed: bool) -> None:
    """Fill ``manifest`` with what ``OUT`` already holds of the same build (finished shards,
    submitted batches), and write it.

    Raises:
        DatasetMismatch: ``OUT`` holds a build of other sources or settings and
            ``rebuild_if_changed`` is false.
        DiskFull: the manifest could not be written for want of space.
    """
    if (out / MANIFEST).is_file():
        previous = read_manifest(out)
        same_config = content_config(previous["config"]) == content_config(manifest["config"])
        same_plan = [(s["id"], s.get("cases")) for s in previous["shards"]] == [
            (s["id"], s["cases"]) for s in manifest["shards"]
        ]
        if same_config and same_plan:
            manifest["created_at"] = previous.get("created_at", manifest["created_at"])
            for entry, old in zip(manifest["shards"], previous["shards"], strict=True):
                if shard_done(out, old):
                    entry.update(old)
                elif old.get("batches"):
                    entry["batches"] = list(old["batches"])  # resumed, not resubmitted
        elif not rebuild_if_changed:
            raise DatasetMismatch(_mismatch(previous, manifest, same_config, escape_name(str(out))))
    try:
        save_manifest(out, manifest)
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
    save_manifest(out, manifest)
    return render_summary(
        escape_name(str(out)),
        rows,
        totals,
        len(done),
        len(manifest["shards"]),
        failed,
        llm=manifest["totals"]["llm"] if manifest["config"]["generator"] == "llm" else None,
    )
