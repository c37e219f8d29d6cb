"""Deterministic plans: which cases form which shard, which cases are test, how many images each.

Everything here depends only on the ordered case list and the config, never on run order, so a
rerun or a resume draws the same plan.

A dataset whose sources gained cases since it was built is extended, never rewritten
(:func:`extend_plan`): its shards keep their ids, cases, splits and quotas; the new cases form
new shards after them, one more *generation* of the plan (the first build is generation 0).
New cases of a patient already in the dataset take that patient's split; new patients are split
so that each dataset's share of test patients stays near ``test_fraction``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from medgrit.core.cases import Case
from medgrit.core.changes import LabelMapChange, case_change, label_map_changes
from medgrit.core.fsnames import escape_name
from medgrit.core.ids import pseudonymise_case, unit_hash
from medgrit.core.shard_rows import CaseTask
from medgrit.schemas.config import BuildConfig


def plan_shards(
    work: Sequence[int], images_per_shard: int, cases_per_shard: int | None = None
) -> list[tuple[int, int]]:
    """Contiguous [start, stop) case ranges holding about ``images_per_shard`` images each.

    Cases are packed in order: a shard takes the next case while its images stay within the
    target (a case larger than the target gets a shard of its own; no case is split), and at
    most ``cases_per_shard`` cases when that is set.

    Args:
        work: the (estimated) images of each case, in plan order.
        images_per_shard: the target number of images per shard.
        cases_per_shard: at most this many cases per shard (None: no cap).
    """
    if images_per_shard < 1:
        raise ValueError("images_per_shard must be >= 1")
    if cases_per_shard is not None and cases_per_shard < 1:
        raise ValueError("cases_per_shard must be >= 1")
    cap = cases_per_shard or max(1, len(work))
    ranges: list[tuple[int, int]] = []
    start, images = 0, 0
    for i, n in enumerate(work):
        n = max(1, int(n))
        if i > start and (images + n > images_per_shard or i - start >= cap):
            ranges.append((start, i))
            start, images = i, 0
        images += n
    if start < len(work):
        ranges.append((start, len(work)))
    return ranges


def shard_name(index: int) -> str:
    """Zero-padded shard id used in file names (``part-00003.parquet``)."""
    return f"{index:05d}"


def assign_splits(
    case_ids: Sequence[str], groups: Sequence[str], test_fraction: float, seed: int = 0
) -> list[str]:
    """``train`` or ``test`` per case, split by case and stratified by group (dataset).

    Within each group the cases are ordered by a keyed hash of their id and the first
    ``round(n * test_fraction)`` go to test, at least one when the group has two or more cases
    and the fraction is positive, and never all of them.

    Args:
        case_ids: pseudonymous case ids.
        groups: the group (dataset) of each case, same length.
        test_fraction: share of cases held out, in [0, 1).
        seed: split seed.
    """
    return assign_new_splits(case_ids, groups, {}, test_fraction, seed)


def _test_target(n: int, test_fraction: float) -> int:
    """Test members of a group of ``n``: the fraction rounded, at least one from two members on,
    never all of them."""
    if n < 2 or test_fraction == 0.0:
        return 0
    return min(max(1, round(n * test_fraction)), n - 1)


def assign_new_splits(
    case_ids: Sequence[str],
    groups: Sequence[str],
    kept: Mapping[str, Sequence[str]],
    test_fraction: float,
    seed: int = 0,
) -> list[str]:
    """``train`` or ``test`` for new members of groups that may already hold members whose
    split is fixed (``kept``: per group, the splits of its members already placed).

    Each group's test members, kept and new, come to its target (see :func:`assign_splits`)
    where the kept ones allow it; the new members ranked first by a keyed hash of their id fill
    what is missing. With nothing kept this is :func:`assign_splits`.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    if len(case_ids) != len(groups):
        raise ValueError("case_ids and groups differ in length")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = ["train"] * len(case_ids)
    for group, idx in members.items():
        before = list(kept.get(group, ()))
        n = len(idx) + len(before)
        k = _test_target(n, test_fraction) - before.count("test")
        k = max(0, min(k, len(idx)))
        if before.count("test") + k == n and n > 1:  # never all of a group
            k -= 1
        ranked = sorted(idx, key=lambda i: (unit_hash("split", seed, case_ids[i]), case_ids[i]))
        for i in ranked[:k]:
            out[i] = "test"
    return out


def allocate_images(counts: Iterable[int], n_cases: int, max_images: int) -> list[int]:
    """Share a cap of ``max_images`` over cases taken in order.

    Each case gets ``min(available, ceil(remaining / cases_left))``, so the budget spreads over
    cases and what a small case leaves rolls on to the next. ``counts`` is consumed lazily: it is
    only read until the budget is spent. What is still unspent after the last case is shared
    over the cases that have images to spare, in rounds, so the cap is reached whenever the
    cases hold enough images.

    Returns:
        Images to take per case, for the cases read (cases after the returned list get none).
    """
    out: list[int] = []
    seen: list[int] = []
    remaining, left = max_images, n_cases
    counts = iter(counts)
    while remaining > 0 and left > 0:
        available = next(counts, None)
        if available is None:
            break
        take = min(int(available), -(-remaining // left))
        seen.append(int(available))
        out.append(take)
        remaining -= take
        left -= 1
    while remaining > 0:
        spare = [i for i, (n, t) in enumerate(zip(seen, out, strict=True)) if n > t]
        if not spare:
            break
        share = -(-remaining // len(spare))
        for i in spare:
            extra = min(seen[i] - out[i], share, remaining)
            out[i] += extra
            remaining -= extra
    return out


Fingerprint = Callable[[Case], "tuple[str, str | None]"]
"""A case's (fingerprint, content digest or None) now, as ``medgrit.adapters.sources.
fingerprints`` computes them; ``medgrit.core.changes.case_change`` compares them."""


def plan_build(
    cases: Sequence[Case],
    config: BuildConfig,
    key: bytes,
    count_images: Callable[[Case], int],
    estimate_images: Callable[[Case], int] | None = None,
    fingerprint: Fingerprint | None = None,
) -> list[tuple[str, list[CaseTask]]]:
    """Case ids, splits, image quotas and shards, deterministic from the case list and config.

    Shards are sized by work: about ``config.images_per_shard`` images each (a case's quota
    when ``max_images`` gave it one, else ``estimate_images``), never splitting a case.

    Args:
        cases: every case of the build's sources, in source order.
        config: the build config.
        key: the pseudonymisation key.
        count_images: how many images a case gives without a quota; called (on the first
            cases only) when ``config.max_images`` spreads a cap.
        estimate_images: a cheap estimate of the images of a case (from its listing or
            header, without reading its pixels); default 1 per case.
        fingerprint: what each planned case records to tell later that it changed.
    """
    case_ids = [pseudonymise_case(c.dataset, c.case, key) for c in cases]
    # Split by patient: all cases of one patient land on the same side.
    patients = [(c.dataset, pseudonymise_case(c.dataset, c.patient or c.case, key)) for c in cases]
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
    quotas: list[int | None] = [None] * len(cases)
    if config.max_images is not None:
        taken = allocate_images((count_images(c) for c in cases), len(cases), config.max_images)
        quotas = [*taken, *([0] * (len(cases) - len(taken)))]
    tasks = [
        _task(case, cid, split, quota, estimate_images, fingerprint)
        for case, cid, split, quota in zip(cases, case_ids, splits, quotas, strict=True)
        if quota != 0
    ]
    work = [t.quota if t.quota is not None else (t.listed or 1) for t in tasks]
    ranges = plan_shards(work, config.images_per_shard, config.cases_per_shard)
    return [(shard_name(i), tasks[start:stop]) for i, (start, stop) in enumerate(ranges)]


def _task(
    case: Case,
    case_id: str,
    split: str,
    quota: int | None,
    estimate_images: Callable[[Case], int] | None,
    fingerprint: Fingerprint | None,
) -> CaseTask:
    stamp, content = fingerprint(case) if fingerprint else (None, None)
    listed = estimate_images(case) if estimate_images else None
    return CaseTask(case, case_id, split, quota, listed, stamp, content)


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
            ``case_id``, ``split``, ``quota`` and what tells a changed case; ``generation``).
        sources: the manifest's ``sources`` (``spec``, ``kind``, ``label_maps``,
            ``label_words``; see ``medgrit.core.changes.label_map_changes``).
        retired: entries of shards retired before (``id``, ``generation``): their ids and
            generations are never used again.
    """

    shards: Sequence[Mapping]
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
    ``recorded_quota``: as recorded; ``spent``: the images the kept shards were given.
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
    shards: Sequence[Mapping],
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
    config: BuildConfig,
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
    new patients are split by :func:`assign_new_splits`; under ``max_images`` the new cases
    share what the recorded quotas left of it.

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
    relabelled = label_map_changes(recorded.sources, cases)
    review = _review(
        recorded.shards,
        cases,
        case_ids,
        patient_ids,
        relabelled,
        estimate_images,
        fingerprint,
        rebuild_changed,
    )
    if review is None:
        return None
    conflict = review.conflict(relabelled, len(cases), rebuild_changed)
    if conflict is not None:
        raise conflict
    plan, generations, retired = review.plan, review.generations, review.retired
    placed, seen, patient_split = review.placed, review.seen, review.patient_split
    recorded_quota, spent = review.recorded_quota, review.spent

    new = [i for i in range(len(cases)) if i not in placed]
    fresh = sorted({(cases[i].dataset, patient_ids[i]) for i in new} - set(patient_split))
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
    patient_split.update(zip(fresh, splits, strict=True))

    quotas: dict[int, int | None] = dict.fromkeys(new)
    if config.max_images is not None:
        # A case built again keeps the images it was given (as many as it holds now); the new
        # cases share what is left of the cap.
        for i in new:
            if i in seen:
                quotas[i] = min(int(recorded_quota[i] or 0), count_images(cases[i]))
        left = max(0, config.max_images - spent - sum(q or 0 for q in quotas.values()))
        added = [i for i in new if i not in seen]
        taken = allocate_images((count_images(cases[i]) for i in added), len(added), left)
        quotas.update(zip(added, [*taken, *([0] * (len(added) - len(taken)))], strict=True))
    planned = [i for i in new if quotas[i] != 0]
    tasks = [
        _task(
            cases[i],
            case_ids[i],
            patient_split[(cases[i].dataset, patient_ids[i])],
            quotas[i],
            estimate_images,
            fingerprint,
        )
        for i in planned
    ]
    rebuilt = sum(1 for i in planned if i in seen)
    new_cases = len(planned) - rebuilt
    if not tasks:
        return ExtendedPlan(plan, generations, 0, 0, tuple(retired))
    work = [t.quota if t.quota is not None else (t.listed or 1) for t in tasks]
    every = [*recorded.shards, *recorded.retired]
    first = 1 + max((int(str(s["id"])) for s in every), default=-1)
    generation = 1 + max((int(s.get("generation") or 0) for s in every), default=-1)
    for n, (start, stop) in enumerate(
        plan_shards(work, config.images_per_shard, config.cases_per_shard)
    ):
        shard_id = shard_name(first + n)
        plan.append((shard_id, tasks[start:stop]))
        generations[shard_id] = generation
    return ExtendedPlan(plan, generations, new_cases, rebuilt, tuple(retired))
