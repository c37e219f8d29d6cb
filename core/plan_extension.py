"""Extending a recorded plan: the shards of a dataset's manifest, and new ones for the cases its
sources gained or that changed.

A dataset whose sources gained cases since it was built is extended, never rewritten
(:func:`extend_plan`): its shards keep their ids, cases, splits and quotas; the new cases form
new shards after them, one more *generation* of the plan (the first build is generation 0).
New cases of a patient already in the dataset take that patient's split; new patients are split
so that each dataset's share of test patients stays near ``test_fraction``. The new shards are
packed as :mod:`medgrit.core.sharding` packs a first build's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from medgrit.core.cases import Case
from medgrit.core.changes import LabelMapChange, case_change, label_map_changes
from medgrit.core.fsnames import escape_name
from medgrit.core.ids import pseudonymise_case
from medgrit.core.settings import PlanSettings
from medgrit.core.shard_rows import CaseTask
from medgrit.core.sharding import (
    Fingerprint,
    allocate_images,
    assign_new_splits,
    case_task,
    plan_shards,
    shard_name,
    source_splits,
)


class PlanConflict(ValueError):
    """A recorded plan cannot be extended: cases it holds are gone from the sources, or changed
    since they were built, or a source's label map changed. The message says which, in counts
    (and changed cases' names). ``rebuildable``: ``rebuild_changed`` would build it (nothing
    is gone or unreadable)."""

    def __init__(self, message: str, rebuildable: bool = False) -> None:
        super().__init__(message)
        self.rebuildable = rebuildable


@dataclass(frozen=True)
class RecordedPlan:
    """What a dataset's manifest recorded of its plan and sources.

    Attributes:
        shards: the shard entries, in order (``id``, ``cases`` with ``source``, ``case``,
            ``case_id``, ``split``, ``quota`` and what tells a changed case; ``generation``);
            read once, in order (they may be read from files as they come).
        sources: the manifest's ``sources`` (``spec``, ``kind``, ``label_maps``,
            ``label_words``; see ``medgrit.core.changes.label_map_changes``).
        retired: entries of shards retired before (``id``, ``generation``): their ids and
            generations are never used again.
    """

    shards: Iterable[Mapping]
    sources: Sequence[Mapping] = ()
    retired: Sequence[Mapping] = ()

    @classmethod
    def of(cls, manifest: Mapping) -> RecordedPlan:
        """The recorded plan of a manifest (missing parts read as empty)."""
        retired = manifest.get("retired")
        return cls(
            manifest.get("shards") or [],
            manifest.get("sources") or [],
            retired if isinstance(retired, list) else [],
        )


@dataclass(frozen=True)
class RetiredShard:
    """A recorded shard no longer part of the dataset: a case of it changed, and its cases are
    planned again. Its id and generation are never used again.

    Attributes:
        id, generation: as recorded; cases: how many cases it held; reason: why it is retired.
    """

    id: str
    generation: int
    cases: int
    reason: str

    def record(self, retired_at: str) -> dict:
        """Its entry under ``retired`` in ``dataset.json``."""
        return {
            "id": self.id,
            "generation": self.generation,
            "cases": self.cases,
            "reason": self.reason,
            "retired_at": retired_at,
        }


@dataclass(frozen=True)
class ExtendedPlan:
    """A recorded plan with the shards of the cases new since it was made.

    ``generations``: the plan generation of each shard id (0: the first build; each extension
    that added cases is one more). ``new_cases``: cases the sources gained; ``rebuilt``: cases
    planned again because they (or a case sharing their shard) changed; ``retired``: the
    shards they were in.
    """

    plan: list[tuple[str, list[CaseTask]]]
    generations: dict[str, int]
    new_cases: int
    rebuilt: int = 0
    retired: tuple[RetiredShard, ...] = ()


def case_identity(source: str, case: str, case_id: str) -> tuple[str, str, str]:
    """How a recorded plan names a case: its source spec and name (escaped) and its id."""
    return (escape_name(source), escape_name(case), case_id)


def _listing(items: list[str]) -> str:
    return "; ".join(items[:3]) + (f"; and {len(items) - 3} more" if len(items) > 3 else "")


@dataclass
class _Review:
    """The recorded shards as they stand against the sources now (see :func:`extend_plan`).

    ``plan``/``generations``: the shards kept; ``placed``: the cases in them; ``seen``: every
    recorded case still in the sources (kept or to be built again); ``patient_split`` and
    ``recorded_quota``: as recorded; ``spent``: the images the kept shards were given;
    ``outline``: each recorded shard's id and generation, kept or retired.
    """

    plan: list[tuple[str, list[CaseTask]]] = field(default_factory=list)
    generations: dict[str, int] = field(default_factory=dict)
    placed: set[int] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    patient_split: dict[tuple[str, str], str] = field(default_factory=dict)
    recorded_quota: dict[int, int | None] = field(default_factory=dict)
    retired: list[RetiredShard] = field(default_factory=list)
    gone: int = 0
    changed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    spent: int = 0
    outline: list[tuple[str, int]] = field(default_factory=list)

    def conflict(
        self,
        relabelled: Mapping[tuple[str, str], LabelMapChange],
        n_cases: int,
        rebuild_changed: bool,
    ) -> PlanConflict | None:
        """Why the recorded plan cannot be extended, or None."""
        gone, seen = self.gone, len(self.seen)
        if gone and not seen:
            return PlanConflict(
                f"{gone} cases then, {n_cases} now: {gone} gone, {n_cases} new; none of them "
                "is there: was it built with another pseudonymisation key file, or from sources "
                "whose datasets were named otherwise (a dataset's name is part of its cases' ids)?"
            )
        # Gone and unreadable cases are refused whatever the flag: a mount that comes back, or
        # a case restored, would make a rebuild from what is readable now lose finished shards.
        problems = []
        if gone:
            problems.append(
                f"{seen + gone} cases then, {n_cases} now: {gone} gone, {n_cases - seen} new; "
                "the dataset would hold cases its sources no longer have"
            )
        if self.unreadable:
            problems.append(
                f"{len(self.unreadable)} of its cases cannot be read now "
                f"({_listing(self.unreadable)}); restore their files or mount"
            )
        if not rebuild_changed:
            problems += [str(change) for _, change in sorted(relabelled.items())]
            if self.changed:
                problems.append(
                    f"{len(self.changed)} of its cases changed since they were built "
                    f"({_listing(self.changed)})"
                )
        if not problems:
            return None
        return PlanConflict("; ".join(problems), rebuildable=not (gone or self.unreadable))


def _review(
    shards: Iterable[Mapping],
    cases: Sequence[Case],
    case_ids: list[str],
    patient_ids: list[str],
    relabelled: Mapping[tuple[str, str], LabelMapChange],
    estimate_images: Callable[[Case], int] | None,
    fingerprint: Fingerprint | None,
    rebuild_changed: bool,
) -> _Review | None:
    """Each recorded shard kept as recorded, or retired (``rebuild_changed``) when a case of it
    changed; None when ``shards`` is not a plan."""
    by_identity = {
        case_identity(c.source, c.case, cid): i
        for i, (c, cid) in enumerate(zip(cases, case_ids, strict=True))
    }
    review = _Review()
    try:
        for shard in shards:
            shard_id = str(shard["id"])
            generation = int(shard.get("generation") or 0)
            review.outline.append((shard["id"], generation))
            kept: list[tuple[int, CaseTask]] = []
            why_retired: list[str] = []
            for entry in shard["cases"]:
                i = by_identity.get(case_identity(entry["source"], entry["case"], entry["case_id"]))
                if i is None:
                    review.gone += 1
                    continue
                if i in review.seen or entry["split"] not in ("train", "test"):
                    return None
                review.seen.add(i)
                case = cases[i]
                review.patient_split[(case.dataset, patient_ids[i])] = entry["split"]
                review.recorded_quota[i] = entry.get("quota")
                now = fingerprint(case) if fingerprint else None
                listed_now = (
                    estimate_images(case)
                    if estimate_images and entry.get("listed_images") is not None
                    else None
                )
                change = case_change(entry, listed_now, now)
                relabel = relabelled.get((escape_name(case.source), escape_name(case.dataset)))
                if change is not None and change.unreadable:
                    review.unreadable.append(f"{entry['case']}: {change.why}")
                elif relabel is not None:
                    why_retired.append(relabel.reason)
                elif change is not None:
                    review.changed.append(f"{entry['case']}: {change.why}")
                    why_retired.append(f"a case changed ({change.why})")
                # What tells a change later is refreshed (a case verified by its bytes after a
                # copy that did not keep times is compared by the copy's times from now on).
                stamp, content = now if now is not None else (None, None)
                task = CaseTask(
                    case,
                    case_ids[i],
                    entry["split"],
                    entry.get("quota"),
                    entry.get("listed_images"),
                    stamp or entry.get("fingerprint"),
                    content or entry.get("content_sha256"),
                )
                kept.append((i, task))
            if why_retired and rebuild_changed:
                review.retired.append(
                    RetiredShard(shard_id, generation, len(shard["cases"]), why_retired[0])
                )
                continue
            for i, task in kept:
                review.placed.add(i)
                review.spent += int(task.quota or 0)
            review.plan.append((shard_id, [task for _, task in kept]))
            review.generations[shard_id] = generation
    except (KeyError, TypeError, ValueError):
        return None
    return review


def extend_plan(
    recorded: RecordedPlan,
    cases: Sequence[Case],
    config: PlanSettings,
    key: bytes,
    count_images: Callable[[Case], int],
    estimate_images: Callable[[Case], int] | None = None,
    fingerprint: Fingerprint | None = None,
    rebuild_changed: bool = False,
) -> ExtendedPlan | None:
    """The recorded plan of a dataset, with new shards for the cases its sources gained.

    The recorded shards stay as they are (ids, cases in order, splits, quotas). Cases not in
    them are planned as :func:`plan_build` plans cases, into shards numbered after the last
    recorded one: a new case of a patient already in the dataset takes that patient's split;
    new patients take the split their source assigns (``Case.split``), else are split by
    :func:`assign_new_splits`; under ``max_images`` the new cases share what the recorded quotas
    left of it.

    A recorded case that changed since it was built (its listing, its fingerprint, or its
    source's label map or wording: ``medgrit.core.changes``) is a :class:`PlanConflict`, unless
    ``rebuild_changed``: then every shard holding such a case is retired (its id never used
    again) and its cases are planned again, with their recorded splits and (under
    ``max_images``) quotas, as new shards. A recorded case gone from the sources, or whose
    files cannot be read now, is a :class:`PlanConflict` either way.

    Args:
        recorded: the dataset's recorded plan.
        cases: every case of the build's sources now, in source order.
        config, key, count_images, estimate_images: as for :func:`plan_build`.
        fingerprint: each case's fingerprint now (None: fingerprints are not compared).
        rebuild_changed: retire and rebuild what changed instead of refusing.

    Returns:
        The extended plan, or None when ``recorded`` is not a plan.

    Raises:
        PlanConflict: see above; also when none of the recorded cases is in the sources.
    """
    case_ids = [pseudonymise_case(c.dataset, c.case, key) for c in cases]
    patient_ids = [pseudonymise_case(c.dataset, c.patient or c.case, key) for c in cases]
    relabelled = label_map_changes(recorded.sources, label_examples(cases))
    ids = (case_ids, patient_ids)
    review = _review(
        recorded.shards, cases, *ids, relabelled, estimate_images, fingerprint, rebuild_changed
    )
    if review is None:
        return None
    conflict = review.conflict(relabelled, len(cases), rebuild_changed)
    if conflict is not None:
        raise conflict
    new = [i for i in range(len(cases)) if i not in review.placed]
    patients = [(c.dataset, p) for c, p in zip(cases, patient_ids, strict=True)]
    patient_split = _splits_with_new(cases, patients, new, review.patient_split, config)
    quotas = _quotas_of_new_cases(cases, new, review, config.max_images, count_images)
    planned = [i for i in new if quotas[i] != 0]
    tasks = [
        case_task(
            cases[i],
            case_ids[i],
            patient_split[patients[i]],
            quotas[i],
            estimate_images,
            fingerprint,
        )
        for i in planned
    ]
    retired = tuple(review.retired)
    if not tasks:
        return ExtendedPlan(review.plan, review.generations, 0, 0, retired)
    shards, generation = _new_shards(tasks, review.outline, recorded.retired, config)
    plan = [*review.plan, *shards]
    generations = {**review.generations, **dict.fromkeys((id_ for id_, _ in shards), generation)}
    rebuilt = sum(1 for i in planned if i in review.seen)
    return ExtendedPlan(plan, generations, len(planned) - rebuilt, rebuilt, retired)


def _splits_with_new(
    cases: Sequence[Case],
    patients: Sequence[tuple[str, str]],
    new: Sequence[int],
    recorded: Mapping[tuple[str, str], str],
    config: PlanSettings,
) -> dict[tuple[str, str], str]:
    """The split of every patient, the new cases' (``new``: their indices) included: a recorded
    patient keeps its own; a new one takes the split its source assigns, else is drawn."""
    assigned = source_splits([cases[i] for i in new], [patients[i] for i in new])
    return _split_new_patients({**assigned, **recorded}, [patients[i] for i in new], config)


def _split_new_patients(
    patient_split: Mapping[tuple[str, str], str],
    patients: Iterable[tuple[str, str]],
    config: PlanSettings,
) -> dict[tuple[str, str], str]:
    """The recorded split of each (dataset, patient id), and one for each of ``patients`` not
    recorded: :func:`assign_new_splits` against the recorded splits of its dataset."""
    fresh = sorted(set(patients) - set(patient_split))
    kept_splits: dict[str, list[str]] = {}
    for (dataset, _), split in patient_split.items():
        kept_splits.setdefault(dataset, []).append(split)
    splits = assign_new_splits(
        [p for _, p in fresh],
        [d for d, _ in fresh],
        kept_splits,
        config.test_fraction,
        config.split_seed,
    )
    return {**patient_split, **dict(zip(fresh, splits, strict=True))}


def _quotas_of_new_cases(
    cases: Sequence[Case],
    new: list[int],
    review: _Review,
    max_images: int | None,
    count_images: Callable[[Case], int],
) -> dict[int, int | None]:
    """The image quota of each case to plan, by index (None: no cap; 0: not planned).

    A case built again keeps the images it was given (as many as it holds now); the cases new
    to the dataset share what is left of ``max_images``.
    """
    quotas: dict[int, int | None] = dict.fromkeys(new)
    if max_images is None:
        return quotas
    for i in new:
        if i in review.seen:
            quotas[i] = min(int(review.recorded_quota[i] or 0), count_images(cases[i]))
    left = max(0, max_images - review.spent - sum(q or 0 for q in quotas.values()))
    added = [i for i in new if i not in review.seen]
    taken = allocate_images((count_images(cases[i]) for i in added), len(added), left)
    quotas.update(zip(added, [*taken, *([0] * (len(added) - len(taken)))], strict=True))
    return quotas


def _new_shards(
    tasks: list[CaseTask],
    outline: Sequence[tuple[object, int]],
    retired: Sequence[Mapping],
    config: PlanSettings,
) -> tuple[list[tuple[str, list[CaseTask]]], int]:
    """``tasks`` packed into shards sized by work, numbered after every recorded shard
    (``outline``: each one's id and generation; ``retired`` ones too), and the plan generation
    after theirs that they belong to."""
    work = [t.quota if t.quota is not None else (t.listed or 1) for t in tasks]
    every = [*outline, *((s["id"], int(s.get("generation") or 0)) for s in retired)]
    first = 1 + max((int(str(shard)) for shard, _ in every), default=-1)
    generation = 1 + max((g for _, g in every), default=-1)
    ranges = plan_shards(work, config.images_per_shard, config.cases_per_shard)
    shards = [(shard_name(first + n), tasks[start:stop]) for n, (start, stop) in enumerate(ranges)]
    return shards, generation


def label_examples(cases: Iterable[Case]) -> list[Case]:
    """The first case of each source, dataset and set of label objects (names, as written,
    groups), in order: what ``medgrit.core.changes.label_maps_of`` reads of all the cases (it
    reads each label object once), without a list of every case."""
    firsts: dict[tuple, Case] = {}  # holds each case's label objects: their ids stay theirs
    for case in cases:
        labels = (case.labels, case.written_labels, case.label_groups)
        firsts.setdefault((case.source, type(case), case.dataset, *map(id, labels)), case)
    return list(firsts.values())
