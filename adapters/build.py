"""A build, step by step: :func:`run_build`.

Each step lives in a module named for its job: probing the LLM endpoint
(``medgrit.adapters.llm.endpoint``), opening the sources and planning the shards
(``medgrit.adapters.planning``), one shard (``medgrit.adapters.shard``), how shards run
(``medgrit.adapters.runtime.mappers``; the build flow's Prefect task runners in
``medgrit.flows.build``) and the book of the running build (``medgrit.adapters.book``).
The Prefect flow and the plain runner both call :func:`run_build`; the mapper changes how shards
run, never what they hold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from medgrit.adapters.book import BuildBook, ProgressHook
from medgrit.adapters.llm.endpoint import resolve_llm_config
from medgrit.adapters.planning import (
    SourceListing,
    changed_sources_message,
    prepare_build,
    previous_build,
)
from medgrit.adapters.runtime.interrupt import (
    clear_stop,
    request_stop,
    signalled,
    stop_on_signals,
)
from medgrit.adapters.runtime.mappers import LoopMapper, ShardMapper, outcome_of
from medgrit.adapters.runtime.processes import close_shard_processes, local_processes
from medgrit.adapters.store.bookkeeping import DatasetMismatch
from medgrit.adapters.store.dataset_dir import hold_dataset
from medgrit.adapters.text.generators import generator_info
from medgrit.core.fsnames import escape_name
from medgrit.core.plan_extension import PlanConflict
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import GeneratorEntry


def run_build(
    config: BuildConfig,
    map_shards: ShardMapper | None = None,
    rebuild_if_changed: bool = False,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    publish_summary: Callable[[str], None] | None = None,
    on_progress: ProgressHook | None = None,
    append: bool = True,
    listing: SourceListing | None = None,
) -> dict:
    """Build (or resume) a Med-GRIT-style dataset directory from segmentation sources.

    Args:
        config: the build config.
        map_shards: how shards run (default: :class:`LoopMapper`, in this thread).
        rebuild_if_changed: when the directory holds a build whose config or plan differs,
            start afresh (for medgrit's own staging folders); by default that is
            ``DatasetMismatch``, so finished shards are never thrown away.
        logger: where progress goes (default: the ``medgrit.build`` logger).
        publish_summary: called with the summary of a build that finished.
        on_progress: called with the manifest and None once the plan is known, then with the
            entry of each shard recorded done or failed; what it raises is logged.
        append: when OUT holds a build of the same settings whose sources gained cases since,
            plan the new cases as new shards after its own; False (a resume): OUT's plan is
            finished as it is, and sources that gained cases are ``DatasetMismatch``.
        listing: the sources the checks before the build opened
            (``medgrit.adapters.planning.open_build_sources``), so they are listed once.

    Returns:
        The final manifest as the JSON written to ``OUT/dataset.json``.

    Raises:
        BuildFailed: when shards failed after their retries (the others are kept).
        DiskFull: when the disk holding the dataset filled up.
        DatasetBusy: when another process is writing the dataset.
        DatasetMismatch: see ``rebuild_if_changed`` and ``append``.
        BuildInterrupted: when a stop was requested (a signal); the manifest keeps what
            finished.
    """
    out = Path(config.out)
    logger = logger or logging.getLogger("medgrit.build")
    mapper = map_shards or LoopMapper()
    with _holding(out, llm=config.generator == "llm"):
        # Before the sources are scanned: an unreachable endpoint fails the build at once.
        resolved = resolve_llm_config(config, out)
        previous = None if rebuild_if_changed else previous_build(out, config)
        try:
            prepared = prepare_build(config, previous, listing)
        except PlanConflict as exc:
            raise DatasetMismatch(changed_sources_message(escape_name(str(out)), exc)) from None
        book = BuildBook.open(
            config,
            prepared,
            GeneratorEntry.model_validate(generator_info(resolved)),
            previous,
            rebuild_if_changed,
            append,
            logger,
            on_progress,
        )
        jobs = book.pending_jobs(resolved)
        # (one shard, or shards built one after another, gain nothing from a pool)
        looped = isinstance(mapper, LoopMapper)
        processes = 0 if looped else min(local_processes(config), len(jobs))
        if processes > 1:
            logger.info("shards run on %d worker processes of this machine", processes)
            jobs = [replace(job, processes=processes) for job in jobs]
        futures = {mapper.submit(job): job.shard for job in jobs}
        book.progress()
        try:
            for future in mapper.as_completed(list(futures)):
                book.record(futures[future], outcome_of(future))
        except BaseException:
            # Stopped (a signal) or broken: keep what finished, so a resume does not redo it.
            request_stop()
            mapper.close()
            ended = [(f, s) for f, s in futures.items() if f.done() and not book.is_done(s)]
            book.salvage((s, outcome_of(f)) for f, s in ended)
            raise
        mapper.close()
        return book.finish(publish_summary).to_json()


@contextmanager
def _holding(out: Path, llm: bool) -> Iterator[None]:
    """The dataset's writer lock and the signal handlers for the length of a build; a stop left
    by an earlier build of this process is cleared before, one this build asked for (a full
    disk, a failure) after; the build's worker processes and an LLM build's shared clients are
    closed at its end."""
    out.mkdir(parents=True, exist_ok=True)
    if not signalled():
        clear_stop()
    try:
        with hold_dataset(out), stop_on_signals():
            yield
    finally:
        close_shard_processes()
        if llm:
            from medgrit.adapters.llm.dispatch import close_shared_clients

            close_shared_clients()
        if not signalled():
            clear_stop()
