"""A build's bookkeeping: ``OUT/dataset.json``, the shards' completion records, the resume
decision and the final totals.

A build writes its manifest (the plan: every shard pending) once before any shard runs. Each
shard that finishes (or fails) writes only its own small completion record,
``OUT/shards/{id}.json`` (status, files with sha256, rows, stats, tokens), atomically: O(1) per
shard, whatever the size of the build. ``dataset.json`` is compacted from the records at the end
of a build and when a build or resume starts; :func:`load_dataset` reads the manifest with the
records merged, so ``status``, ``validate`` and resume see every finished shard even when a
build was killed between a record and the compaction. A record counts only for the shard, cases
and content settings it was written for (its ``key``). A plan of more than :data:`INLINE_CASES`
cases keeps its shards' case lists in ``shards/cases-*.json`` (``manifest.write_case_lists``).
An interrupted build can be resumed: a rerun over the same directory and settings keeps the
shards whose files are present with their recorded sha256. A directory holding a build of other
sources or settings is :class:`DatasetMismatch` (finished shards are never thrown away) unless the
caller owns it (medgrit's staging folder). Names from the sources are escaped wherever people or
other tools read them.

The manifest and the records are the models of ``medgrit.schemas.manifest``: every function
here, and every reader of a dataset, reads and writes them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import socket
from collections.abc import Sequence
from pathlib import Path

from medgrit.adapters.runtime.atomic import atomic_file, is_stale_temporary
from medgrit.adapters.store.dataset_dir import RECORDS_DIR
from medgrit.adapters.store.manifest import (
    CASE_LISTS_PREFIX,
    FORMAT_MARKER,
    MANIFEST,
    CaseListFiles,
    ManifestError,
    case_json,
    case_keys,
    check_shard_files,
    load_manifest,
    plan_digest,
    replace_manifest,
    with_case_lists,
    with_recorded_batches,
)
from medgrit.adapters.store.parquet import sha256_file
from medgrit.core.cases import NO_VOCABULARY, Case, Source, Vocabulary
from medgrit.core.changes import label_map_digest, label_maps_of
from medgrit.core.failures import is_disk_full
from medgrit.core.fsnames import escape_name
from medgrit.core.lexicon import VOCABULARY_VERSION
from medgrit.core.shard_rows import CaseTask
from medgrit.core.summary import render_summary
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import (
    OUTCOME_FIELDS,
    CaseEntry,
    DatasetEntry,
    GeneratorEntry,
    Manifest,
    RetiredShard,
    ShardEntry,
    ShardRecord,
    SourceEntry,
)
from medgrit.schemas.tables import SCHEMA_VERSION, TABLES

try:
    from importlib.metadata import version as _version

    MEDGRIT_VERSION = _version("medgrit")
except Exception:  # noqa: BLE001 - running from a source tree without metadata
    MEDGRIT_VERSION = "unknown"

Plan = Sequence[tuple[str, list[CaseTask]]]

INLINE_CASES = 50_000
"""A plan of more cases keeps its shards' case lists out of ``dataset.json`` (~250 bytes a
case there), which then stays small per shard however many cases each shard holds."""


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


def shard_is_done(out: Path, entry: ShardEntry) -> bool:
    """Whether a shard is done and its files hold what its entry recorded."""
    if entry.status != "done":
        return False
    return all(
        (out / rel).is_file() and sha256_file(out / rel) == digest
        for rel, digest in (entry.files or {}).items()
    )


def store_manifest(out: Path, manifest: Manifest) -> Manifest:
    """Write the build's manifest, keeping batch ids that shard tasks recorded meanwhile;
    returns what was written."""
    return replace_manifest(out, lambda on_disk: with_recorded_batches(out, manifest, on_disk))


# Build settings that change how a build runs or what it compares, never what its tables hold:
# they may differ between the runs that build one dataset.
RUN_SETTINGS = ("out", "workers", "runner", "dask_address", "verify_sources", "rebuild_changed")


def content_config(config: dict) -> dict:
    """The settings that decide table contents (not where they go or how fast)."""
    return {k: v for k, v in config.items() if k not in RUN_SETTINGS}


# -- completion records ----------------------------------------------------------------------


def _settings_digest(config: dict) -> str:
    canonical = json.dumps(content_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record_key(settings_digest: str, entry: ShardEntry) -> str:
    """What a completion record is valid for: the shard id, its cases (their digest, where the
    manifest keeps them in case lists) and the build's content settings (``settings_digest`` of
    the manifest's config)."""
    cases = entry.plan_sha256 or [c.to_json() for c in entry.cases]
    canonical = json.dumps(
        [settings_digest, entry.id, cases], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_record(out: Path, config: dict, entry: ShardEntry) -> None:
    """Write a shard's completion record atomically (temp file, fsync, rename); ``config``:
    the manifest's build config (what the record's key is of)."""
    folder = out / RECORDS_DIR
    folder.mkdir(exist_ok=True)
    record = ShardRecord.model_validate(
        {
            **{k: getattr(entry, k) for k in OUTCOME_FIELDS if k in entry.model_fields_set},
            "id": entry.id,
            "key": record_key(_settings_digest(config), entry),
        }
    ).to_json()
    path = folder / f"{entry.id}.json"
    with atomic_file(path, "w") as handle:
        json.dump(record, handle, allow_nan=False)


def _read_record(path: Path) -> ShardRecord | None:
    try:
        record = ShardRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
        check_shard_files(record.id, record.files, str(path))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, ManifestError):
        return None  # unreadable or not a record: as if absent, the shard is built again
    return record


def with_records(out: Path, manifest: Manifest) -> tuple[Manifest, int]:
    """``manifest`` with the completion records in ``OUT/shards`` merged, and how many were
    merged. Records of other shards, cases or settings are ignored."""
    folder = out / RECORDS_DIR
    if not folder.is_dir():
        return manifest, 0
    digest = _settings_digest(manifest.config)
    entries = list(manifest.shards)
    where = {e.id: i for i, e in enumerate(entries)}
    merged = 0
    for path in sorted(folder.glob("*.json")):
        index = where.get(path.stem)
        if index is None:
            continue
        record = _read_record(path)
        if record is None or record.key != record_key(digest, entries[index]):
            continue
        entries[index] = entries[index].with_outcome(record)
        merged += 1
    return (manifest.evolve(shards=entries) if merged else manifest), merged


def clear_records(
    out: Path, keep: frozenset[str] = frozenset(), case_lists: set[str] | None = None
) -> None:
    """Remove completion records and batch files (after a compaction wrote them into
    ``dataset.json``), and temporaries of writers that are gone; ``keep``: shard ids whose
    records stay. ``case_lists``: the case-list files the manifest names; others are removed
    (None: every case-list file stays)."""
    folder = out / RECORDS_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        name = path.name
        if name.startswith("."):
            if is_stale_temporary(name):
                path.unlink(missing_ok=True)
        elif name.startswith(CASE_LISTS_PREFIX):
            if case_lists is not None and f"{RECORDS_DIR}/{name}" not in case_lists:
                path.unlink(missing_ok=True)
        elif name.endswith(".json") and name[:-5] not in keep:
            path.unlink(missing_ok=True)


def compact_manifest(out: Path, manifest: Manifest) -> Manifest:
    """Write ``dataset.json`` with every shard's state, then drop the records (and batch
    files) it now holds, and case lists it no longer names; returns what was written."""
    return replace_manifest(
        out,
        lambda on_disk: with_recorded_batches(out, manifest, on_disk),
        lambda written: clear_records(out, case_lists=set(written.case_lists or ())),
    )


def load_dataset(out: str | Path, cases: bool = True) -> Manifest:
    """``dataset.json`` with the shards' completion records and batch ids merged: the state of
    a dataset directory, also while a build runs or after one was killed. ``cases``: with the
    cases of shards whose cases are in case lists (False: their count and digest only).

    Raises:
        ManifestError: see ``manifest.load_manifest`` and ``manifest.with_case_lists``.
    """
    out = Path(out)
    manifest = load_manifest(out)
    if cases and manifest.case_lists is not None:
        manifest = with_case_lists(out, manifest)
    return with_records(out, with_recorded_batches(out, manifest, None))[0]


def _source_entry(source: Source) -> SourceEntry:
    """A source as the manifest records it, with the label map of each of its datasets as its
    label files write it (and its sha256) and as the text words it (cases whose ids are
    numbered per case, as DICOM SEG segments are, keep their names in their fingerprints), and
    per dataset its case count, modalities and label names known at discovery (for people).

    One pass over the listing, in which a label object that cases share is read once: the
    label maps of one case per distinct set of label objects are the maps of all."""
    found: dict[str, dict] = {}
    entry_of: dict[str, tuple[dict, list]] = {}  # dataset -> its entry, labels last added
    firsts: dict[tuple, Case] = {}  # the first case of each set of label objects (kept alive)
    for case in source.cases:
        held = entry_of.get(case.dataset)
        if held is None:  # datasets whose names escape alike share one entry
            name = escape_name(case.dataset)
            same = [held for d, held in entry_of.items() if escape_name(d) == name]
            entry = found.setdefault(name, {"cases": 0, "modalities": [], "labels": {}})
            held = entry_of[case.dataset] = same[0] if same else (entry, [None])
        entry, added = held
        entry["cases"] += 1
        if case.modality not in entry["modalities"]:
            entry["modalities"].append(case.modality)
        if added[0] is not case.labels:  # adding the same names again changes nothing
            entry["labels"].update({str(i): n for i, n in case.labels})
            added[0] = case.labels
        labels = (case.labels, case.written_labels, case.label_groups)
        firsts.setdefault((type(case), case.dataset, *map(id, labels)), case)
    kept = list(firsts.values())
    maps = label_maps_of(kept)
    return SourceEntry(
        spec=escape_name(source.spec),
        kind=source.kind,
        dataset=escape_name(source.dataset),
        modality=source.modality,
        cases=len(source.cases),
        label_maps=maps,
        label_map_sha256=label_map_digest(maps),
        label_words=label_maps_of(kept, words=True),
        datasets={name: DatasetEntry.model_validate(e) for name, e in found.items()},
    )


def plan_manifest(
    config: BuildConfig,
    sources: list[Source],
    plan: Plan,
    generator: GeneratorEntry | None,
    vocabulary: Vocabulary = NO_VOCABULARY,
    appended: dict[str, tuple[int, Vocabulary]] | None = None,
    retired: list[RetiredShard] | None = None,
    case_lists: CaseListFiles | None = None,
) -> Manifest:
    """The manifest of a build that has not started: every shard pending. ``vocabulary`` (the
    build's label names and their synonyms, which every turn was read with) and the version of
    the packaged words let ``validate`` read them alike.
    ``appended``: shards that extend the dataset (``medgrit.core.plan_extension.extend_plan``), with
    their plan generation and the vocabulary they are read with, recorded in their entries.
    ``retired``: shards no longer part of the dataset (their cases changed and were planned
    again), oldest first: their ids are never used again. ``case_lists``: the case lists
    written (``manifest.write_plan_cases``): entries count and digest their cases instead."""
    appended = appended or {}

    def extra(shard: str) -> dict:
        if shard not in appended:
            return {}
        generation, words = appended[shard]
        return {"generation": generation, **_recorded_vocabulary(words)}

    if case_lists is None:
        shards = [
            ShardEntry(
                id=shard,
                cases=[CaseEntry.model_validate(case_json(c)) for c in cases],
                status="pending",
                **extra(shard),
            )
            for shard, cases in plan
        ]
    else:
        shards = [
            ShardEntry(id=shard, case_count=n, plan_sha256=digest, status="pending", **extra(shard))
            for shard, n, digest in case_lists.shards
        ]
    return Manifest(
        format=FORMAT_MARKER,
        schema_version=SCHEMA_VERSION,
        medgrit_version=MEDGRIT_VERSION,
        config=config.model_dump(mode="json"),
        sources=[_source_entry(s) for s in sources],
        **({"generator": generator} if generator is not None else {}),
        **_recorded_vocabulary(vocabulary),
        vocabulary_version=VOCABULARY_VERSION,
        tables=sorted(TABLES),
        **({"case_lists": case_lists.names} if case_lists is not None else {}),
        shards=shards,
        **({"retired": retired} if retired else {}),
        created_at=now(),
        host=socket.gethostname(),
    )


def _recorded_vocabulary(vocabulary: Vocabulary) -> dict:
    """A vocabulary as ``dataset.json`` records it: its names, and its synonyms per name
    (``medgrit.core.cases.Vocabulary.recorded`` reads them back), escaped."""
    return {
        "vocabulary": [escape_name(name) for name in vocabulary.names],
        "synonyms": {
            escape_name(label): [escape_name(word) for word in words]
            for label, words in vocabulary.synonyms_by_label().items()
        },
    }


def mismatch_message(
    previous: Manifest, manifest: Manifest, same_config: bool, shown: str, out: Path | None = None
) -> str:
    """Why ``previous`` (OUT's build) cannot be finished as ``manifest``, and what to do;
    ``out``: where the case lists of manifests that keep their cases there are."""
    hint = (
        "Restore the sources, build into a new folder, or replace it with "
        "`medgrit build ... --overwrite`"
    )
    if previous.schema_version != manifest.schema_version:
        what = (
            f"its tables follow schema version {previous.schema_version} and this medgrit "
            f"writes version {manifest.schema_version}, so its finished shards cannot be kept"
        )
        hint = "Build into a new folder, or rebuild it with `medgrit build ... --overwrite`"
    elif not same_config:
        what = "the build settings differ from the ones it was built with"
    else:
        before, now_ = case_keys(previous, out), case_keys(manifest, out)
        gone, added = len(before - now_), len(now_ - before)
        what = f"its sources changed since it was built ({len(before)} cases then, {len(now_)} now"
        what += f": {gone} gone, {added} new)" if gone or added else ")"
        if added and not gone:
            hint = (
                "`medgrit build` with the same sources and settings adds the new cases as new "
                "shards; a resume only finishes what was planned"
            )
    return f"{shown} holds another build: {what}; nothing was changed. {hint}"


_CASE_FIELDS = {"cases", "case_count", "plan_sha256"}
"""The fields of a shard's entry that say which cases it holds (its plan's own, not carried)."""


def _plan_of(shard: ShardEntry) -> tuple[str, str]:
    """What a shard entry plans: its id and the digest of what it builds and how, case by case
    (``medgrit.adapters.store.manifest.plan_digest``: not what tells a changed case, which a
    dataset written before fingerprints were recorded lacks)."""
    return (shard.id, shard.plan_sha256 or plan_digest(c.to_json() for c in shard.cases))


def resume_manifest(
    out: Path, manifest: Manifest, rebuild_if_changed: bool, extends: bool = False
) -> Manifest:
    """``manifest`` with what ``OUT`` already holds of the same build (finished shards,
    submitted batches), written; returns it. ``extends``: ``manifest`` may hold OUT's plan
    followed by new shards (its sources gained cases); otherwise the plans must be equal.

    Raises:
        DatasetMismatch: ``OUT`` holds a build of other sources or settings and
            ``rebuild_if_changed`` is false.
        DiskFull: the manifest could not be written for want of space.
    """
    if (out / MANIFEST).is_file():
        previous = load_dataset(out, cases=False)
        same_config = content_config(previous.config) == content_config(manifest.config)
        # The same plan, or that plan with new shards after it (sources that gained cases),
        # less the shards the plan retires (their cases changed and are planned again).
        retired = {r.id for r in manifest.retired or []}
        kept = [s for s in previous.shards if s.id not in retired]
        recorded = [_plan_of(s) for s in kept]
        planned = [_plan_of(s) for s in manifest.shards]
        same_plan = (planned[: len(recorded)] if extends else planned) == recorded
        # Shards of an older table schema cannot stand beside new ones: a dataset never holds
        # two layouts of one table.
        same_schema = previous.schema_version == manifest.schema_version
        if same_config and same_plan and same_schema:
            entries = list(manifest.shards)
            carried = False
            for i, old in enumerate(kept[: len(entries)]):
                if shard_is_done(out, old):
                    # The same cases (same plan); what tells them changed is the build's own.
                    given = {k: getattr(old, k) for k in old.model_fields_set - _CASE_FIELDS}
                    entries[i] = entries[i].evolve(**given)
                    carried = True
                elif old.batches:
                    entries[i] = entries[i].evolve(batches=list(old.batches))  # not resubmitted
            created = previous.created_at if "created_at" in previous.model_fields_set else None
            manifest = manifest.evolve(
                shards=entries, **({"created_at": created} if created is not None else {})
            )
            if carried:
                manifest = _with_version_of(previous, manifest)
        elif not rebuild_if_changed:
            raise DatasetMismatch(
                mismatch_message(previous, manifest, same_config, escape_name(str(out)), out)
            )
    try:
        return compact_manifest(out, manifest)  # dataset.json now holds every record
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(exc.errno, exc.strerror, str(out / MANIFEST)) from exc
        raise


def _with_version_of(previous: Manifest, manifest: Manifest) -> Manifest:
    """``manifest`` recording the vocabulary version of ``previous``, whose finished shards it
    keeps (they were read with that version's words; none recorded: it records none)."""
    version = previous.vocabulary_version
    if version == manifest.vocabulary_version:
        return manifest
    if version is None:
        return manifest.evolve(drop=("vocabulary_version",))
    return manifest.evolve(vocabulary_version=version)


def shard_error(exc: BaseException) -> str:
    """What the manifest and the logs say of a failed shard: the error's class and message,
    escaped; for OSError its number and text only, never the path (DICOM file names may carry
    identifiers)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return escape_name(f"{type(exc).__name__}: {exc}")[:500]


def finalise_manifest(out: Path, manifest: Manifest) -> tuple[Manifest, str]:
    """The manifest with its totals, status and time, written; and the build summary."""
    totals = manifest.totals_now()
    done = sum(s.status == "done" for s in manifest.shards)
    failed = [s.id for s in manifest.shards if s.status == "failed"]
    manifest = compact_manifest(
        out,
        manifest.evolve(
            totals=totals,
            status="complete" if done == len(manifest.shards) else "incomplete",
            updated_at=now(),
        ),
    )
    summary = render_summary(
        escape_name(str(out)),
        totals.rows,
        totals.to_json(),
        done,
        len(manifest.shards),
        failed,
        llm=totals.llm.to_json() if totals.llm and manifest.config["generator"] == "llm" else None,
    )
    return manifest, summary
