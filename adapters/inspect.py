"""What a build would read from its sources, without building: :func:`inspect_sources`.

The sources are opened and planned as a build opens and plans them (the same listing, case ids,
splits and ``--max-images`` quotas), and each case read goes through the build's own per-case
pipeline (``medgrit.core.pipeline.build_case``) up to its image, region and reject rows; no PNG
is encoded, no text generated, nothing written. So the counts are the build's for the same
options: the images it writes (an image whose every turn fails verification is dropped too,
which the template generator rarely does), the regions on them, and the rows its ``rejects``
table gets at the ``load`` and ``regions`` stages, with their reasons
(``medgrit.core.vocab.RejectReason``). Prefect is not imported.

Large collections are sampled: ``sample`` cases are read, shared over the sources in proportion
to their cases taken (at least one each), spread evenly within each; the listing facts (cases,
splits, modalities, images its headers show) cover every case all the same.

Privacy: reject examples give what the build's reject rows give (``source``: dataset, the case's
reference (a file name, or a DICOM case's pseudonym), slice; ``detail``), never more. Paths are
escaped (``medgrit.core.fsnames.escape_name``).

The JSON of :meth:`Inspection.to_json` (``format`` ``medgrit-inspect/1``)::

    {"format": "medgrit-inspect/1",
     "options": {"plane", "slice_stride", "max_slices_per_case", "min_area", "max_images",
                 "modality", "channels", "label_names", "test_fraction"},
     "sampled": bool,            # true: counts from some of the cases taken
     "sources": [{"spec": "KIND:PATH", "kind": "nnunet", **SUMMARY}, ...],
     "total": SUMMARY}

    SUMMARY = {
     "datasets": ["Liver", ...],
     "cases": {"listed", "taken" (by --max-images), "read", "train", "test"},
     "images": {"total", "by_plane": {"axial": n, "2d": n}, "listed" (slices and images the
                listings and headers show under the plane, stride and cap, with foreground or
                not, of every case taken)},
     "modalities": [{"modality", "sequence" (MR sequence as the source names it, or null),
                     "cases" (taken), "images"}],
     "labels": [{"dataset", "label" (medgrit's words), "written" (as the source writes it),
                 "images" (images it is on), "instances" (regions)}],
     "rejects": [{"reason", "stage", "count", "examples": [{"source", "detail"}]}]}

Labels listed by the cases taken but on no image read have zero counts. Lists are sorted:
modalities and labels by name, rejects by count (most first).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from medgrit.adapters.planning import SourceListing
from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.adapters.sources import estimate_images, load_case
from medgrit.core.cases import Case, LoadedCase, Source
from medgrit.core.fsnames import escape_name
from medgrit.core.pipeline import ShardIO, build_case, count_case_images
from medgrit.core.shard_rows import CaseTask, ShardRows, guarded
from medgrit.core.sharding import plan_build
from medgrit.schemas.config import BuildConfig

FORMAT = "medgrit-inspect/1"
DEFAULT_SAMPLE = 60
"""Cases read by default: every case of a listing of at most this many, else this many."""
EXAMPLES = 3
"""Examples kept of each reject reason."""


@dataclass(frozen=True)
class CaseReading:
    """What one case read gave, as the build's rows would hold it (no pixels)."""

    images: tuple[tuple[str, str, str], ...]  # (plane, modality, sequence) per image
    regions: tuple[tuple[str, str, str, str], ...]  # (dataset, label, written, image id)
    rejects: tuple[tuple[str, str, str, str], ...]  # (reason, stage, source, detail)


@dataclass
class Tally:
    """Counts of one source, or of all: what :meth:`to_json` gives as a SUMMARY."""

    datasets: set[str] = field(default_factory=set)
    cases: Counter = field(default_factory=Counter)  # listed, taken, read, train, test
    listed_images: int = 0
    planes: Counter = field(default_factory=Counter)
    modality_cases: Counter = field(default_factory=Counter)  # (modality, sequence)
    modality_images: Counter = field(default_factory=Counter)
    label_images: Counter = field(default_factory=Counter)  # (dataset, label, written)
    label_instances: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)  # (reason, stage)
    examples: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)

    def add_listed(self, case: Case) -> None:
        """A case of the listing, whether a build takes it or not."""
        self.datasets.add(case.dataset)
        self.cases["listed"] += 1

    def add_taken(self, task: CaseTask, listed_images: int) -> None:
        """A case the build takes: its split, modality and the labels its listing names."""
        case = task.ref
        self.cases["taken"] += 1
        self.cases[task.split] += 1
        self.listed_images += listed_images
        self.modality_cases[(case.modality, case.sequence)] += 1
        written = dict(case.written_labels)
        for label_id, name in case.labels:
            key = (case.dataset, name, written.get(label_id, name))
            self.label_images[key] += 0
            self.label_instances[key] += 0

    def add_read(self, reading: CaseReading) -> None:
        """A case read: its images, regions and rejects."""
        self.cases["read"] += 1
        for plane, modality, sequence in reading.images:
            self.planes[plane] += 1
            self.modality_images[(modality, sequence)] += 1
        on_images = {(d, label, written, image) for d, label, written, image in reading.regions}
        for dataset, label, written, _ in on_images:
            self.label_images[(dataset, label, written)] += 1
        for dataset, label, written, _ in reading.regions:
            self.label_instances[(dataset, label, written)] += 1
        for reason, stage, source, detail in reading.rejects:
            self.rejects[(reason, stage)] += 1
            kept = self.examples.setdefault((reason, stage), [])
            if len(kept) < EXAMPLES:
                kept.append({"source": source, "detail": detail})

    def merge(self, other: Tally) -> None:
        """Add another tally's counts (a source's, to the total)."""
        self.datasets |= other.datasets
        self.listed_images += other.listed_images
        for name in (
            "cases",
            "planes",
            "modality_cases",
            "modality_images",
            "label_images",
            "label_instances",
            "rejects",
        ):
            getattr(self, name).update(getattr(other, name))
        for reason_stage, examples in other.examples.items():
            kept = self.examples.setdefault(reason_stage, [])
            kept.extend(examples[: EXAMPLES - len(kept)])

    def to_json(self) -> dict:
        """The SUMMARY of the module docstring."""
        modalities = sorted(set(self.modality_cases) | set(self.modality_images))
        return {
            "datasets": sorted(self.datasets),
            "cases": {k: self.cases[k] for k in ("listed", "taken", "read", "train", "test")},
            "images": {
                "total": sum(self.planes.values()),
                "by_plane": dict(sorted(self.planes.items())),
                "listed": self.listed_images,
            },
            "modalities": [
                {
                    "modality": modality,
                    "sequence": sequence or None,
                    "cases": self.modality_cases[(modality, sequence)],
                    "images": self.modality_images[(modality, sequence)],
                }
                for modality, sequence in modalities
            ],
            "labels": [
                {
                    "dataset": dataset,
                    "label": label,
                    "written": written,
                    "images": self.label_images[(dataset, label, written)],
                    "instances": self.label_instances[(dataset, label, written)],
                }
                for dataset, label, written in sorted(self.label_images)
            ],
            "rejects": [
                {
                    "reason": reason,
                    "stage": stage,
                    "count": count,
                    "examples": self.examples.get((reason, stage), []),
                }
                for (reason, stage), count in sorted(
                    self.rejects.items(), key=lambda kv: (-kv[1], kv[0])
                )
            ],
        }


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_sources` found: per source (in the order of their specs) and in
    total, and the options it was found with."""

    config: BuildConfig
    sources: tuple[tuple[Source, Tally], ...]
    total: Tally
    sampled: bool

    def to_json(self) -> dict:
        """The JSON document of the module docstring."""
        c = self.config
        options = {
            "plane": c.plane,
            "slice_stride": c.slice_stride,
            "max_slices_per_case": c.max_slices_per_case,
            "min_area": c.min_area,
            "max_images": c.max_images,
            "modality": c.modality,
            "channels": c.channels,
            "label_names": dict(c.label_names),
            "test_fraction": c.test_fraction,
        }
        return {
            "format": FORMAT,
            "options": options,
            "sampled": self.sampled,
            "sources": [
                {"spec": escape_name(s.spec), "kind": s.kind, **tally.to_json()}
                for s, tally in self.sources
            ],
            "total": self.total.to_json(),
        }


def inspect_sources(
    config: BuildConfig,
    listing: SourceListing,
    key: bytes,
    sample: int | None = DEFAULT_SAMPLE,
    workers: int | None = None,
) -> Inspection:
    """What a build of ``config`` would read from the sources of ``listing``.

    Args:
        config: the build's options (``out`` is not used).
        listing: the sources, opened with ``key`` (``medgrit.adapters.planning.
            open_build_sources``).
        key: the pseudonymisation key (the build's, for its splits; any other gives the same
            counts).
        sample: read at most this many cases (see :func:`sample_sizes`); None: every case.
        workers: cases read at once (default: the CPUs, at most 4).

    Raises:
        OSError: a failure of the machine (a disk's I/O error), as the build fails on it.
    """
    sources = listing.sources
    cases = [case for source in sources for case in source.cases]

    def count(case: Case) -> int:
        return count_case_images(case, config, load_case)

    tasks = [task for _, shard in plan_build(cases, config, key, count) for task in shard]
    source_of = {id(case): i for i, source in enumerate(sources) for case in source.cases}
    by_source: list[list[CaseTask]] = [[] for _ in sources]
    for task in tasks:  # in plan order, which is source order
        by_source[source_of[id(task.ref)]].append(task)
    sizes = [len(taken) for taken in by_source]
    limit = sum(sizes) if sample is None else sample
    chosen = [
        [taken[i] for i in spread(len(taken), k)]
        for taken, k in zip(by_source, sample_sizes(sizes, limit), strict=True)
    ]
    readings = iter(read_cases([t for group in chosen for t in group], config, workers))
    found: list[tuple[Source, Tally]] = []
    for source, taken, group in zip(sources, by_source, chosen, strict=True):
        tally = Tally()
        for case in source.cases:
            tally.add_listed(case)
        for task in taken:
            tally.add_taken(task, _listed_images(task.ref, config))
        for _ in group:
            tally.add_read(next(readings))
        found.append((source, tally))
    total = Tally()
    for _, tally in found:
        total.merge(tally)
    return Inspection(config, tuple(found), total, sum(map(len, chosen)) < len(tasks))


def sample_sizes(sizes: Sequence[int], sample: int) -> list[int]:
    """How many cases to read of each source: all when they total at most ``sample``, else
    ``sample`` shared in proportion to their sizes, at least one of each non-empty source
    (so a sample of fewer cases than sources reads one of each)."""
    total = sum(sizes)
    if total <= sample:
        return list(sizes)
    shares = [n * sample / total for n in sizes]
    out = [min(n, max(1, int(share))) if n else 0 for n, share in zip(sizes, shares, strict=True)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(shares[i] % 1), i))
    for i in by_remainder:
        if sum(out) >= sample:
            break
        if out[i] < sizes[i]:
            out[i] += 1
    return out


def spread(n: int, k: int) -> list[int]:
    """``k`` of the indices ``0..n-1``, evenly spread (the middle of each of ``k`` equal
    parts)."""
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


def _listed_images(case: Case, config: BuildConfig) -> int:
    """The slices or images a case's listing or header shows under the plane, stride and cap."""
    return estimate_images(case, config.plane, config.slice_stride, config.max_slices_per_case)


def read_cases(
    tasks: list[CaseTask], config: BuildConfig, workers: int | None = None
) -> Iterable[CaseReading]:
    """Each case read as a shard reads it (in the order given, ``workers`` at once)."""
    workers = workers or min(4, os.cpu_count() or 1)
    progress.phase(f"reading {len(tasks)} cases")
    progress.expect("cases", len(tasks))
    if workers < 2 or len(tasks) < 2:
        return [read_case(task, config) for task in tasks]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        return list(pool.map(lambda task: read_case(task, config), tasks))
    finally:  # stopped (Ctrl-C): the cases not started are dropped, the others stop soon
        pool.shutdown(wait=True, cancel_futures=True)


def _no_png(pixels: np.ndarray) -> bytes:
    return b""  # nothing is written: no image is encoded


def read_case(
    task: CaseTask, config: BuildConfig, load: Callable[[Case], LoadedCase] = load_case
) -> CaseReading:
    """One case through the build's per-case pipeline: its image, region and reject rows.

    Raises:
        StopRequested: a stop was requested (a signal), as a shard stops.
    """
    check_stop()
    rows = ShardRows()
    io = ShardIO(load=load, encode_png=_no_png, check_stop=check_stop)
    guarded(rows, task, "load", None, lambda: build_case(task, config, io, rows))
    progress.advance("images", len(rows.images))
    progress.advance("rejects", len(rows.rejects))
    progress.advance("cases")  # last: a line at a step of cases holds this case's counts
    images = tuple((r["plane"], r["modality"], r["sequence"] or "") for r in rows.images)
    regions = tuple(
        (task.ref.dataset, r["label"], r["source_label"], r["image_id"]) for r in rows.regions
    )
    rejects = tuple((r["reason"], r["stage"], r["source"], r["detail"]) for r in rows.rejects)
    return CaseReading(images, regions, rejects)
