"""The typed form of ``dataset.json`` (the manifest) and of the shards' completion records.

Each model is strict (no coercion: a string is not a number, ``true`` is not ``1``) and forbids
keys it does not know, so a hand-edited or damaged file is refused as a whole, with the place
that is wrong (``medgrit.adapters.store.manifest`` turns that into one line). Fields that older
manifests lack are optional; :meth:`ManifestModel.to_json` writes only the fields a model was
given, in the order declared here, which is the order a build writes them, so a file this
version wrote, read and written again, is the same JSON (an older manifest compacted from its
shard records may list a shard's keys in another order: the same JSON object, other text).

Layout (schema version 1; ``?``: optional)::

    Manifest      format?, schema_version, medgrit_version?, config, sources, generator?,
                  vocabulary?, synonyms?, vocabulary_version?, tables?, case_lists?, shards,
                  retired?, created_at?, host?, totals?, status?, updated_at?
    SourceEntry   spec, kind?, dataset?, modality?, cases?, label_maps?, label_map_sha256?,
                  label_words?, datasets?
    ShardEntry    id, cases?, case_count?, plan_sha256?, status, generation?, vocabulary?,
                  synonyms?, error?, batches?, finished_at?, rows?, files?, stats?, tokens?,
                  seconds?
    ShardRecord   status, rows?, files?, stats?, tokens?, seconds?, finished_at?, error?, id, key
    RetiredShard  id (digits), generation, cases, reason, retired_at
    Totals        rows, images_by_modality, images_by_split, qa_by_modality_task,
                  rejects_by_reason, non_finite_values, llm

``vocabulary`` holds the build's label names and ``synonyms`` the synonyms its label files give
them (``{label: [synonym, ...]}``), which every turn was read with; a shard appended later (its
``generation``) records its own. ``vocabulary_version`` is the version of the packaged words
(``medgrit.core.lexicon.VOCABULARY_VERSION``) the dataset was read with; datasets written before
it was recorded lack it.

Case lists. A shard's entry lists its ``cases``, except in a dataset of a large plan
(``medgrit.adapters.store.bookkeeping.INLINE_CASES``): there ``case_lists`` names the files
(``shards/cases-*.json``, each ``{"shards": [{"id", "cases"}, ...]}``) that hold them, and each
entry has instead ``case_count`` and ``plan_sha256`` (a digest of what it plans per case:
``bookkeeping.plan_digest``), so that the manifest stays small per shard. Readers get the cases
merged back (``bookkeeping.load_dataset``).

``config`` stays the plain JSON of ``medgrit.schemas.config.BuildConfig``: ``validate`` reports
a config that no longer validates as a problem of the dataset, not as an unreadable manifest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from medgrit.core.summary import ShardCounts, build_totals
from medgrit.schemas.tables import TABLES

Digits = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]
"""A label id or retired shard id as the manifest writes it: decimal digits."""
LabelMaps = dict[str, dict[Digits, str]]
"""``{dataset: {label id: name}}``."""
Number = int | float
"""A count or an amount of money as written (an int stays an int, a float a float)."""


class ManifestModel(BaseModel):
    """Strict, frozen, no unknown keys; change one with :meth:`evolve`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this model: the fields it was given, in declared order."""
        return self.model_dump(mode="json", exclude_unset=True)

    def evolve(self, *, drop: Iterable[str] = (), **changes: Any) -> Self:
        """A copy with ``changes`` (validated) and without the fields named in ``drop``."""
        gone = set(drop)
        values = {k: getattr(self, k) for k in self.model_fields_set if k not in gone}
        values.update(changes)
        return type(self).model_validate(values)


class DatasetEntry(ManifestModel):
    """One dataset of a source as discovered: case count, modalities, label names."""

    cases: int
    modalities: list[str]
    labels: dict[Digits, str]


class SourceEntry(ManifestModel):
    """A source of the build, with the label maps a later build compares its own with."""

    spec: str
    kind: str | None = None
    dataset: str | None = None
    modality: str | None = None
    cases: int | None = None
    label_maps: LabelMaps | None = None
    label_map_sha256: str | None = None
    label_words: LabelMaps | None = None
    datasets: dict[str, DatasetEntry] | None = None


class GeneratorEntry(ManifestModel):
    """The generator of the build: its name and template hashes (and for an LLM, the model,
    endpoint, batch mode and response format)."""

    name: str
    model: str | None = None
    base_url: str | None = None
    batch: bool | None = None
    response_format: str | None = None
    template_hash: str | None = None
    templates: dict[str, str] | None = None


class CaseEntry(ManifestModel):
    """One case of a shard's plan, and what tells the case changed since."""

    source: str
    case: str
    case_id: str
    split: str
    quota: int | None
    listed_images: int | None = None
    fingerprint: str | None = None
    content_sha256: str | None = None
    labels_per_case: bool | None = None


class ShardStats(ManifestModel):
    """Counts of one shard's rows (``medgrit.core.summary.shard_stats``)."""

    images_by_modality: dict[str, int] = {}
    images_by_split: dict[str, int] = {}
    qa_by_modality_task: dict[str, dict[str, int]] = {}
    rejects_by_reason: dict[str, int] = {}
    non_finite_values: int = 0


class Tokens(ManifestModel):
    """What a shard sent to an LLM and spent (a template shard: 0 prompt, 0 completion)."""

    requests: int | None = None
    cache_hits: int | None = None
    prompt: int = 0
    completion: int = 0
    cost_usd: Number | None = None


class ShardOutcome(ManifestModel):
    """What a finished or failed shard adds to its entry (the fields of its record)."""

    status: Literal["pending", "done", "failed"]
    rows: dict[str, int] | None = None
    files: dict[str, str] | None = None
    stats: ShardStats | None = None
    tokens: Tokens | None = None
    seconds: Number | None = None
    finished_at: str | None = None
    error: str | None = None


OUTCOME_FIELDS: tuple[str, ...] = tuple(ShardOutcome.model_fields)
"""The fields of an entry a completion record carries (and replaces when merged)."""


class ShardRecord(ShardOutcome):
    """A shard's completion record, ``shards/{id}.json``; ``key`` says what it is valid for
    (``medgrit.adapters.store.bookkeeping.record_key``)."""

    status: Literal["done", "failed"]
    id: str
    key: str


class ShardEntry(ManifestModel):
    """One shard of the plan: its cases (or, where the manifest's ``case_lists`` hold them, how
    many and their digest), and once it ran, its outcome."""

    id: str
    cases: list[CaseEntry] = []
    case_count: int | None = None
    plan_sha256: str | None = None
    status: Literal["pending", "done", "failed"]
    generation: int | None = None
    vocabulary: list[str] | None = None
    synonyms: dict[str, list[str]] | None = None
    error: str | None = None
    batches: list[str] | None = None
    finished_at: str | None = None
    rows: dict[str, int] | None = None
    files: dict[str, str] | None = None
    stats: ShardStats | None = None
    tokens: Tokens | None = None
    seconds: Number | None = None

    @model_validator(mode="after")
    def _lists_or_counts_its_cases(self) -> Self:
        if "cases" not in self.model_fields_set and (
            self.case_count is None or self.plan_sha256 is None
        ):
            raise ValueError("a shard lists its cases, or counts and digests them")
        return self

    @property
    def n_cases(self) -> int:
        """How many cases the shard holds (whether or not they are listed here)."""
        return self.case_count if self.case_count is not None else len(self.cases)

    def counts(self) -> ShardCounts:
        """What this shard adds to the build's totals."""
        return ShardCounts(
            self.status,
            self.rows or {},
            self.stats.to_json() if self.stats is not None else {},
            self.tokens.to_json() if self.tokens is not None else {},
        )

    def with_outcome(self, outcome: ShardOutcome) -> ShardEntry:
        """This entry with ``outcome`` in place of its own outcome fields."""
        given = {k: getattr(outcome, k) for k in OUTCOME_FIELDS if k in outcome.model_fields_set}
        return self.evolve(drop=OUTCOME_FIELDS, **given)


class RetiredShard(ManifestModel):
    """A shard no longer part of the dataset (its cases changed and were planned again)."""

    id: Digits
    generation: int
    cases: int
    reason: str
    retired_at: str


class LLMTotals(ManifestModel):
    """What a build sent to an LLM and spent, over all its shards (the fields of
    ``medgrit.core.summary.TOKEN_FIELDS``, in their order)."""

    requests: int = 0
    cache_hits: int = 0
    prompt: int = 0
    completion: int = 0
    cost_usd: Number = 0


class Totals(ManifestModel):
    """A build's totals (:func:`medgrit.core.summary.build_totals`)."""

    rows: dict[str, int] = {}
    images_by_modality: dict[str, int] = {}
    images_by_split: dict[str, int] = {}
    qa_by_modality_task: dict[str, dict[str, int]] = {}
    rejects_by_reason: dict[str, int] = {}
    non_finite_values: int = 0
    llm: LLMTotals | None = None

    @classmethod
    def of(cls, shards: Sequence[ShardEntry], tables: Sequence[str]) -> Totals:
        """The totals of ``shards`` (rows per table in ``tables``' order)."""
        return cls.model_validate(build_totals([s.counts() for s in shards], tables))


class Manifest(ManifestModel):
    """``dataset.json``: the build's config, sources, generator, plan and state."""

    format: str | None = None
    schema_version: int
    medgrit_version: str | None = None
    config: dict[str, Any]
    sources: list[SourceEntry] = []
    generator: GeneratorEntry | None = None
    vocabulary: list[str] | None = None
    synonyms: dict[str, list[str]] | None = None
    vocabulary_version: int | None = None
    tables: list[str] | None = None
    case_lists: list[str] | None = None
    shards: list[ShardEntry]
    retired: list[RetiredShard] | None = None
    created_at: str | None = None
    host: str | None = None
    totals: Totals | None = None
    status: str | None = None
    updated_at: str | None = None

    @model_validator(mode="after")
    def _case_lists_hold_unlisted_cases(self) -> Self:
        if self.case_lists is None and any("cases" not in s.model_fields_set for s in self.shards):
            raise ValueError("a shard whose cases are not listed needs the case_lists holding them")
        return self

    def with_shard(self, entry: ShardEntry) -> Manifest:
        """This manifest with ``entry`` in place of the entry of the same id."""
        return self.evolve(shards=[entry if s.id == entry.id else s for s in self.shards])

    def totals_now(self) -> Totals:
        """The totals of the shards as they stand."""
        return Totals.of(self.shards, tuple(TABLES))
