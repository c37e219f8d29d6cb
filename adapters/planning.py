"""Planning a build: its key, its sources opened once, and its shards planned against what OUT
already holds.

:func:`prepare_build` opens the sources (or takes the :class:`SourceListing` the CLI's checks
made with :func:`open_build_sources`) and plans the shards (pure, ``medgrit.core.sharding``):
afresh, or extending the plan a previous build of the same settings recorded.
:func:`check_sources_unchanged` asks the same question before a build starts, from listings
and fingerprints only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.keys import load_or_create_key
from medgrit.adapters.source_specs import open_sources
from medgrit.adapters.sources import Source, estimate_images, load_case
from medgrit.adapters.sources.fingerprints import fingerprint_cases
from medgrit.adapters.store.bookkeeping import mismatch_message, plan_manifest
from medgrit.adapters.synthetic.demo import default_demo_dir
from medgrit.core.cases import NO_VOCABULARY, Case, Vocabulary
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import renamed_sources
from medgrit.core.pipeline import CaseTask, build_vocabulary, count_case_images
from medgrit.core.plan_extension import PlanConflict, RecordedPlan, RetiredShard, extend_plan
from medgrit.core.sharding import plan_build
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

    ``generations``: each shard's plan generation (0 unless the plan extends a dataset whose
    sources gained or changed cases: ``medgrit.core.plan_extension.extend_plan``); ``new_cases``:
    the cases the sources gained; ``rebuilt``: cases planned again because they changed;
    ``retired``: the shards they were in; ``recorded_vocabularies``: the label vocabulary (names
    and synonyms) each recorded generation was read with, kept as recorded whatever was retired
    since or whatever its label files say now: a generation's shards are all read alike.
    """

    sources: list[Source]
    plan: list[tuple[str, list[CaseTask]]]
    generations: dict[str, int] = field(default_factory=dict)
    new_cases: int = 0
    rebuilt: int = 0
    retired: tuple[RetiredShard, ...] = ()
    recorded_vocabularies: dict[int, Vocabulary] = field(default_factory=dict)

    @cached_property
    def vocabularies(self) -> dict[int, Vocabulary]:
        """The label vocabulary of each generation: the names and synonyms of the cases planned
        up to it (what the shards of that generation were, or will be, read with); computed
        once. Generation 0, the dataset's top level, is always there."""
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
    config: BuildConfig, cases: list[Case]
) -> Callable[[Case], tuple[str, str | None]]:
    """Each case's fingerprint (and, with ``verify_sources``, content digest), computed once
    for all cases (``medgrit.adapters.sources.fingerprints``)."""
    found = fingerprint_cases(cases, verify=config.verify_sources)
    by_id = {id(case): value for case, value in zip(cases, found, strict=True)}
    return lambda case: by_id[id(case)]


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
    cases = [case for source in sources for case in source.cases]
    progress.phase(f"planning shards for {len(cases)} case{'s' if len(cases) != 1 else ''}")
    fingerprint = source_fingerprints(config, cases)

    def count(case: Case) -> int:
        return count_case_images(case, config, load_case)

    estimate = _estimator(config)
    if previous is not None:
        extended = extend_plan(
            RecordedPlan.of(previous.to_json()),
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
            RecordedPlan.of(previous.to_json()),
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


def previous_build(out: Path, config: BuildConfig) -> Manifest | None:
    """The state of the build in ``out`` when it was made with the content settings of
    ``config`` (None: no build there, an unreadable one, or other settings; the resume then
    says why)."""
    from medgrit.adapters.store.bookkeeping import content_config, load_dataset
    from medgrit.adapters.store.manifest import MANIFEST, ManifestError

    if not (out / MANIFEST).is_file():
        return None
    try:
        previous = load_dataset(out)
    except ManifestError:
        return None
    if content_config(previous.config) != content_config(config.model_dump(mode="json")):
        return None
    return previous
