"""The build flow: sources -> shard plan -> one task per shard -> manifest and summary.

``build_dataset`` takes one :class:`BuildConfig`. It holds the dataset's writer lock for the
whole run (a second writer fails at once), writes ``dataset.json`` before any shard runs and after
each shard finishes, so an interrupted build can be resumed: a rerun over the same directory and
config skips the shards whose files are present with their recorded sha256. A full disk stops the
build with :class:`DiskFull` (the manifest keeps what finished; ``medgrit resume`` goes on).
Names from the sources are escaped wherever people or other tools read them (manifest, logs,
artifacts).
"""

from __future__ import annotations

from medgrit.flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()

import datetime as _dt  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.states import Failed  # noqa: E402

from medgrit.adapters.runtime.interrupt import (  # noqa: E402
    BuildInterrupted,
    clear_stop,
    request_stop,
    signalled,
    stop_on_signals,
    stop_requested,
)
from medgrit.adapters.store.dataset_dir import hold_dataset  # noqa: E402
from medgrit.adapters.store.manifest import (  # noqa: E402
    FORMAT_MARKER,
    MANIFEST,
    read_manifest,
    update_manifest,
)
from medgrit.adapters.store.parquet import ParquetShardWriter, sha256_file  # noqa: E402
from medgrit.adapters.text.templates import (  # noqa: E402
    TemplateGenerator,
    combined_hash,
    template_hashes,
)
from medgrit.core.failures import StopRequested, is_disk_full  # noqa: E402
from medgrit.core.fsnames import escape_name  # noqa: E402
from medgrit.core.summary import merge_stats, render_summary  # noqa: E402
from medgrit.schemas.config import BuildConfig  # noqa: E402
from medgrit.schemas.tables import SCHEMA_VERSION, TABLES  # noqa: E402
from medgrit.tasks.build import build_shard, discover_sources, plan_build  # noqa: E402

try:
    from importlib.metadata import version as _version

    MEDGRIT_VERSION = _version("medgrit")
except Exception:  # noqa: BLE001 - running from a source tree without metadata
    MEDGRIT_VERSION = "unknown"


class BuildFailed(RuntimeError):
    """Some shards failed after their retries; the manifest says which."""


class DatasetMismatch(RuntimeError):
    """The dataset directory holds a build of other sources or settings: finishing it would
    replace its finished shards (a user error; ``--overwrite`` replaces a dataset)."""


class DiskFull(OSError):
    """The disk holding the dataset is full; the manifest keeps the shards that finished."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _shard_done(out: Path, entry: dict) -> bool:
    if entry.get("status") != "done":
        return False
    return all(
        (out / rel).is_file() and sha256_file(out / rel) == digest
        for rel, digest in entry.get("files", {}).items()
    )


def _save(out: Path, manifest: dict) -> None:
    """Write the flow's manifest, keeping batch ids that shard tasks recorded meanwhile."""

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


def _llm_totals(shards: list[dict]) -> dict:
    """Requests, tokens and cost over all shards (what this build sent and spent)."""
    keys = ("requests", "cache_hits", "prompt", "completion", "cost_usd")
    totals = {k: 0 for k in keys}
    for shard in shards:
        for k in keys:
            totals[k] += shard.get("tokens", {}).get(k, 0)
    totals["cost_usd"] = round(totals["cost_usd"], 6)
    return totals


def _generator_info(config: BuildConfig) -> dict:
    """Generator name, template hashes and (for an LLM) model, for the manifest."""
    if config.generator == "llm" and config.llm is not None:
        from medgrit.adapters.llm.generator import PROMPT_FILES

        hashes = template_hashes(list(PROMPT_FILES))
        return {
            "name": "llm",
            "model": config.llm.model,
            "base_url": config.llm.base_url,
            "batch": config.llm.batch,
            "template_hash": combined_hash(hashes),
            "templates": hashes,
        }
    generator = TemplateGenerator(seed=config.seed, max_region_turns=config.max_region_turns)
    return {
        "name": generator.name,
        "template_hash": generator.template_hash,
        "templates": generator.template_hashes,
    }


def _content_config(config: dict) -> dict:
    """The settings that decide table contents (not where they go or how fast)."""
    return {k: v for k, v in config.items() if k not in ("out", "workers")}


def _datasets_of(source) -> dict:
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


def _new_manifest(config: BuildConfig, sources: list, plan: list, generator: dict) -> dict:
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
        "created_at": _now(),
        "host": socket.gethostname(),
    }


def shard_error(exc: BaseException) -> str:
    """What the manifest and the logs say of a failed shard: the error's class and message,
    escaped; for OSError its number and text only, never the path (DICOM file names may carry
    identifiers)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}"
    return escape_name(f"{type(exc).__name__}: {exc}")[:500]


def _mismatch(previous: dict, manifest: dict, same_config: bool, shown: str) -> str:
    if not same_config:
        what = "the build settings differ from the ones it was built with"
    else:
        before = sum(len(s.get("cases") or []) for s in previous["shards"])
        now = sum(len(s["cases"]) for s in manifest["shards"])
        what = f"its sources changed since it was built ({before} cases then, {now} now)"
    return (
        f"{shown} holds another build: {what}; nothing was changed. Restore the sources, "
        "build into a new folder, or replace it with `medgrit build ... --overwrite`"
    )


def _record(future, entry: dict, shard: str, finished: int, total: int, logger) -> int:
    """Record a finished shard task in its manifest entry; 1 when it is done, else 0."""
    try:
        result = future.result()
    except StopRequested:
        return 0  # stopped, not failed: it stays pending for the resume
    except Exception as exc:  # noqa: BLE001 - record it, keep the other shards
        message = shard_error(exc)
        entry.update(status="failed", error=message)
        logger.error("shard %s failed: %s", shard, message)
        return 0
    entry.update(status="done", finished_at=_now(), **result)
    entry.pop("error", None)
    logger.info(
        "shard %s done (%d/%d): %d images, %d rejects",
        shard,
        finished + 1,
        total,
        result["rows"]["images"],
        result["rows"]["rejects"],
    )
    return 1


def _disk_full_of(future) -> OSError | None:
    try:
        future.result()
    except OSError as exc:
        return exc if is_disk_full(exc) else None
    except Exception:  # noqa: BLE001 - only a full disk matters here
        return None
    return None


def _finalise(out: Path, manifest: dict) -> str:
    done = [s for s in manifest["shards"] if s["status"] == "done"]
    rows = {t: sum(s["rows"][t] for s in done) for t in TABLES}
    totals = merge_stats([s["stats"] for s in done])
    failed = [s["id"] for s in manifest["shards"] if s["status"] == "failed"]
    manifest["totals"] = {"rows": rows, **totals}
    manifest["status"] = "complete" if len(done) == len(manifest["shards"]) else "incomplete"
    manifest["totals"]["llm"] = _llm_totals(manifest["shards"])
    manifest["updated_at"] = _now()
    _save(out, manifest)
    return render_summary(
        escape_name(str(out)),
        rows,
        totals,
        len(done),
        len(manifest["shards"]),
        failed,
        llm=manifest["totals"]["llm"] if manifest["config"]["generator"] == "llm" else None,
    )


@flow(name="build_dataset", log_prints=False)
def build_dataset(config: BuildConfig, rebuild_if_changed: bool = False) -> dict:
    """Build (or resume) a Med-GRIT-style dataset directory from segmentation sources.

    Args:
        config: the build config.
        rebuild_if_changed: when the directory holds a build whose config or plan differs,
            start afresh (for medgrit's own staging folders); by default that is
            :class:`DatasetMismatch`, so finished shards are never thrown away.

    Returns:
        The final manifest (also written to ``OUT/dataset.json``).

    Raises:
        BuildFailed: when shards failed after their retries (the others are kept).
        DiskFull: when the disk holding the dataset filled up.
        DatasetBusy: when another process is writing the dataset.
        DatasetMismatch: see ``rebuild_if_changed``.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not signalled():
        clear_stop()  # a stop left by an earlier flow run of this process
    with hold_dataset(out), stop_on_signals():
        try:
            return _build_locked(config, out, rebuild_if_changed)
        except (BuildFailed, DiskFull, BuildInterrupted, DatasetMismatch) as exc:
            # An expected end, not a crash: the run is Failed with this message and no
            # traceback; calling the flow still raises ``exc``.
            return Failed(message=escape_name(str(exc)), data=exc)  # type: ignore[return-value]


def _build_locked(config: BuildConfig, out: Path, rebuild_if_changed: bool) -> dict:
    logger = get_run_logger()
    shown = escape_name(str(out))
    sources = discover_sources(config)
    plan = plan_build(sources, config)

    manifest = _new_manifest(config, sources, plan, _generator_info(config))
    if (out / MANIFEST).is_file():
        previous = read_manifest(out)
        same_config = _content_config(previous["config"]) == _content_config(manifest["config"])
        same_plan = [(s["id"], s.get("cases")) for s in previous["shards"]] == [
            (s["id"], s["cases"]) for s in manifest["shards"]
        ]
        if same_config and same_plan:
            manifest["created_at"] = previous.get("created_at", manifest["created_at"])
            for entry, old in zip(manifest["shards"], previous["shards"], strict=True):
                if _shard_done(out, old):
                    entry.update(old)
                elif old.get("batches"):
                    entry["batches"] = list(old["batches"])  # resumed, not resubmitted
        elif not rebuild_if_changed:
            raise DatasetMismatch(_mismatch(previous, manifest, same_config, shown))
    try:
        _save(out, manifest)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(exc.errno, exc.strerror, str(out / MANIFEST)) from exc
        raise
    writer = ParquetShardWriter(out)
    for leftover in writer.remove_temporaries():
        logger.info("removed %s left by an interrupted run", escape_name(leftover))
    listed = {rel for e in manifest["shards"] if e["status"] == "done" for rel in e["files"]}
    for stale in writer.remove_parts_except(listed):
        logger.info("removed %s of an earlier build with another config", escape_name(stale))

    pending = [
        (s, c) for (s, c), e in zip(plan, manifest["shards"], strict=True) if e["status"] != "done"
    ]
    total = len(plan)
    entries = {e["id"]: e for e in manifest["shards"]}
    logger.info(
        "%d shards planned, %d to build, %d already done", total, len(pending), total - len(pending)
    )
    futures = {
        build_shard.with_options(task_run_name=f"build_shard-{shard}").submit(
            shard, cases, config, entries[shard].get("batches", [])
        ): shard
        for shard, cases in pending
    }
    finished = total - len(pending)
    disk_full: OSError | None = None
    try:
        for future in as_completed(list(futures)):
            shard = futures[future]
            finished += _record(future, entries[shard], shard, finished, total, logger)
            if entries[shard]["status"] == "failed" and disk_full is None:
                disk_full = _disk_full_of(future)
                if disk_full is not None:
                    request_stop()  # the shards not yet started would only fail the same way
            manifest["updated_at"] = _now()
            try:
                _save(out, manifest)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                disk_full = disk_full or exc  # keep collecting: running shards finish or fail
                request_stop()
    except BaseException:
        # Stopped (a signal) or broken: keep what finished, so a resume does not redo it.
        request_stop()
        for future, shard in futures.items():
            if entries[shard]["status"] != "done" and future.state.is_completed():
                finished += _record(future, entries[shard], shard, finished, total, logger)
        try:
            _save(out, manifest)
        except OSError:
            pass  # the last manifest written stays valid
        raise

    if stop_requested() and disk_full is None:
        raise BuildInterrupted("the build was asked to stop")  # never finalise a stopped build
    if disk_full is not None:
        try:
            _finalise(out, manifest)
        except OSError:
            pass  # the last manifest that fitted stays; resume recomputes the rest
        raise DiskFull(disk_full.errno or 28, disk_full.strerror or "No space left", shown)
    summary = _finalise(out, manifest)
    create_markdown_artifact(
        key="medgrit-build-summary",
        markdown=escape_name(summary),
        description=f"medgrit build of {shown}",
    )
    failed = [s["id"] for s in manifest["shards"] if s["status"] == "failed"]
    if failed:
        raise BuildFailed(
            f"{len(failed)} shard(s) failed ({', '.join(failed)}); "
            f"run `medgrit resume {shown}` to retry them"
        )
    return manifest
