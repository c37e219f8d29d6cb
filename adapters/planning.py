"""Planning a build: its key, its sources opened once, and its shards planned against what OUT
already holds.

:func:`prepare_build` opens the sources (or takes the :class:`SourceListing` the CLI's checks
made with :func:`open_build_sources`) and plans the shards (pure, ``medgrit.core.sharding``):
afresh, or extending the plan a previous build of the same settings recorded.
:func:`check_sources_unchanged` asks the same question before a build starts, from listings
and fingerprints only.

A fresh plan reads the listing once (:class:`ListedCases`: the sources' cases in order, never
copied into a list) and is held in arrays (``medgrit.core.sharding.CompactPlan``, about 17
bytes a case); each case's fingerprint is taken when its shard's tasks are made, once, as the
plan is written (``medgrit.adapters.book``). A build taken up again whose plan is the recorded
one, case for case, is that plan drawn afresh and compared with the case lists OUT holds
(:func:`_kept_plan`); extending a recorded plan (new or changed cases, an inline plan) makes
a task per case (``medgrit.core.plan_extension``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate
from pathlib import Path
from typing import overload

from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.keys import load_or_create_key
from medgrit.adapters.source_specs import open_sources
from medgrit.adapters.sources import Source, estimate_images, load_case
from medgrit.adapters.sources.fingerprints import fingerprint_cases
from medgrit.adapters.store.bookkeeping import mismatch_message, plan_manifest
from medgrit.adapters.store.manifest import (
    MANIFEST,
    CaseListFiles,
    ManifestError,
    case_json,
    read_case_lists,
)
from medgrit.adapters.synthetic.demo import default_demo_dir
from medgrit.core.cases import NO_VOCABULARY, Case, Vocabulary
from medgrit.core.changes import label_map_changes
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import renamed_sources
from medgrit.core.pipeline import CaseTask, build_vocabulary, count_case_images
from medgrit.core.plan_extension import (
    PlanConflict,
    RecordedPlan,
    RetiredShard,
    extend_plan,
    label_examples,
)
from medgrit.core.sharding import CompactPlan, plan_cases
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import Manifest


def build_key(config: BuildConfig) -> bytes:
    """The pseudonymisation key of a build (created on first use; never written to OUT)."""
    return load_or_create_key(Path(config.key_file) if config.key_file else None)


class SourceListing:
    """Sources opened for the checks before a build, handed to the build that follows so that
    they are listed once.

    It holds the specs, modality, label words, channels and key it was listed with: a build of
    other sources, another modality, other label words or channels, or another key (a key
    created after the checks listed with a throwaway one) lists its own. As a flow parameter it
    is kept out of the flow run's stored parameters: it has no ``__dict__`` to encode, so
    Prefect stores a placeholder (a scheduled run lists afresh).
    """

    __slots__ = ("_key", "_sources")

    def __init__(self, config: BuildConfig, key: bytes, sources: list[Source]) -> None:
        self._key = _listing_key(config, key)
        self._sources = sources

    @property
    def sources(self) -> list[Source]:
        """The sources, in the order of their specs."""
        return self._sources

    def sources_for(self, config: BuildConfig, key: bytes) -> list[Source] | None:
        """The sources when they were listed for ``config``'s sources and modality with
        ``key``; None otherwise."""
        if self._key != _listing_key(config, key):
            return None
        return self._sources


def _listing_key(config: BuildConfig, key: bytes) -> tuple:
    """What a listing of sources depends on: the specs, modality, label words, channels and
    key."""
    channels = None if config.channels is None else tuple(config.channels)
    words = tuple(config.label_names.items())
    return (tuple(config.sources), config.modality, words, channels, key)


def open_build_sources(config: BuildConfig, key: bytes) -> SourceListing:
    """Open the sources of a build for the checks before it; give the listing to the build
    (``run_build(..., listing=...)``) so it does not open them again.

    Raises:
        SourceError: a source a user must fix.
    """
    return SourceListing(config, key, _open(config, key))


def _open(config: BuildConfig, key: bytes) -> list[Source]:
    sources = open_sources(
        config.sources,
        demo_dir=default_demo_dir(),
        modality=config.modality,
        key=key,
        channels=config.channels,
    )
    return renamed_sources(sources, config.label_names)


@dataclass(frozen=True)
class PreparedBuild:
    """A build ready to run: its sources opened and its shards planned.

    ``plan``: ``(shard id, case tasks)`` per shard; a fresh plan is a
    :class:`~medgrit.core.sharding.CompactPlan`, which makes a shard's tasks when it is read.
    ``generations``: each shard's plan generation (0 unless the plan extends a dataset whose
    sources gained or changed cases: ``medgrit.core.plan_extension.extend_plan``); ``new_cases``:
    the cases the sources gained; ``rebuilt``: cases planned again because they changed;
    ``retired``: the shards they were in; ``recorded_vocabularies``: the label vocabulary (names
    and synonyms) each recorded generation was read with, kept as recorded whatever was retired
    since or whatever its label files say now: a generation's shards are all read alike.
    ``case_lists``: the plan's case lists as OUT holds them already (a resumed plan that is
    the recorded one, case for case), written again by nobody.
    """

    sources: list[Source]
    plan: Sequence[tuple[str, list[CaseTask]]]
    generations: dict[str, int] = field(default_factory=dict)
    new_cases: int = 0
    rebuilt: int = 0
    retired: tuple[RetiredShard, ...] = ()
    recorded_vocabularies: dict[int, Vocabulary] = field(default_factory=dict)
    case_lists: CaseListFiles | None = None

    @cached_property
    def vocabularies(self) -> dict[int, Vocabulary]:
        """The label vocabulary of each generation: the names and synonyms of the cases planned
        up to it (what the shards of that generation were, or will be, read with); computed
        once. Generation 0, the dataset's top level, is always there."""
        if isinstance(self.plan, CompactPlan):  # a fresh plan: one generation
            tasks = [CaseTask(self.plan.cases[i], "", "train") for i in self.plan.label_cases]
            return {0: self.recorded_vocabularies.get(0) or build_vocabulary(tasks)}
        by_generation: dict[int, list[CaseTask]] = {}
        for shard, cases in self.plan:
            by_generation.setdefault(self.generations.get(shard, 0), []).extend(cases)
        out: dict[int, Vocabulary] = {}
        seen: list[CaseTask] = []
        for generation in sorted(by_generation):
            seen += by_generation[generation]
            out[generation] = self.recorded_vocabularies.get(generation) or build_vocabulary(seen)
        out.setdefault(0, self.recorded_vocabularies.get(0, NO_VOCABULARY))
        return out


def _recorded_vocabularies(previous: Manifest) -> dict[int, Vocabulary]:
    """The vocabulary of each generation a manifest records (generation 0: its top level;
    synonyms a dataset written before they were recorded lacks are none)."""
    out: dict[int, Vocabulary] = {}
    if previous.vocabulary:
        out[0] = Vocabulary.recorded(previous.vocabulary, previous.synonyms)
    for entry in previous.shards:
        if entry.vocabulary is not None and entry.generation:
            out.setdefault(entry.generation, Vocabulary.recorded(entry.vocabulary, entry.synonyms))
    return out


def source_fingerprints(
    config: BuildConfig, cases: Sequence[Case]
) -> Callable[[Case], tuple[str, str | None]]:
    """Each case's fingerprint (and, with ``verify_sources``, content digest), computed once
    for all cases (``medgrit.adapters.sources.fingerprints``), looked up by the case's source,
    dataset and name (a source may make a case anew each time it is read)."""
    found = fingerprint_cases(cases, verify=config.verify_sources)
    by_name = {(c.source, c.dataset, c.case): v for c, v in zip(cases, found, strict=True)}
    return lambda case: by_name[(case.source, case.dataset, case.case)]


def prepare_build(
    config: BuildConfig, previous: Manifest | None = None, listing: SourceListing | None = None
) -> PreparedBuild:
    """Open the sources (or take those the checks just opened) and plan the shards.

    ``previous``: the manifest of the same build settings already in OUT; its plan is kept
    and the cases its sources gained since are planned as new shards after it (when it cannot
    be kept, because cases it holds are gone, the plan is drawn afresh and the resume refuses
    it). ``listing``: the sources the checks before the build opened, taken when they were
    listed for this build's sources and key.

    Raises:
        PlanConflict: cases of ``previous`` are gone or changed, or a source's label map
            changed, and ``config.rebuild_changed`` is not set.
    """
    key = build_key(config)
    handed = listing.sources_for(config, key) if listing is not None else None
    sources = handed if handed is not None else _open(config, key)
    cases = ListedCases(sources)
    progress.phase(f"planning shards for {len(cases)} case{'s' if len(cases) != 1 else ''}")

    def count(case: Case) -> int:
        return count_case_images(case, config, load_case)

    estimate = _estimator(config)

    def fingerprints(planned: Sequence[Case]) -> list[tuple[str, str | None]]:
        return fingerprint_cases(planned, verify=config.verify_sources)

    def draw() -> CompactPlan:
        return plan_cases(cases, config, key, count, estimate, fingerprints)

    if previous is not None:
        out, vocabularies = Path(config.out), _recorded_vocabularies(previous)
        kept = _kept_plan(out, config, previous, draw, cases)
        if kept is not None:
            plan, lists = kept
            return PreparedBuild(
                sources, plan, recorded_vocabularies=vocabularies, case_lists=lists
            )
        extended = extend_plan(
            recorded_plan(out, previous),
            cases,
            config,
            key,
            count,
            estimate,
            source_fingerprints(config, cases),
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
                vocabularies,
            )
    return PreparedBuild(sources, draw())


def _kept_plan(
    out: Path,
    config: BuildConfig,
    previous: Manifest,
    draw: Callable[[], CompactPlan],
    cases: Sequence[Case],
) -> tuple[CompactPlan, CaseListFiles] | None:
    """The plan ``draw`` draws afresh, with the case lists OUT holds, when that is the plan
    ``previous`` recorded in its case lists, case for case (ids, splits, quotas and what tells
    a changed case: fingerprints, listed images) and no source's label map changed since:
    the plan :func:`~medgrit.core.plan_extension.extend_plan` would keep, found without a task
    per case. None when it is not, or cannot be so (a plan extended, with retired shards or
    under ``max_images``, whose quotas would read cases).
    """
    shards = previous.shards
    if previous.case_lists is None or previous.retired or config.max_images is not None:
        return None
    if any(s.generation for s in shards) or any(s.plan_sha256 is None for s in shards):
        return None
    sources = [s.to_json() for s in previous.sources]
    if label_map_changes(sources, label_examples(cases)):
        return None
    plan = draw()
    if len(plan) != len(shards):
        return None
    recorded = read_case_lists(out, previous.case_lists)
    for i, entry in enumerate(shards):
        shard, listed = next(recorded, (None, None))
        if shard != entry.id or listed != [case_json(task) for task in plan.tasks(i)]:
            return None
    held = [(s.id, s.n_cases, str(s.plan_sha256)) for s in shards]
    return plan, CaseListFiles(list(previous.case_lists), held, [])


class _RecordedShards:
    """The shard entries of a manifest whose case lists hold their cases, each with its cases,
    read from the case lists as they are iterated (one file at a time)."""

    def __init__(self, out: Path, manifest: Manifest) -> None:
        self._out, self._manifest = out, manifest

    def __iter__(self) -> Iterator[dict]:
        listed = read_case_lists(self._out, self._manifest.case_lists or ())
        for entry in self._manifest.shards:
            shard, cases = next(listed, (None, []))
            if shard != entry.id:
                raise ManifestError(
                    f"{escape_name(str(self._out))}: the case lists do not hold shard "
                    f"{escape_name(entry.id)} where dataset.json says; the dataset is incomplete"
                )
            yield {**entry.to_json(), "cases": cases}


def recorded_plan(out: Path, previous: Manifest) -> RecordedPlan:
    """The plan ``previous`` (the manifest in ``out``) records, its shards' cases read from
    its case lists as the plan is read, where it keeps them there."""
    data = previous.to_json()
    if previous.case_lists is None or all(s.cases for s in previous.shards):
        return RecordedPlan.of(data)
    retired = data.get("retired")
    return RecordedPlan(
        _RecordedShards(out, previous),
        data.get("sources") or [],
        retired if isinstance(retired, list) else [],
    )


class ListedCases(Sequence[Case]):
    """The cases of several sources as one sequence, in source order, without a list of them
    (a source may make its cases as they are read)."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self._parts = [source.cases for source in sources]
        self._starts = [0, *accumulate(len(part) for part in self._parts)]

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, i: int) -> Case: ...

    @overload
    def __getitem__(self, i: slice) -> list[Case]: ...

    def __getitem__(self, i: int | slice):  # type: ignore[override]
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            found: list[Case] = []
            for part, first in zip(self._parts, self._starts, strict=False):
                if start < first + len(part) and stop > first:
                    found += part[max(0, start - first) : stop - first]
            return found
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("case index out of range")
        part = bisect_right(self._starts, i) - 1
        return self._parts[part][i - self._starts[part]]

    def __iter__(self) -> Iterator[Case]:
        for part in self._parts:
            yield from part


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
    cases = ListedCases(sources)
    shown = escape_name(str(out))

    def draw() -> CompactPlan:
        return plan_cases(cases, config, key, lambda case: 1, _estimator(config), fingerprints)

    def fingerprints(planned: Sequence[Case]) -> list[tuple[str, str | None]]:
        return fingerprint_cases(planned, verify=config.verify_sources)

    if _kept_plan(out, config, previous, draw, cases) is not None:
        return None  # the recorded plan, case for case
    try:
        extended = extend_plan(
            recorded_plan(out, previous),
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
        planned = plan_manifest(config, sources, extended.plan, None)
        return mismatch_message(previous, planned, True, shown, out)
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


def previous_build(out: Path, config: BuildConfig) -> Manifest | None:
    """The state of the build in ``out`` when it was made with the content settings of
    ``config`` (None: no build there, an unreadable one, or other settings; the resume then
    says why). Shards whose cases are in case lists are read without them
    (:func:`recorded_plan` reads them as the plan is read)."""
    from medgrit.adapters.store.bookkeeping import content_config, load_dataset

    if not (out / MANIFEST).is_file():
        return None
    try:
        previous = load_dataset(out, cases=False)
    except ManifestError:
        return None
    if content_config(previous.config) != content_config(config.model_dump(mode="json")):
        return None
    return previous
