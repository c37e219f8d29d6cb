"""Deterministic plans: which cases form which shard, which cases are test, how many images each.

Everything here depends only on the ordered case list and the config, never on run order, so a
rerun or a resume draws the same plan. A dataset whose sources gained cases since it was built is
extended by :mod:`medgrit.core.plan_extension`, which packs the new cases with these functions.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from medgrit.core.cases import Case
from medgrit.core.fsnames import name_bytes
from medgrit.core.ids import unit_hash
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

Fingerprints = Callable[[Sequence[Case]], "Sequence[tuple[str, str | None]]"]
""":data:`Fingerprint` of several cases at once, in order (``medgrit.adapters.sources.
fingerprints.fingerprint_cases``)."""


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

    This is :func:`plan_cases`'s plan as a list (a :class:`CaseTask` per planned case).

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
    batch = None if fingerprint is None else (lambda refs: [fingerprint(c) for c in refs])
    return list(plan_cases(cases, config, key, count_images, estimate_images, batch))


class CompactPlan(Sequence[tuple[str, list[CaseTask]]]):
    """A plan held in arrays, read as the list of ``(shard id, case tasks)`` that
    :func:`plan_build` returns: a shard's :class:`CaseTask` objects (and fingerprints) are made
    when it is read, so a plan of millions of cases holds no object per case.

    Planned case ``j`` (in plan order) is ``cases[index[j]]`` (no ``index``: ``cases[j]``,
    every case is planned); ``case_ids[j]`` is its id (the
    16 hex digits of :func:`~medgrit.core.ids.pseudonymise_case` as an unsigned 64-bit
    number), ``test[j]`` its split (test, else train), ``quotas[j]`` its image quota (None: no
    cap) and ``listed[j]`` the images its listing shows (None: not estimated). Shard ``s``
    (``shard_name(s)``) holds planned cases ``bounds[s]:bounds[s + 1]``. ``label_cases``: the
    listing index of one planned case per distinct set of label names and synonyms (what a
    build's vocabulary is made of).

    Memory: the listing ``cases`` (its sources hold it anyway), 17 bytes per planned case (33
    under a quota, with ``index``) and 8 per shard.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        index: np.ndarray | None,
        case_ids: np.ndarray,
        test: np.ndarray,
        quotas: np.ndarray | None,
        listed: np.ndarray | None,
        bounds: np.ndarray,
        label_cases: Sequence[int] = (),
        fingerprints: Fingerprints | None = None,
    ) -> None:
        self.cases, self.index, self.case_ids, self.test = cases, index, case_ids, test
        self.quotas, self.listed, self.bounds = quotas, listed, bounds
        self.label_cases, self.fingerprints = tuple(label_cases), fingerprints

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @overload
    def __getitem__(self, shard: int) -> tuple[str, list[CaseTask]]: ...

    @overload
    def __getitem__(self, shard: slice) -> list[tuple[str, list[CaseTask]]]: ...

    def __getitem__(self, shard: int | slice):  # type: ignore[override]
        if isinstance(shard, slice):
            return [self[s] for s in range(*shard.indices(len(self)))]
        if shard < 0:
            shard += len(self)
        if not 0 <= shard < len(self):
            raise IndexError("shard out of range")
        return shard_name(shard), self.tasks(shard)

    def __iter__(self) -> Iterator[tuple[str, list[CaseTask]]]:
        for shard in range(len(self)):
            yield shard_name(shard), self.tasks(shard)

    def tasks(self, shard: int, fingerprints: bool = True) -> list[CaseTask]:
        """The tasks of shard number ``shard``; ``fingerprints``: with each case's fingerprint
        taken now (False: without, for work that does not record them)."""
        lo, hi = int(self.bounds[shard]), int(self.bounds[shard + 1])
        if self.index is None:
            refs = list(self.cases[lo:hi])
        else:
            refs = [self.cases[i] for i in self.index[lo:hi].tolist()]
        n = len(refs)
        stamps: Sequence[tuple[str | None, str | None]] = [(None, None)] * n
        if fingerprints and self.fingerprints is not None:
            stamps = self.fingerprints(refs)
        quotas = self.quotas[lo:hi].tolist() if self.quotas is not None else [None] * n
        listed = self.listed[lo:hi].tolist() if self.listed is not None else [None] * n
        rows = zip(
            refs,
            self.case_ids[lo:hi].tolist(),
            self.test[lo:hi].tolist(),
            quotas,
            listed,
            stamps,
            strict=True,
        )
        return [
            CaseTask(ref, f"{cid:016x}", "test" if test else "train", quota, seen, *stamp)
            for ref, cid, test, quota, seen, stamp in rows
        ]


def plan_cases(
    cases: Sequence[Case],
    config: PlanSettings,
    key: bytes,
    count_images: Callable[[Case], int],
    estimate_images: Callable[[Case], int] | None = None,
    fingerprints: Fingerprints | None = None,
) -> CompactPlan:
    """The plan of :func:`plan_build` (the same shards, cases, splits and quotas), held compact.

    ``cases`` is read once in order (a source may make its cases as they are read), and
    again by index when a shard's tasks are made; ``count_images`` only under
    ``config.max_images``. Peak memory beyond the listing: about 100 bytes per case, while the
    splits are drawn.

    Raises:
        ValueError: ``config.test_fraction`` is not in [0, 1), or a shard size is below 1.
    """
    scan = _scan_cases(cases, key, estimate_images)
    test = _draw_test(scan, config)
    case_ids, listed, label_codes = scan.case_ids, scan.listed, scan.label_codes
    del scan  # its patients, datasets and assigned splits are drawn: their memory goes
    n = len(test)
    planned = None  # every case
    quotas = None
    if config.max_images is not None:
        taken = allocate_images((count_images(c) for c in cases), n, config.max_images)
        every = np.zeros(n, np.int64)
        every[: len(taken)] = taken
        planned = np.flatnonzero(every)
        quotas = every[planned]
        case_ids, test = case_ids[planned], test[planned]
        listed = listed[planned] if listed is not None else None
        label_codes = label_codes[planned]
    if quotas is not None:
        work = quotas
    elif listed is not None:
        work = np.where(listed > 0, listed, 1)  # a task's ``listed or 1``
    else:
        work = np.ones(n, np.int64)
    ranges = plan_shards(work.tolist(), config.images_per_shard, config.cases_per_shard)
    del work
    bounds = np.array([0, *(stop for _, stop in ranges)], np.int64)
    _, first = np.unique(label_codes, return_index=True)
    label_cases = sorted((first if planned is None else planned[first]).tolist())
    return CompactPlan(
        cases, planned, case_ids, test, quotas, listed, bounds, label_cases, fingerprints
    )


@dataclass(frozen=True, eq=False)
class _Scan:
    """What one pass over the listing finds of each case: its id and its patient's (as
    numbers), its dataset (a code), the split its source assigns (2 test, 1 train, 0 none),
    its listed images, and its set of label names and synonyms (a code)."""

    case_ids: np.ndarray
    patients: np.ndarray
    groups: np.ndarray
    assigned: np.ndarray
    listed: np.ndarray | None
    label_codes: np.ndarray


def _scan_cases(
    cases: Sequence[Case], key: bytes, estimate_images: Callable[[Case], int] | None
) -> _Scan:
    """One pass over ``cases`` (see :class:`_Scan`)."""
    n = len(cases)
    case_ids, patients = np.empty(n, np.uint64), np.empty(n, np.uint64)
    groups, label_codes = np.empty(n, np.int32), np.empty(n, np.int32)
    assigned = np.zeros(n, np.int8)
    listed = np.empty(n, np.int64) if estimate_images is not None else None
    datasets: dict[str, int] = {}
    label_sets: dict[tuple, int] = {}
    last: tuple = (None, None, 0)  # the label objects of the case before, and their code
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    for i, case in enumerate(cases):
        dataset, name, patient = case.dataset, case.case, case.patient
        cid = _id_number(keyed, dataset, name)
        pid = cid if not patient or patient == name else _id_number(keyed, dataset, patient)
        case_ids[i], patients[i] = cid, pid
        groups[i] = datasets.setdefault(dataset, len(datasets))
        if case.split:
            assigned[i] = 2 if case.split == "test" else 1
        if listed is not None:
            listed[i] = estimate_images(case)  # type: ignore[misc]
        labels, synonyms = case.labels, case.synonyms
        if labels is not last[0] or synonyms is not last[1]:
            last = (labels, synonyms, label_sets.setdefault((labels, synonyms), len(label_sets)))
        label_codes[i] = last[2]
    return _Scan(case_ids, patients, groups, assigned, listed, label_codes)


def _draw_test(scan: _Scan, config: PlanSettings) -> np.ndarray:
    """Whether each case is test, drawn by patient as :func:`plan_build` says: the patients of
    each dataset whose source assigns no split are ranked by a keyed hash of their id (then
    the id) and the first go to test, as :func:`assign_new_splits` draws them."""
    if not 0.0 <= config.test_fraction < 1.0:
        raise ValueError("test_fraction must be in [0, 1)")
    n = len(scan.case_ids)
    if n == 0:
        return np.zeros(0, bool)
    order = np.lexsort((scan.patients, scan.groups))
    groups, pids = scan.groups[order], scan.patients[order]
    first = np.ones(n, bool)
    first[1:] = (groups[1:] != groups[:-1]) | (pids[1:] != pids[:-1])
    starts = np.flatnonzero(first)
    u_groups, u_pids = groups[starts], pids[starts]
    decided = np.maximum.reduceat(scan.assigned[order], starts)
    u_test = decided == 2
    edges = np.flatnonzero(np.r_[True, u_groups[1:] != u_groups[:-1], True])
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        _draw_group(u_test[lo:hi], u_pids[lo:hi], decided[lo:hi], config)
    patient_of = np.empty(n, np.intp)
    patient_of[order] = np.cumsum(first) - 1
    return u_test[patient_of]


def _draw_group(
    test: np.ndarray, pids: np.ndarray, decided: np.ndarray, config: PlanSettings
) -> None:
    """Mark in ``test`` (a view) the drawn test patients of one dataset (sorted by id, with the
    split their source assigned: ``decided``), as :func:`assign_new_splits` does."""
    undecided = np.flatnonzero(decided == 0)
    m = len(undecided)
    if m == 0:
        return
    before_test = int(np.count_nonzero(decided == 2))
    total = len(decided)
    k = _test_target(total, config.test_fraction) - before_test
    k = max(0, min(k, m))
    if before_test + k == total and total > 1:  # never all of a group
        k -= 1
    if k == 0:
        return
    drawn = pids[undecided]
    prefix = hashlib.sha256(name_bytes(f"split\x1f{config.split_seed}\x1f"))
    hashes = np.array([_split_hash(prefix, f"{p:016x}") for p in drawn.tolist()])
    ranked = undecided[np.lexsort((drawn, hashes))]
    test[ranked[:k]] = True


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


def _id_number(keyed: hmac.HMAC, dataset: str, case: str) -> int:
    """:func:`~medgrit.core.ids.pseudonymise_case` of ``dataset`` and ``case`` under the key
    of ``keyed`` (an HMAC of no message yet), as the number its 16 hex digits write."""
    mac = keyed.copy()
    mac.update(name_bytes(f"{dataset}\x1f{case}"))
    return int.from_bytes(mac.digest()[:8], "big")


def _split_hash(prefix: hashlib._Hash, case_id: str) -> float:
    """``unit_hash("split", seed, case_id)`` (``medgrit.core.ids``), ``prefix`` being the
    sha256 of ``split\x1f{seed}\x1f``."""
    digest = prefix.copy()
    digest.update(name_bytes(case_id))
    return int.from_bytes(digest.digest()[:8], "big") / float(1 << 64)
