"""Prefect tasks of the build flow: thin wrappers over the adapters and pure logic.

One task per shard (never per slice or region). Only infrastructure failures (``OSError``: disk,
network file systems) are retried, and not a full disk, which waiting does not fix; record-level
problems are already reject rows.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from medgrit.adapters.pipeline import CaseTask, ShardBuilder, count_case_images
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.adapters.runtime.keys import load_or_create_key
from medgrit.adapters.sources import Source, open_sources
from medgrit.adapters.store.manifest import record_batch
from medgrit.adapters.store.parquet import ParquetShardWriter
from medgrit.adapters.synthetic.demo import default_demo_dir
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.failures import is_disk_full
from medgrit.core.generation import Generator
from medgrit.core.ids import pseudonymise_case
from medgrit.core.sharding import allocate_images, assign_splits, plan_shards, shard_name
from medgrit.core.summary import shard_stats
from medgrit.schemas.config import BuildConfig, LLMConfig


def _retry_on_os_error(task, task_run, state) -> bool:
    """Retry only infrastructure failures: an OSError from disk or a network file system,
    except a full disk (a retry fills it again)."""
    try:
        state.result()
    except OSError as exc:
        return not is_disk_full(exc)
    except Exception:  # noqa: BLE001 - anything else is a bug and must not be retried
        return False
    return False


@task(name="discover_sources", cache_policy=NO_CACHE)
def discover_sources(config: BuildConfig) -> list[Source]:
    """Open every source of the config and list its cases (reads metadata, not images)."""
    return open_sources(
        config.sources,
        demo_dir=default_demo_dir(),
        modality=config.modality,
        key=build_key(config),
    )


def build_key(config: BuildConfig) -> bytes:
    """The pseudonymisation key of a build (created on first use; never written to OUT)."""
    return load_or_create_key(Path(config.key_file) if config.key_file else None)


@task(name="plan_build", cache_policy=NO_CACHE)
def plan_build(sources: list[Source], config: BuildConfig) -> list[tuple[str, list[CaseTask]]]:
    """Case ids, splits, image quotas and shards, deterministic from the case list and config.

    With ``max_images`` the label maps of the first cases are read to spread the cap.
    """
    key = build_key(config)
    refs = [ref for source in sources for ref in source.cases]
    case_ids = [pseudonymise_case(ref.dataset, ref.case, key) for ref in refs]
    # Split by patient: all cases of one patient land on the same side.
    patients = [
        (ref.dataset, pseudonymise_case(ref.dataset, ref.patient or ref.case, key)) for ref in refs
    ]
    unique = sorted(set(patients))
    patient_split = dict(
        zip(
            unique,
            assign_splits(
                [p for _, p in unique],
                [d for d, _ in unique],
                config.test_fraction,
                config.split_seed,
            ),
            strict=True,
        )
    )
    splits = [patient_split[p] for p in patients]
    quotas: list[int | None] = [None] * len(refs)
    if config.max_images is not None:
        taken = allocate_images(
            (count_case_images(ref, config) for ref in refs), len(refs), config.max_images
        )
        quotas = [*taken, *([0] * (len(refs) - len(taken)))]
    cases = [
        CaseTask(ref, cid, split, quota)
        for ref, cid, split, quota in zip(refs, case_ids, splits, quotas, strict=True)
        if quota != 0
    ]
    return [
        (shard_name(i), cases[start:stop])
        for i, (start, stop) in enumerate(plan_shards(len(cases), config.cases_per_shard))
    ]


@task(
    name="build_shard",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_on_os_error,
)
def build_shard(
    shard: str, cases: list[CaseTask], config: BuildConfig, known_batches: list[str] | None = None
) -> dict:
    """Build and write one shard; returns its manifest entry (files, row counts, stats, tokens)."""
    generator = make_generator(config, shard, known_batches or [])
    rows = ShardBuilder(config, generator, check_stop=check_stop).build(cases)
    tables = rows.as_tables()
    check_stop()
    written = ParquetShardWriter(Path(config.out)).write_shard(shard, tables)
    spend = getattr(generator, "spend", None)
    stats = shard_stats(tables)
    stats["non_finite_values"] = rows.non_finite
    return {
        "rows": {name: f.rows for name, f in written.items()},
        "files": {f.path: f.sha256 for f in written.values()},
        "stats": stats,
        "tokens": spend.as_dict() if spend else {"prompt": 0, "completion": 0},
    }


def resolve_api_key(llm: LLMConfig) -> str:
    """The LLM API key: from a Prefect Secret block when named, else ``OPENAI_API_KEY``.

    Raises:
        LookupError: when neither holds a key.
    """
    if llm.api_key_block:
        from prefect.blocks.system import Secret

        return str(Secret.load(llm.api_key_block).get())
    key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise LookupError("no API key: set OPENAI_API_KEY or pass --llm-api-key-block NAME")
    return key


def make_generator(config: BuildConfig, shard: str, known_batches: list[str]) -> Generator:
    """The build's generator for one shard (templates, or an LLM endpoint)."""
    if config.generator == "template" or config.llm is None:
        return TemplateGenerator(seed=config.seed, max_region_turns=config.max_region_turns)
    from medgrit.adapters.llm.generator import LLMGenerator

    out = Path(config.out)
    return LLMGenerator(
        config.llm,
        resolve_api_key(config.llm),
        out / "llm" / "cache",
        max_region_turns=config.max_region_turns,
        known_batches=known_batches,
        on_batch=lambda batch_id: record_batch(out, shard, batch_id),
    )
