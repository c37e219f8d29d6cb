"""A build in plain Python: preflight, plan, shards through any mapper, the manifest.

:func:`run_build` builds (or resumes) a dataset directory: it holds the dataset's writer lock,
opens the sources once (:func:`prepare_build`; the CLI's checks hand it the listing they made
with :func:`open_build_sources`), plans the shards
(pure, ``medgrit.core.sharding``), keeps the manifest (``medgrit.adapters.store.bookkeeping``) and
runs every pending shard through a :class:`ShardMapper`: :class:`LoopMapper` in-process, a thread
pool, or the Prefect flow's task runner (``medgrit.flows.build``). Each shard is
:func:`build_one_shard`: the pure shard pipeline (``medgrit.core.pipeline``) with the real I/O
passed in, then the Parquet writer. The mapper changes how shards run, never what they hold.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import as_completed as _futures_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medgrit.adapters.runtime.interrupt import (
    BuildInterrupted,
    check_stop,
    clear_stop,
    request_stop,
    signalled,
    stop_on_signals,
    stop_requested,
)
from medgrit.adapters.runtime.keys import load_or_create_key
from medgrit.adapters.sources import Source, estimate_images, load_case, open_sources
from medgrit.adapters.sources.fingerprints import fingerprint_cases
from medgrit.adapters.store.bookkeeping import (
    BuildFailed,
    DatasetMismatch,
    DiskFull,
    compact,
    finalise,
    mismatch_message,
    new_manifest,
    now,
    record_outcome,
    resume_from,
    write_shard_record,
)
from medgrit.adapters.store.dataset_dir import hold_dataset
from medgrit.adapters.store.manifest import record_batch
from medgrit.adapters.store.parquet import ParquetShardWriter
from medgrit.adapters.store.png import encode_png
from medgrit.adapters.synthetic.demo import default_demo_dir
from medgrit.adapters.text.templates import TemplateGenerator, combined_hash, template_hashes
from medgrit.core.cases import Case
from medgrit.core.failures import is_disk_full
from medgrit.core.fsnames import escape_name
from medgrit.core.generation import Generator
from medgrit.core.pipeline import (
    CaseTask,
    ShardIO,
    build_shard_rows,
    build_vocabulary,
    count_case_images,
)
from medgrit.core.sharding import (
    PlanConflict,
    RecordedPlan,
    RetiredShard,
    extend_plan,
    plan_build,
)
from medgrit.core.summary import shard_stats
from medgrit.schemas.config import BuildConfig, LLMConfig

SHARD_IO = ShardIO(load=load_case, encode_png=encode_png, check_stop=check_stop)

# -- preflight -------------------------------------------------------------------------------


def build_key(config: BuildConfig) -> bytes:
    """The pseudonymisation key of a build (created on first use; never written to OUT)."""
    return load_or_create_key(Path(config.key_file) if config.key_file else None)


# Sources the CLI's checks opened, handed to the build that follows in the same process.
_handed_over: dict[tuple, list[Source]] = {}
_handover_lock = threading.Lock()


def _listing_key(config: BuildConfig, key: bytes) -> tuple:
    return (tuple(config.sources), config.modality, key)


def open_build_sources(config: BuildConfig, key: bytes) -> list[Source]:
    """Open the sources of a build for the checks before it; the build that follows in this
    process takes this listing instead of opening them again (once: a later build, as a
    scheduled one in a long-lived worker, lists its sources afresh).

    Raises:
        SourceError: a source a user must fix.
    """
    sources = _open(config, key)
    with _handover_lock:
        _handed_over.clear()
        _handed_over[_listing_key(config, key)] = sources
    return sources


def _build_sources(config: BuildConfig, key: bytes) -> list[Source]:
    with _handover_lock:
        handed = _handed_over.pop(_listing_key(config, key), None)
        _handed_over.clear()  # whatever else was listed is for no build but this one
    return handed if handed is not None else _open(config, key)


def _open(config: BuildConfig, key: bytes) -> list[Source]:
    return open_sources(
        config.sources, demo_dir=default_demo_dir(), modality=config.modality, key=key
    )


@dataclass(frozen=True)
class PreparedBuild:
    """A build ready to run: its sources opened and its shards planned.

    ``generations``: each shard's plan generation (0 unless the plan extends a dataset whose
    sources gained or changed cases: ``medgrit.core.sharding.extend_plan``); ``new_cases``:
    the cases the sources gained; ``rebuilt``: cases planned again because they changed;
    ``retired``: the shards they were in; ``recorded_vocabularies``: the label vocabulary each
    recorded generation was read with (kept as recorded, whatever was retired since).
    """

    sources: list[Source]
    plan: list[tuple[str, list[CaseTask]]]
    generations: dict[str, int] = field(default_factory=dict)
    new_cases: int = 0
    rebuilt: int = 0
    retired: tuple[RetiredShard, ...] = ()
    recorded_vocabularies: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def vocabularies(self) -> dict[int, tuple[str, ...]]:
        """The label vocabulary of each generation: the names of the cases planned up to it
        (what the shards of that generation were, or will be, read with)."""
        by_generation: dict[int, list[CaseTask]] = {}
        for shard, cases in self.plan:
            by_generation.setdefault(self.generations.get(shard, 0), []).extend(cases)
        out: dict[int, tuple[str, ...]] = {}
        seen: list[CaseTask] = []
        for generation in sorted(by_generation):
            seen += by_generation[generation]
            out[generation] = self.recorded_vocabularies.get(generation) or build_vocabulary(seen)
        return out or {0: ()}


def _recorded_vocabularies(previous: dict) -> dict[int, tuple[str, ...]]:
    """The vocabulary of each generation a manifest records (generation 0: its top level)."""
    out: dict[int, tuple[str, ...]] = {}
    top = previous.get("vocabulary")
    if isinstance(top, list) and top:
        out[0] = tuple(str(w) for w in top)
    for entry in previous.get("shards") or []:
        words = entry.get("vocabulary")
        if isinstance(words, list) and entry.get("generation"):
            out.setdefault(int(entry["generation"]), tuple(str(w) for w in words))
    return out


def source_fingerprints(
    config: BuildConfig, cases: list[Case]
) -> Callable[[Case], tuple[str, str | None]]:
    """Each case's fingerprint (and, with ``verify_sources``, content digest), computed once
    for all cases (``medgrit.adapters.sources.fingerprints``)."""
    found = fingerprint_cases(cases, verify=config.verify_sources)
    by_id = {id(case): value for case, value in zip(cases, found, strict=True)}
    return lambda case: by_id[id(case)]


def prepare_build(config: BuildConfig, previous: dict | None = None) -> PreparedBuild:
    """Open the sources (or take those the checks just opened) and plan the shards.

    ``previous``: the manifest of the same build settings already in OUT; its plan is kept
    and the cases its sources gained since are planned as new shards after it (when it cannot
    be kept, because cases it holds are gone, the plan is drawn afresh and the resume refuses
    it).

    Raises:
        PlanConflict: cases of ``previous`` are gone or changed, or a source's label map
            changed, and ``config.rebuild_changed`` is not set.
    """
    key = build_key(config)
    sources = _build_sources(config, key)
    cases = [case for source in sources for case in source.cases]
    fingerprint = source_fingerprints(config, cases)

    def count(case: Case) -> int:
        return count_case_images(case, config, load_case)

    estimate = _estimator(config)
    if previous is not None:
        extended = extend_plan(
            RecordedPlan.of(previous),
            cases,
            config,
            key,
            count,
            estimate,
            fingerprint,
            config.rebuild_changed,
        )
        if extended is not None:
            return PreparedBuild(
                sources,
                extended.plan,
                extended.generations,
                extended.new_cases,
                extended.rebuilt,
                extended.retired,
                _recorded_vocabularies(previous),
            )
    return PreparedBuild(sources, plan_build(cases, config, key, count, estimate, fingerprint))


def check_sources_unchanged(
    config: BuildConfig, out: Path, sources: list[Source], key: bytes, resume: bool = False
) -> str | None:
    """Why a build or resume into ``out`` would be refused because its dataset's sources
    changed since it was built (a label map, a case; for a ``resume``, also cases added), or
    None; for the checks before the build starts (the build checks again). Nothing is loaded:
    fingerprints and listings only.
    """
    previous = previous_build(out, config)
    if previous is None or config.rebuild_changed:
        return None
    cases = [case for source in sources for case in source.cases]
    shown = escape_name(str(out))
    try:
        extended = extend_plan(
            RecordedPlan.of(previous),
            cases,
            config,
            key,
            lambda case: 1,  # quotas of new cases do not matter here
            _estimator(config),
            source_fingerprints(config, cases),
        )
    except PlanConflict as exc:
        return changed_sources_message(shown, exc)
    if resume and extended is not None and extended.new_cases:
        planned = new_manifest(config, sources, extended.plan, {})
        return mismatch_message(previous, planned, True, shown)
    return None


def _estimator(config: BuildConfig) -> Callable[[Case], int]:
    """A case's images as its listing or header tells, under the build's plane, stride and
    cap (``medgrit.adapters.sources.estimate_images``)."""

    def estimate(case: Case) -> int:
        return estimate_images(case, config.plane, config.slice_stride, config.max_slices_per_case)

    return estimate


def changed_sources_message(shown: str, conflict: PlanConflict) -> str:
    """The one line that refuses a build whose dataset's sources changed since it was built."""
    rebuild = (
        "build again with --rebuild-changed to rebuild what changed as new shards, "
        if conflict.rebuildable
        else ""
    )
    return (
        f"{shown} holds another build: its sources changed since it was built ({conflict}); "
        f"nothing was changed. Restore the sources, {rebuild}build into a new folder, or "
        "replace it with `medgrit build ... --overwrite`"
    )


def with_absolute_paths(config: BuildConfig) -> BuildConfig:
    """``config`` with its source paths and key file absolute (relative ones are taken from
    the working folder, as a deployment's run from a ``prefect.yaml`` gives them), so that
    ``dataset.json`` records where the sources are, whoever reads it from wherever."""
    sources = []
    for spec in config.sources:
        kind, sep, path = spec.partition(":")
        sources.append(f"{kind}:{Path(path).expanduser().absolute()}" if sep and path else spec)
    key_file = str(Path(config.key_file).expanduser().absolute()) if config.key_file else None
    if sources == list(config.sources) and key_file == config.key_file:
        return config
    return config.model_copy(update={"sources": sources, "key_file": key_file})


def previous_build(out: Path, config: BuildConfig) -> dict | None:
    """The state of the build in ``out`` when it was made with the content settings of
    ``config`` (None: no build there, an unreadable one, or other settings; the resume then
    says why)."""
    from medgrit.adapters.store.bookkeeping import content_config, read_dataset
    from medgrit.adapters.store.manifest import MANIFEST, ManifestError

    if not (out / MANIFEST).is_file():
        return None
    try:
        previous = read_dataset(out)
    except ManifestError:
        return None
    if content_config(previous.get("config") or {}) != content_config(
        config.model_dump(mode="json")
    ):
        return None
    return previous


# -- one shard -------------------------------------------------------------------------------


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


def make_generator(
    config: BuildConfig,
    shard: str,
    known_batches: list[str],
    vocabulary: tuple[str, ...] = (),
    llm_share: int = 1,
) -> Generator:
    """The build's generator for one shard (templates, or an LLM endpoint whose answers are
    checked against the build's label ``vocabulary`` before it is asked again). ``llm_share``:
    the processes that share the provider's limits, each allowed its part of them."""
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
        vocabulary=vocabulary,
        share=llm_share,
    )


def resolve_llm_config(config: BuildConfig, out: Path) -> BuildConfig:
    """The config the shards of an LLM build run with: ``llm.response_format`` ``auto``
    replaced by the mode the endpoint accepts (``medgrit.adapters.llm.formats``); an explicit
    mode is kept, once checked not to be refused. Other builds: ``config`` itself.

    When ``out/dataset.json`` records an LLM generator of the same base URL and model (the build
    ran before: a resume), its ``response_format`` is kept and nothing is sent, so a resume asks
    exactly the requests of the first run and finds their answers in the cache.

    Call it before ``new_manifest``, once per build: the manifest keeps the user's ``config``
    (``auto``, so a resume compares like with like), ``generator_info(resolved)`` records the
    mode, and every ``ShardJob`` gets the resolved config.

    Raises:
        LLMEndpointError: the endpoint is unreachable, refused the key, refuses the explicit
            mode, or answered no mode with JSON (``medgrit.adapters.llm.formats``).
        LookupError: no API key.
    """
    llm = config.llm
    if config.generator != "llm" or llm is None:
        return config
    from medgrit.adapters.llm.formats import AUTO, MODE_ORDER, resolve_response_format
    from medgrit.adapters.llm.generator import settings_from_config

    requested = llm.response_format
    before = _recorded_generator(out, llm)
    if before is not None and requested != AUTO:
        return config  # built with this mode before: not checked again
    if before is not None and before.get("response_format") in MODE_ORDER:
        mode = before["response_format"]
    else:
        # The probes set response_format per request; the settings only take a concrete mode.
        concrete = MODE_ORDER[0] if requested == AUTO else requested
        settings = settings_from_config(llm.model_copy(update={"response_format": concrete}))
        mode = resolve_response_format(settings, resolve_api_key(llm), requested)
    if mode == requested:
        return config
    return config.model_copy(update={"llm": llm.model_copy(update={"response_format": mode})})


def _recorded_generator(out: Path, llm: LLMConfig) -> dict | None:
    """The ``generator`` entry of ``out/dataset.json`` when it is an LLM of the same base URL
    and model (None: no manifest yet, or another endpoint)."""
    from medgrit.adapters.store.manifest import MANIFEST, read_manifest

    if not (out / MANIFEST).is_file():
        return None
    entry = read_manifest(out).get("generator")
    if not isinstance(entry, dict) or entry.get("name") != "llm":
        return None
    if (entry.get("base_url"), entry.get("model")) != (llm.base_url, llm.model):
        return None
    return entry


def generator_info(config: BuildConfig) -> dict:
    """Generator name, template hashes and (for an LLM) model and response format, for the
    manifest (give it the config of :func:`resolve_llm_config`)."""
    if config.generator == "llm" and config.llm is not None:
        from medgrit.adapters.llm.generator import PROMPT_FILES

        hashes = template_hashes(list(PROMPT_FILES))
        return {
            "name": "llm",
            "model": config.llm.model,
            "base_url": config.llm.base_url,
            "batch": config.llm.batch,
            "response_format": config.llm.response_format,  # resolved: see resolve_llm_config
            "template_hash": combined_hash(hashes),
            "templates": hashes,
        }
    generator = TemplateGenerator(seed=config.seed, max_region_turns=config.max_region_turns)
    return {
        "name": generator.name,
        "template_hash": generator.template_hash,
        "templates": generator.template_hashes,
    }


LLM_LATENCY_GUESS_S = 10.0
"""A generous request latency for sizing how many LLM shards run at once."""
MAX_LLM_SHARDS_IN_FLIGHT = 32


def shards_in_flight(config: BuildConfig) -> int:
    """How many shards a build runs at once: ``workers``; for an LLM build enough more that
    the pending requests of the shards in flight fill the limit's in-flight window (requests
    per second times a generous latency), since the shards' threads mostly wait on the
    shared client (``medgrit.adapters.llm.dispatch``)."""
    if config.generator != "llm" or config.llm is None or config.llm.batch:
        return config.workers
    window = config.llm.max_concurrency or (
        config.llm.requests_per_minute / 60.0 * LLM_LATENCY_GUESS_S
    )
    needed = -(-int(window) // config.images_per_shard) + 1
    return max(config.workers, min(MAX_LLM_SHARDS_IN_FLIGHT, needed))


@dataclass(frozen=True)
class ShardJob:
    """One shard to build: its id, its cases, the config, batches already submitted and the
    build's label vocabulary (``medgrit.core.pipeline.build_vocabulary``)."""

    shard: str
    cases: list[CaseTask]
    config: BuildConfig
    known_batches: list[str] = field(default_factory=list)
    vocabulary: tuple[str, ...] = ()
    llm_share: int = 1  # worker processes sharing the LLM limits (see ``make_generator``)


def build_one_shard(job: ShardJob) -> dict:
    """Build and write one shard; returns its manifest entry (files, row counts, stats, tokens,
    and the seconds it took, which live only in ``dataset.json``)."""
    started = time.perf_counter()
    generator = make_generator(
        job.config, job.shard, job.known_batches, job.vocabulary, llm_share=job.llm_share
    )
    rows = build_shard_rows(job.cases, job.config, generator, SHARD_IO, job.vocabulary)
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


# -- mappers ---------------------------------------------------------------------------------


class ShardFuture(Protocol):
    """A submitted shard: ``result()`` returns its entry or raises what it raised."""

    def result(self) -> dict: ...

    def done(self) -> bool: ...


class ShardMapper(Protocol):
    """Runs shards: ``submit`` hands one over, ``as_completed`` yields them as they finish."""

    def submit(self, job: ShardJob) -> ShardFuture: ...

    def as_completed(self, futures: list[ShardFuture]) -> Iterator[ShardFuture]: ...

    def close(self) -> None:
        """Stop what has not started and wait for what runs (after the last shard, or when the
        build stops)."""


class _Deferred:
    """A shard the loop mapper runs when its turn comes."""

    def __init__(self, job: ShardJob, work: Callable[[ShardJob], dict]) -> None:
        self.job, self.work = job, work
        self.outcome: dict | BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = self.work(self.job)
        except Exception as exc:  # noqa: BLE001 - kept for result(), as a future keeps it
            self.outcome = exc

    def done(self) -> bool:
        return self.outcome is not None

    def result(self) -> dict:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


@dataclass
class LoopMapper:
    """Shards one after another in this thread (no Prefect, no pool)."""

    work: Callable[[ShardJob], dict] = build_one_shard

    def submit(self, job: ShardJob) -> ShardFuture:
        return _Deferred(job, self.work)

    def as_completed(self, futures: list[ShardFuture]) -> Iterator[ShardFuture]:
        for future in futures:
            future.run()  # type: ignore[attr-defined]
            yield future

    def close(self) -> None:
        """Nothing runs once the loop is left."""


class RunnerFuture:
    """A task runner's future as ``run_build`` takes one.

    Args:
        future: the runner's future (``concurrent.futures``, Prefect, ...).
        finished: whether that future ran to an end (a shard cancelled before it started, or
            one still running, has not).
    """

    def __init__(self, future: Any, finished: Callable[[Any], bool]) -> None:
        self.future, self.finished = future, finished

    def result(self) -> dict:
        return self.future.result()

    def done(self) -> bool:
        return self.finished(self.future)


def in_completion_order(
    futures: list[ShardFuture], as_completed: Callable[[list], Iterator[Any]]
) -> Iterator[ShardFuture]:
    """The :class:`RunnerFuture` objects in the order their runner's ``as_completed`` gives."""
    by_future = {f.future: f for f in futures}  # type: ignore[attr-defined]
    for done in as_completed(list(by_future)):
        yield by_future[done]


def _pool_finished(future: Future) -> bool:
    return future.done() and not future.cancelled()


@dataclass
class ThreadMapper:
    """Shards on a pool of ``workers`` threads (one pool per build; ``close`` ends it)."""

    workers: int = 2
    work: Callable[[ShardJob], dict] = build_one_shard
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def submit(self, job: ShardJob) -> ShardFuture:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers)
        return RunnerFuture(self._pool.submit(self.work, job), _pool_finished)

    def as_completed(self, futures: list[ShardFuture]) -> Iterator[ShardFuture]:
        return in_completion_order(futures, _futures_completed)

    def close(self) -> None:
        """Drop the shards not started and wait for the running ones."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


ProgressHook = Callable[[dict, "str | None"], None]
"""``on_progress(manifest, shard)`` of :func:`run_build`."""


def _outcome(future: ShardFuture) -> dict | BaseException:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - recorded in the manifest, the others go on
        return exc


# -- the build -------------------------------------------------------------------------------


def run_build(
    config: BuildConfig,
    map_shards: ShardMapper | None = None,
    rebuild_if_changed: bool = False,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    publish_summary: Callable[[str], None] | None = None,
    on_progress: ProgressHook | None = None,
    append: bool = True,
) -> dict:
    """Build (or resume) a Med-GRIT-style dataset directory from segmentation sources.

    Args:
        config: the build config.
        map_shards: how shards run (default: :class:`LoopMapper`).
        rebuild_if_changed: when the directory holds a build whose config or plan differs,
            start afresh (for medgrit's own staging folders); by default that is
            ``DatasetMismatch``, so finished shards are never thrown away.
        logger: where progress goes (default: the ``medgrit.build`` logger).
        publish_summary: called with the summary of a build that finished.
        on_progress: called with the manifest (its shard entries as far as recorded) and
            None once the plan is known, then with the id of each shard recorded done or
            failed; what it raises is logged, never the build's end.
        append: when OUT holds a build of the same settings whose sources gained cases since,
            plan the new cases as new shards after its own (its shards are kept as they are);
            False (a resume): OUT's plan is finished as it is, and sources that changed are
            ``DatasetMismatch``.

    Returns:
        The final manifest (also written to ``OUT/dataset.json``).

    Raises:
        BuildFailed: when shards failed after their retries (the others are kept).
        DiskFull: when the disk holding the dataset filled up.
        DatasetBusy: when another process is writing the dataset.
        DatasetMismatch: see ``rebuild_if_changed``.
        BuildInterrupted: when a stop was requested (a signal); the manifest keeps what
            finished.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not signalled():
        clear_stop()  # a stop left by an earlier build of this process
    try:
        with hold_dataset(out), stop_on_signals():
            return _run_locked(
                config,
                out,
                map_shards or LoopMapper(),
                rebuild_if_changed,
                logger or logging.getLogger("medgrit.build"),
                publish_summary,
                on_progress,
                append,
            )
    finally:
        if config.generator == "llm":
            from medgrit.adapters.llm.dispatch import close_shared_clients

            close_shared_clients()
        if not signalled():
            clear_stop()  # a stop this build asked for (a full disk, a failure) ends with it


def _run_locked(
    config: BuildConfig,
    out: Path,
    mapper: ShardMapper,
    rebuild_if_changed: bool,
    logger: logging.Logger | logging.LoggerAdapter,
    publish_summary: Callable[[str], None] | None,
    on_progress: ProgressHook | None = None,
    append: bool = True,
) -> dict:
    shown = escape_name(str(out))

    def progress(shard: str | None) -> None:
        if on_progress is None:
            return
        try:
            on_progress(manifest, shard)
        except Exception as exc:  # noqa: BLE001 - a dashboard's trouble never ends a build
            logger.warning("progress not published: %s", escape_name(str(exc))[:200])

    # Before the sources are scanned: an unreachable endpoint fails the build at once.
    resolved = resolve_llm_config(config, out)
    previous = None if rebuild_if_changed else previous_build(out, config)
    try:
        prepared = prepare_build(config, previous)
    except PlanConflict as exc:
        raise DatasetMismatch(changed_sources_message(shown, exc)) from None
    plan = prepared.plan
    vocabularies = prepared.vocabularies()
    retired = [
        *((previous or {}).get("retired") or []),
        *(shard.record(now()) for shard in prepared.retired),
    ]
    manifest = new_manifest(
        config,
        prepared.sources,
        plan,
        generator_info(resolved),
        vocabularies.get(0, ()),
        {s: (g, vocabularies[g]) for s, g in prepared.generations.items() if g},
        retired,
    )
    if prepared.new_cases and not append:  # a resume finishes the plan it was given
        raise DatasetMismatch(mismatch_message(previous or {}, manifest, True, shown))
    resume_from(out, manifest, rebuild_if_changed, extends=previous is not None)
    if prepared.retired:
        logger.info(
            "%d shards retired (%s; first: %s): %d of their cases are built again as new shards",
            len(prepared.retired),
            ", ".join(r.id for r in prepared.retired[:5])
            + (", ..." if len(prepared.retired) > 5 else ""),
            prepared.retired[0].reason,
            prepared.rebuilt,
        )
    if prepared.new_cases:
        added = sum(1 for s, _ in plan if prepared.generations.get(s) == max(vocabularies))
        logger.info(
            "the sources gained %d cases since the dataset was built: %d new shards",
            prepared.new_cases,
            added,
        )
    writer = ParquetShardWriter(out)
    for leftover in writer.remove_temporaries():
        logger.info("removed %s left by an interrupted run", escape_name(leftover))
    listed = {rel for e in manifest["shards"] if e["status"] == "done" for rel in e["files"]}
    for stale in writer.remove_parts_except(listed):
        logger.info("removed %s of an earlier build with another config", escape_name(stale))

    entries = {e["id"]: e for e in manifest["shards"]}
    pending = [(s, c) for s, c in plan if entries[s]["status"] != "done"]
    total = len(plan)
    logger.info(
        "%d shards planned, %d to build, %d already done", total, len(pending), total - len(pending)
    )
    futures = {
        mapper.submit(
            ShardJob(
                shard,
                cases,
                resolved,
                entries[shard].get("batches", []),
                vocabularies[prepared.generations.get(shard, 0)],
            )
        ): shard
        for shard, cases in pending
    }
    finished = total - len(pending)
    disk_full: OSError | None = None
    progress(None)

    def record(future: ShardFuture) -> str | None:
        """Record a finished shard in memory; returns its id (None when it was stopped)."""
        nonlocal finished, disk_full
        shard = futures[future]
        outcome = _outcome(future)
        status = record_outcome(entries[shard], outcome)
        if status == "done":
            finished += 1
            rows = entries[shard]["rows"]
            qa = entries[shard].get("stats", {}).get("qa_by_modality_task", {})
            logger.info(
                "shard %s done (%d/%d): %d images, %d QA pairs, %d rejects in %.1f s",
                shard,
                finished,
                total,
                rows["images"],
                sum(n for per in qa.values() for n in per.values()),
                rows["rejects"],
                entries[shard].get("seconds", 0.0),
            )
        elif status == "failed":
            logger.error("shard %s failed: %s", shard, entries[shard]["error"])
            if disk_full is None and isinstance(outcome, OSError) and is_disk_full(outcome):
                disk_full = outcome
                request_stop()  # the shards not yet started would only fail the same way
        return None if status == "stopped" else shard

    try:
        for future in mapper.as_completed(list(futures)):
            shard = record(future)
            if shard is None:
                continue  # stopped: it stays as it was for the resume
            try:
                write_shard_record(out, manifest, entries[shard])  # O(1), whatever the build size
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                disk_full = disk_full or exc  # keep collecting: running shards finish or fail
                request_stop()
            progress(shard)
    except BaseException:
        # Stopped (a signal) or broken: keep what finished, so a resume does not redo it.
        request_stop()
        mapper.close()
        for future, shard in futures.items():
            if entries[shard]["status"] != "done" and future.done():
                record(future)
        try:
            compact(out, manifest)
        except OSError:
            pass  # the records and the last manifest written stay valid
        raise

    mapper.close()
    if stop_requested() and disk_full is None:
        try:
            compact(out, manifest)  # what finished, without totals: never finalise a stop
        except OSError:
            pass
        raise BuildInterrupted("the build was asked to stop")
    if disk_full is not None:
        try:
            finalise(out, manifest)
        except OSError:
            pass  # the last manifest that fitted stays; resume recomputes the rest
        raise DiskFull(disk_full.errno or 28, disk_full.strerror or "No space left", shown)
    summary = finalise(out, manifest)
    if publish_summary is not None:
        publish_summary(summary)
    failed = [s["id"] for s in manifest["shards"] if s["status"] == "failed"]
    if failed:
        raise BuildFailed(
            f"{len(failed)} shard(s) failed ({', '.join(failed)}); "
            f"run `medgrit resume {shown}` to retry them"
        )
    return manifest
