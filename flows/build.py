"""The build flow: sources -> shard plan -> one task per shard -> manifest and summary.

``build_dataset`` takes one :class:`BuildConfig`. It writes ``dataset.json`` before any shard
runs and after each shard finishes, so an interrupted build can be resumed: a rerun over the same
directory and config skips the shards whose files are present with their recorded sha256.
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

from medgrit.adapters.manifest import MANIFEST, read_manifest, update_manifest  # noqa: E402
from medgrit.adapters.parquet import ParquetShardWriter, sha256_file  # noqa: E402
from medgrit.adapters.templates import (  # noqa: E402
    TemplateGenerator,
    combined_hash,
    template_hashes,
)
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
        from medgrit.adapters.llm_generator import PROMPT_FILES

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
        entry = out.setdefault(case.dataset, {"cases": 0, "modalities": [], "labels": {}})
        entry["cases"] += 1
        if case.modality not in entry["modalities"]:
            entry["modalities"].append(case.modality)
        entry["labels"].update({str(i): n for i, n in case.labels})
    return out


def _new_manifest(config: BuildConfig, sources: list, plan: list, generator: dict) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "medgrit_version": MEDGRIT_VERSION,
        "config": config.model_dump(mode="json"),
        "sources": [
            {
                "spec": s.spec,
                "kind": s.kind,
                "dataset": s.dataset,
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
                        "source": c.ref.source,
                        "case": c.ref.case,
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
        str(out),
        rows,
        totals,
        len(done),
        len(manifest["shards"]),
        failed,
        llm=manifest["totals"]["llm"] if manifest["config"]["generator"] == "llm" else None,
    )


@flow(name="build_dataset", log_prints=False)
def build_dataset(config: BuildConfig) -> dict:
    """Build (or resume) a Med-GRIT-style dataset directory from segmentation sources.

    Returns:
        The final manifest (also written to ``OUT/dataset.json``).

    Raises:
        BuildFailed: when shards failed after their retries (the others are kept).
    """
    logger = get_run_logger()
    out = Path(config.out)
    sources = discover_sources(config)
    plan = plan_build(sources, config)
    out.mkdir(parents=True, exist_ok=True)

    manifest = _new_manifest(config, sources, plan, _generator_info(config))
    if (out / MANIFEST).is_file():
        previous = read_manifest(out)
        if _content_config(previous.get("config", {})) == _content_config(manifest["config"]) and [
            (s["id"], s["cases"]) for s in previous.get("shards", [])
        ] == [(s["id"], s["cases"]) for s in manifest["shards"]]:
            manifest["created_at"] = previous.get("created_at", manifest["created_at"])
            for entry, old in zip(manifest["shards"], previous["shards"], strict=True):
                if _shard_done(out, old):
                    entry.update(old)
                elif old.get("batches"):
                    entry["batches"] = list(old["batches"])  # resumed, not resubmitted
    _save(out, manifest)
    for leftover in ParquetShardWriter(out).remove_temporaries():
        logger.info("removed %s left by an interrupted run", leftover)

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
    for future in as_completed(list(futures)):
        shard = futures[future]
        entry = entries[shard]
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - record it, keep the other shards
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            logger.error("shard %s failed: %s", shard, entry["error"])
        else:
            entry.update(status="done", finished_at=_now(), **result)
            entry.pop("error", None)
            finished += 1
            logger.info(
                "shard %s done (%d/%d): %d images, %d rejects",
                shard,
                finished,
                total,
                result["rows"]["images"],
                result["rows"]["rejects"],
            )
        manifest["updated_at"] = _now()
        _save(out, manifest)

    summary = _finalise(out, manifest)
    create_markdown_artifact(
        key="medgrit-build-summary", markdown=summary, description=f"medgrit build of {out}"
    )
    failed = [s["id"] for s in manifest["shards"] if s["status"] == "failed"]
    if failed:
        raise BuildFailed(
            f"{len(failed)} shard(s) failed ({', '.join(failed)}); "
            f"run `medgrit resume {out}` to retry them"
        )
    return manifest
