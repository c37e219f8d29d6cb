"""The book of a running build: its manifest in memory, each shard's outcome recorded as it
arrives, and the build's end.

:meth:`BuildBook.open` writes the plan to ``dataset.json`` (or takes up the one OUT holds:
``medgrit.adapters.store.bookkeeping.resume_manifest``); :meth:`BuildBook.record` keeps a finished
shard (an O(1) record file, whatever the build's size); :meth:`BuildBook.salvage` keeps what
finished when the build stops or breaks; :meth:`BuildBook.finish` writes the totals and says
how the build ended. Progress goes to ``medgrit.adapters.runtime.progress``: the images the
pending shards are planned to give (an estimate, unless ``--max-images`` set quotas), and each
recorded shard's counts settled (a failed shard's advances withdrawn).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from medgrit.adapters.planning import PreparedBuild
from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.interrupt import BuildInterrupted, request_stop, stop_requested
from medgrit.adapters.shard import ShardJob
from medgrit.adapters.store import bookkeeping
from medgrit.adapters.store.bookkeeping import (
    BuildFailed,
    DatasetMismatch,
    DiskFull,
    compact_manifest,
    finalise_manifest,
    mismatch_message,
    now,
    plan_manifest,
    resume_manifest,
    shard_error,
    write_record,
)
from medgrit.adapters.store.dataset_dir import RECORDS_DIR
from medgrit.adapters.store.manifest import CaseListFiles, write_plan_cases
from medgrit.adapters.store.parquet import ParquetShardWriter
from medgrit.core.failures import StopRequested, is_disk_full
from medgrit.core.fsnames import escape_name
from medgrit.core.shard_rows import CaseTask
from medgrit.core.sharding import CompactPlan
from medgrit.core.summary import qa_pairs
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import GeneratorEntry, Manifest, RetiredShard, ShardEntry

ProgressHook = Callable[[Manifest, "ShardEntry | None"], None]
"""``on_progress(manifest, entry)``: called with the manifest and None once the plan is known
(shards a resume found done are done in it), then with the entry of each shard recorded done or
failed."""

Logger = logging.Logger | logging.LoggerAdapter

COUNTERS = ("images", "qa_pairs", "rejects", "llm_requests", "spend_usd")
"""The progress counters of a build (``medgrit.adapters.runtime.progress``)."""


def _progress_counts(entry: ShardEntry) -> dict[str, float]:
    """What a done shard adds to each progress counter, as its entry records it."""
    counts = entry.counts()
    return {
        "images": counts.rows.get("images", 0),
        "qa_pairs": qa_pairs(counts.stats),
        "rejects": counts.rows.get("rejects", 0),
        "llm_requests": counts.tokens.get("requests") or 0,
        "spend_usd": counts.tokens.get("cost_usd") or 0,
    }


def shard_outcome(entry: ShardEntry, outcome: dict | BaseException) -> tuple[ShardEntry, str]:
    """A shard's entry with its outcome (its result: rows, files, stats, tokens, seconds; or
    what it raised) recorded.

    Returns:
        The entry, and ``done``, ``failed``, or ``stopped`` (a stop request: the entry stays
        as it was, pending for the resume).
    """
    if isinstance(outcome, StopRequested):
        return entry, "stopped"
    if isinstance(outcome, BaseException):
        return entry.evolve(status="failed", error=shard_error(outcome)), "failed"
    done = entry.evolve(drop=("error",), status="done", finished_at=now(), **outcome)
    return done, "done"


class BuildBook:
    """The manifest of one build in memory, and the records of its shards in OUT.

    ``plan`` is the manifest as the build took it up; ``entries`` each shard's entry as last
    recorded (a shard's record replaces its entry alone: O(1) per shard).
    """

    def __init__(
        self,
        out: Path,
        manifest: Manifest,
        prepared: PreparedBuild,
        logger: Logger,
        on_progress: ProgressHook | None = None,
    ) -> None:
        self.out, self.plan, self.prepared = out, manifest, prepared
        self.logger, self.on_progress = logger, on_progress
        self.shown = escape_name(str(out))
        self.entries: dict[str, ShardEntry] = {e.id: e for e in manifest.shards}
        self.plan_ids = [e.id for e in manifest.shards]
        self.vocabularies = prepared.vocabularies
        self.total = len(prepared.plan)
        self.finished = sum(1 for e in manifest.shards if e.status == "done")
        self.disk_full: OSError | None = None

    @property
    def manifest(self) -> Manifest:
        """The manifest with every shard as last recorded."""
        return self.plan.evolve(shards=[self.entries[e.id] for e in self.plan.shards])

    @classmethod
    def open(
        cls,
        config: BuildConfig,
        prepared: PreparedBuild,
        generator: GeneratorEntry,
        previous: Manifest | None,
        rebuild_if_changed: bool,
        append: bool,
        logger: Logger,
        on_progress: ProgressHook | None = None,
    ) -> BuildBook:
        """The book of a build of ``config`` planned as ``prepared``: the plan written to
        ``dataset.json``, or taken up from the one OUT holds (``previous``: the manifest of the
        same settings there, None for a fresh plan).

        Raises:
            DatasetMismatch: OUT holds another build (see ``resume_manifest``), or a resume
                (``append`` False) whose sources gained cases.
        """
        out = Path(config.out)
        vocabularies = prepared.vocabularies
        retired = [
            *((previous.retired or []) if previous is not None else []),
            *(RetiredShard.model_validate(shard.record(now())) for shard in prepared.retired),
        ]
        # A large plan's case lists are written now, shard by shard, and kept out of the
        # manifest (``medgrit.adapters.store.bookkeeping.INLINE_CASES``).
        lists = prepared.case_lists  # a resumed plan's, as OUT holds them
        if lists is None and planned_cases(prepared.plan) > bookkeeping.INLINE_CASES:
            try:
                lists = write_plan_cases(out, prepared.plan)
            except OSError as exc:  # files written before it are not named: removed later
                if is_disk_full(exc):
                    raise DiskFull(exc.errno, exc.strerror, escape_name(str(out))) from exc
                raise
        manifest = plan_manifest(
            config,
            prepared.sources,
            prepared.plan,
            generator,
            vocabularies.get(0, ()),
            {s: (g, vocabularies[g]) for s, g in prepared.generations.items() if g},
            retired,
            lists,
        )
        try:
            if prepared.new_cases and not append:  # a resume finishes the plan it was given
                shown = escape_name(str(out))
                before = previous if previous is not None else manifest.evolve(shards=[])
                raise DatasetMismatch(mismatch_message(before, manifest, True, shown, out))
            extends = previous is not None
            manifest = resume_manifest(out, manifest, rebuild_if_changed, extends)
        except DatasetMismatch:
            _remove_created(out, lists)  # OUT holds another build: left as it was
            raise
        book = cls(out, manifest, prepared, logger, on_progress)
        book._say_what_changed()
        book._remove_leftovers()
        return book

    def _say_what_changed(self) -> None:
        prepared, logger = self.prepared, self.logger
        if prepared.retired:
            logger.info(
                "%d shards retired (%s; first: %s): %d of their cases are built again as new "
                "shards",
                len(prepared.retired),
                ", ".join(r.id for r in prepared.retired[:5])
                + (", ..." if len(prepared.retired) > 5 else ""),
                prepared.retired[0].reason,
                prepared.rebuilt,
            )
        if prepared.new_cases:
            newest = max(self.vocabularies)
            added = sum(1 for g in prepared.generations.values() if g == newest)
            logger.info(
                "the sources gained %d cases since the dataset was built: %d new shards",
                prepared.new_cases,
                added,
            )

    def _remove_leftovers(self) -> None:
        """Temporary parts of an interrupted run, and parts no done shard lists."""
        writer = ParquetShardWriter(self.out)
        for leftover in writer.remove_temporaries():
            self.logger.info("removed %s left by an interrupted run", escape_name(leftover))
        listed = {
            rel for e in self.entries.values() if e.status == "done" for rel in (e.files or {})
        }
        for stale in writer.remove_parts_except(listed):
            self.logger.info(
                "removed %s of an earlier build with another config", escape_name(stale)
            )

    def pending_jobs(self, config: BuildConfig) -> list[ShardJob]:
        """The shards not yet done, as jobs run with ``config`` (the resolved one)."""
        prepared, plan = self.prepared, self.prepared.plan
        jobs = [
            ShardJob(
                shard,
                _tasks(plan, i),
                config,
                list(self.entries[shard].batches or []),
                self.vocabularies[prepared.generations.get(shard, 0)],
            )
            for i, shard in enumerate(self.plan_ids)
            if self.entries[shard].status != "done"
        ]
        self.logger.info(
            "%d shards planned, %d to build, %d already done",
            self.total,
            len(jobs),
            self.total - len(jobs),
        )
        self._expect(jobs)
        return jobs

    def _expect(self, jobs: list[ShardJob]) -> None:
        """Tell the progress display what the build will make: the images its plan gives the
        pending shards (their quotas, else their listings' estimates) and, for an LLM build, as
        many requests (one per image, before retries and cache hits), on top of what the
        shards done before hold, which count as done."""
        if not progress.active():
            return
        planned = sum(
            task.quota if task.quota is not None else (task.listed or 1)
            for job in jobs
            for task in job.cases
        )
        before = [e for e in self.entries.values() if e.status == "done"]
        done = {counter: sum(_progress_counts(e)[counter] for e in before) for counter in COUNTERS}
        earlier = f" ({len(before)} of {self.total} done before)" if before else ""
        shards = f"{len(jobs)} shard{'s' if len(jobs) != 1 else ''}"
        progress.phase(f"building {planned} images in {shards}{earlier}")
        llm = self.plan.config.get("generator") == "llm"
        for counter in COUNTERS:
            if counter == "images" or (llm and counter == "llm_requests"):
                progress.expect(counter, planned + done[counter], done[counter])
            else:
                progress.advance(counter, done[counter])

    def progress(self, shard: str | None = None) -> None:
        """Tell the progress hook; what it raises is logged, never the build's end."""
        if self.on_progress is None:
            return
        try:
            if shard is None:
                self.on_progress(self.manifest, None)
            else:
                self.on_progress(self.plan, self.entries[shard])
        except Exception as exc:  # noqa: BLE001 - a dashboard's trouble never ends a build
            self.logger.warning("progress not published: %s", escape_name(str(exc))[:200])

    def record(self, shard: str, outcome: dict | BaseException) -> None:
        """Keep a finished shard: in memory, then in its record file (a full disk stops the
        build once the running shards end), then the progress hook."""
        if not self._note(shard, outcome):
            return  # stopped: it stays as it was for the resume
        try:
            write_record(self.out, self.plan.config, self.entries[shard])
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.disk_full = self.disk_full or exc  # running shards finish or fail
            request_stop()
        self.progress(shard)

    def _note(self, shard: str, outcome: dict | BaseException) -> bool:
        """Record ``outcome`` in memory and log it; False when the shard was stopped."""
        entry, status = shard_outcome(self.entries[shard], outcome)
        self.entries[shard] = entry
        if status == "done":
            self.finished += 1
            rows = entry.rows or {}
            self.logger.info(
                "shard %s done (%d/%d): %d images, %d QA pairs, %d rejects in %.1f s",
                shard,
                self.finished,
                self.total,
                rows.get("images", 0),
                qa_pairs(entry.stats.to_json() if entry.stats is not None else {}),
                rows.get("rejects", 0),
                entry.seconds or 0.0,
            )
            for counter, total in _progress_counts(entry).items():
                progress.settle(counter, shard, total)
        elif status == "failed":
            progress.forget(shard)
            self.logger.error("shard %s failed: %s", shard, entry.error)
            if self.disk_full is None and isinstance(outcome, OSError) and is_disk_full(outcome):
                self.disk_full = outcome
                request_stop()  # the shards not yet started would only fail the same way
        return status != "stopped"

    def is_done(self, shard: str) -> bool:
        """Whether ``shard`` is recorded done (by this build or the one it resumes)."""
        return self.entries[shard].status == "done"

    def salvage(self, finished: Iterable[tuple[str, dict | BaseException]]) -> None:
        """After a stop (a signal) or a break: note the shards that ended meanwhile and write
        the manifest, so a resume does not redo them (the records already written stay valid
        when that write fails)."""
        for shard, outcome in finished:
            if self.entries[shard].status != "done":
                self._note(shard, outcome)
        self._compact()

    def _compact(self) -> None:
        try:
            compact_manifest(self.out, self.manifest)
        except OSError:
            pass  # the records and the last manifest written stay valid

    def finish(self, publish_summary: Callable[[str], None] | None = None) -> Manifest:
        """Write the totals and return the final manifest; or say how the build ended short.

        Raises:
            BuildInterrupted: a stop was requested (what finished is kept, without totals).
            DiskFull: the disk filled up (the last manifest that fitted stays).
            BuildFailed: shards failed after their retries (the others are kept).
        """
        if stop_requested() and self.disk_full is None:
            self._compact()  # what finished, without totals: never finalise a stop
            raise BuildInterrupted("the build was asked to stop")
        if self.disk_full is not None:
            try:
                finalise_manifest(self.out, self.manifest)
            except OSError:
                pass  # the last manifest that fitted stays; resume recomputes the rest
            full = self.disk_full
            raise DiskFull(full.errno or 28, full.strerror or "No space left", self.shown)
        manifest, summary = finalise_manifest(self.out, self.manifest)
        if publish_summary is not None:
            publish_summary(summary)
        failed = [s.id for s in manifest.shards if s.status == "failed"]
        if failed:
            raise BuildFailed(
                f"{len(failed)} shard(s) failed ({', '.join(failed)}); "
                f"run `medgrit resume {self.shown}` to retry them"
            )
        return manifest


def planned_cases(plan: Sequence[tuple[str, list[CaseTask]]]) -> int:
    """How many cases a plan holds (a compact plan counts them without making its tasks)."""
    if isinstance(plan, CompactPlan):
        return len(plan.case_ids)
    return sum(len(cases) for _, cases in plan)


def _tasks(plan: Sequence[tuple[str, list[CaseTask]]], shard: int) -> list[CaseTask]:
    """The tasks of shard number ``shard`` of ``plan``, to build it (fingerprints, which only
    the manifest records, are not taken again)."""
    if isinstance(plan, CompactPlan):
        return plan.tasks(shard, fingerprints=False)
    return plan[shard][1]


def _remove_created(out: Path, lists: CaseListFiles | None) -> None:
    """Remove the case-list files a refused build wrote (never those that were there)."""
    for name in lists.created if lists is not None else ():
        if name.startswith(f"{RECORDS_DIR}/"):
            (out / name).unlink(missing_ok=True)
