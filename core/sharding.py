"""Deterministic plans: which cases form which shard, which cases are test, how many images each.

Everything here depends only on the ordered case list and the config, never on run order, so a
rerun or a resume draws the same plan. A dataset whose sources gained cases since it was built is
extended by :mod:`medgrit.core.plan_extension`, which packs the new cases with these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from medgrit.core.cases import Case
from medgrit.core.ids import pseudonymise_case, unit_hash
from medgrit.core.settings import PlanSettings
from medgrit.core.shard_rows import CaseTask


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


def source_splits(
    cases: Sequence[Case], patients: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The split of each patient (its ``(dataset, patient id)`` in ``patients``, one per case)
    whose source assigns one (``Case.split``): ``test`` when the source puts any of its cases
    there, else ``train``. Patients no source assigns are left out: their split is drawn."""
    decided: dict[tuple[str, str], str] = {}
    for case, patient in zip(cases, patients, strict=True):
        if case.split and decided.get(patient) != "test":
            decided[patient] = "test" if case.split == "test" else "train"
    return decided


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
    config: PlanSettings,
    key: bytes,
    count_images: Callable[[Case], int],
    estimate_images: Callable[[Case], int] | None = None,
    fingerprint: Fingerprint | None = None,
) -> list[tuple[str, list[CaseTask]]]:
    """Case ids, splits, image quotas and shards, deterministic from the case list and config.

    Shards are sized by work: about ``config.images_per_shard`` images each (a case's quota
    when ``max_images`` gave it one, else ``estimate_images``), never splitting a case.

    Splits go by patient. A patient whose source assigns its split (``Case.split``:
    TotalSegmentator's ``meta.csv``) keeps it; the others are drawn by
    :func:`assign_new_splits`, counting the assigned ones of their dataset as kept (with none
    assigned, as :func:`assign_splits` draws them).

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
    # Split by patient: all cases of one patient land on the same side. Patients whose source
    # assigns their split keep it; the others are drawn around them.
    patients = [(c.dataset, pseudonymise_case(c.dataset, c.patient or c.case, key)) for c in cases]
    decided = source_splits(cases, patients)
    kept: dict[str, list[str]] = {}
    for (dataset, _), split in decided.items():
        kept.setdefault(dataset, []).append(split)
    unique = sorted(set(patients) - set(decided))
    ids, groups = [p for _, p in unique], [d for d, _ in unique]
    drawn = assign_new_splits(ids, groups, kept, config.test_fraction, config.split_seed)
    patient_split = {**dict(zip(unique, drawn, strict=True)), **decided}
    splits = [patient_split[p] for p in patients]
    quotas: list[int | None] = [None] * len(cases)
    if config.max_images is not None:
        taken = allocate_images((count_images(c) for c in cases), len(cases), config.max_images)
        quotas = [*taken, *([0] * (len(cases) - len(taken)))]
    tasks = [
        case_task(case, cid, split, quota, estimate_images, fingerprint)
        for case, cid, split, quota in zip(cases, case_ids, splits, quotas, strict=True)
        if quota != 0
    ]
    work = [t.quota if t.quota is not None else (t.listed or 1) for t in tasks]
    ranges = plan_shards(work, config.images_per_shard, config.cases_per_shard)
    return [(shard_name(i), tasks[start:stop]) for i, (start, stop) in enumerate(ranges)]


def case_task(
    case: Case,
    case_id: str,
    split: str,
    quota: int | None,
    estimate_images: Callable[[Case], int] | None,
    fingerprint: Fingerprint | None,
) -> CaseTask:
    """The task of one planned case, with its listed images and fingerprint as they are now."""
    stamp, content = fingerprint(case) if fingerprint else (None, None)
    listed = estimate_images(case) if estimate_images else None
    return CaseTask(case, case_id, split, quota, listed, stamp, content)
