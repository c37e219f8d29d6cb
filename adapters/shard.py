"""One shard: the pure shard pipeline (``medgrit.core.pipeline``) with the real I/O passed in,
then the Parquet writer. What every mapper runs, in this process or on a worker.

Where a progress display listens (``medgrit.adapters.runtime.progress``: in the process of the
command line, so with threads, not on Dask workers) the shard advances its ``images``,
``rejects`` and ``qa_pairs`` as it makes them, under its shard id; the build settles each
shard's counts when it records the shard (``medgrit.adapters.book``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.adapters.sources import load_case
from medgrit.adapters.store.parquet import ParquetShardWriter
from medgrit.adapters.store.png import encode_png
from medgrit.adapters.text.generators import make_generator
from medgrit.core.cases import NO_VOCABULARY, Vocabulary
from medgrit.core.pipeline import CaseTask, ShardIO, add_conversations, build_image_rows
from medgrit.core.shard_rows import ShardRows
from medgrit.core.summary import shard_stats
from medgrit.schemas.config import BuildConfig

SHARD_IO = ShardIO(load=load_case, encode_png=encode_png, check_stop=check_stop)


@dataclass(frozen=True)
class ShardJob:
    """One shard to build: its id, its cases, the config, batches already submitted and the
    build's label vocabulary with its synonyms (``medgrit.core.pipeline.build_vocabulary``)."""

    shard: str
    cases: list[CaseTask]
    config: BuildConfig
    known_batches: list[str] = field(default_factory=list)
    vocabulary: Vocabulary = NO_VOCABULARY
    llm_share: int = 1  # worker processes sharing the LLM limits (see ``make_generator``)
    processes: int = 0  # > 1: built on a pool of this many processes of this machine


def run_one_shard(job: ShardJob) -> dict:
    """Build and write one shard, on this machine's pool of ``job.processes`` worker processes
    when that is more than one (``medgrit.adapters.runtime.processes``), else in this thread;
    returns its manifest entry (see :func:`build_one_shard`).

    An LLM build's shard makes only its image rows on the pool (reading, regions, PNG: CPU
    work), and its conversations in this thread: its requests go through this process's shared
    client and rate limiter, which the pool leaves the GIL to."""
    if job.processes > 1:
        from medgrit.adapters.runtime.processes import run_shard

        local = replace(job, processes=0)
        if job.config.generator == "llm":
            started = time.perf_counter()
            rows = run_shard(local, job.processes, images_only=True)
            return build_one_shard(local, rows, started)
        return run_shard(local, job.processes)
    return build_one_shard(job)


def _advance(shard: str, counter: str, amount: int) -> None:
    progress.advance(counter, amount, unit=shard)


def _io(shard: str) -> ShardIO:
    """The shard's I/O, telling a progress display what its rows gain where one listens."""
    return replace(SHARD_IO, counted=partial(_advance, shard)) if progress.active() else SHARD_IO


def shard_image_rows(job: ShardJob) -> ShardRows:
    """The rows of ``job`` before its conversations (``medgrit.core.pipeline.build_image_rows``),
    for :func:`build_one_shard` to finish."""
    progress.forget(job.shard)  # a retry: the attempt before it counts no more
    return build_image_rows(job.cases, job.config, _io(job.shard))


def build_one_shard(
    job: ShardJob, image_rows: ShardRows | None = None, started: float | None = None
) -> dict:
    """Build and write one shard; returns its manifest entry (files, row counts, stats, tokens,
    and the seconds it took, which live only in ``dataset.json``). ``image_rows``: the shard's
    rows before its conversations when they were made elsewhere (:func:`shard_image_rows`,
    from ``started``)."""
    started = time.perf_counter() if started is None else started
    generator = make_generator(
        job.config, job.shard, job.known_batches, job.vocabulary, llm_share=job.llm_share
    )
    rows = image_rows if image_rows is not None else shard_image_rows(job)
    add_conversations(rows, generator, _io(job.shard), job.vocabulary)
    tables = rows.as_tables()
    check_stop()
    written = ParquetShardWriter(Path(job.config.out)).write_shard(job.shard, tables)
    spend = getattr(generator, "spend", None)
    stats = shard_stats(tables)
    stats["non_finite_values"] = rows.non_finite
    return {
        "rows": {name: f.rows for name, f in written.items()},
        "files": {f.path: f.sha256 for f in written.values()},
        "stats": stats,
        "tokens": spend.as_dict() if spend else {"prompt": 0, "completion": 0},
        "seconds": round(time.perf_counter() - started, 3),
    }
