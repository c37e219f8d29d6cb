"""One shard's work, pure: loaded case -> slices -> regions -> facts -> generation -> verification
-> rows.

Follow one image top to bottom: :func:`build_shard_rows` runs :func:`build_case` for each case,
which checks the loaded case (:func:`check_loaded`), chooses its slices and intensity bounds
(:func:`volume_images` / :func:`planar_image`) and hands each 2D image to :func:`build_image`
(blank check, :func:`describe_regions`, image and region rows). When every case is done,
``medgrit.core.conversations.write_conversations`` asks the generator for all images at once
(so an LLM can take them concurrently) and keeps the turns whose every claim holds; an image
left without a conversation is dropped with its region rows. The rows and the per-record guard
are ``medgrit.core.shard_rows``.

The I/O is passed in (:class:`ShardIO`: reading a case, PNG encoding, the stop check), and so is
the generator's transport (``medgrit.core.generation.Generator``); nothing here opens a file.
Record-level problems become reject rows with a stable reason; nothing here raises for them.
Each case (and within it each image) runs under a guard: an exception that is not an
infrastructure failure (``medgrit.core.failures``) rolls back that record's rows and becomes one
reject row (its ``UnreadableImage`` reason, else ``unexpected_error`` with the exception's
class), so one bad record never sinks the shard. NaN and infinite intensities are left out of the
mapping and counted (``ShardRows.non_finite``); an image that shows nothing after mapping is
``blank_image``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from medgrit.core.cases import (
    NO_VOCABULARY,
    Case,
    LoadedCase,
    PlanarImage,
    UnreadableImage,
    Vocabulary,
)
from medgrit.core.conversations import write_conversations
from medgrit.core.failures import fails_the_shard
from medgrit.core.generation import Generator, ImageFacts, RegionFacts
from medgrit.core.ids import image_id_for, region_id_for
from medgrit.core.intensity import (
    count_non_finite,
    is_blank,
    percentile_bounds,
    to_uint8,
    window_bounds,
)
from medgrit.core.regions import extract_group_regions, extract_regions, to_bbox_1000
from medgrit.core.relations import mask_relations
from medgrit.core.rows import image_row, region_row
from medgrit.core.settings import ImageSettings
from medgrit.core.shard_rows import CaseTask, PendingImage, Reject, ShardRows, case_source, guarded
from medgrit.core.slicing import (
    display_slice,
    display_spacing,
    foreground_slices,
    select_slices,
    square_pixels,
)
from medgrit.core.text import laterality_of, position_word, size_word


def _go_on() -> None:
    """The stop check of a shard nobody stops."""


def _count_nothing(counter: str, amount: int) -> None:
    """The progress of a shard nobody watches."""


@dataclass(frozen=True)
class ShardIO:
    """The I/O a shard needs, passed in.

    Attributes:
        load: reads a case (``medgrit.adapters.sources.load_case``); raises
            ``UnreadableImage`` for a case it cannot read.
        encode_png: 8-bit grey (H, W) or RGB (H, W, 3) pixels -> PNG bytes.
        check_stop: raises when the build was asked to stop (called between records).
        counted: told what the shard's rows gained, as ``(counter, amount)`` with counters
            ``images``, ``rejects`` (after each case, then after the conversations, when images
            left without one are dropped: a negative amount) and ``qa_pairs`` (once the
            conversations are written); the amounts add up to the shard's tables.
    """

    load: Callable[[Case], LoadedCase]
    encode_png: Callable[[np.ndarray], bytes]
    check_stop: Callable[[], None] = _go_on
    counted: Callable[[str, int], None] = _count_nothing


@dataclass(frozen=True)
class DisplayImage:
    """One 2D image ready for regions: 8-bit pixels and the label map on the same grid."""

    plane: str
    slice_index: int
    pixels: np.ndarray
    labels: np.ndarray
    non_finite: int = 0


@dataclass(frozen=True)
class DescribedRegions:
    """The regions of one image: their facts, pixel boxes and sides, and what was dropped."""

    facts: tuple[RegionFacts, ...]
    bboxes: tuple[tuple[int, int, int, int], ...]
    rejects: tuple[Reject, ...]


# -- slices ----------------------------------------------------------------------------------


def select_case_slices(labels: np.ndarray, config: ImageSettings, quota: int | None) -> np.ndarray:
    """The slice indices a volume contributes under the config (and the max-images quota)."""
    slices = foreground_slices(labels, config.plane, min_pixels=config.min_area)
    return _apply_quota(slices, config, quota)


def select_planar_images(
    images: tuple[PlanarImage, ...], config: ImageSettings, quota: int | None
) -> list[PlanarImage]:
    """The 2D images of a planar case to take (those with foreground, stride, cap, quota)."""
    with_foreground = np.array([i for i, im in enumerate(images) if im.labels.any()], dtype=int)
    return [images[i] for i in _apply_quota(with_foreground, config, quota)]


def _apply_quota(indices: np.ndarray, config: ImageSettings, quota: int | None) -> np.ndarray:
    chosen = select_slices(indices, config.slice_stride, config.max_slices_per_case)
    if quota is not None:
        chosen = select_slices(chosen, 1, quota)
    return chosen


def count_loaded_images(loaded: LoadedCase, config: ImageSettings) -> int:
    """How many images a loaded case would give without a quota (at least 1)."""
    if loaded.label_volume is not None:
        return max(1, int(select_case_slices(loaded.label_volume.data, config, None).size))
    return max(1, len(select_planar_images(loaded.images, config, None)))


def count_case_images(case: Case, config: ImageSettings, load: Callable[[Case], LoadedCase]) -> int:
    """How many images a case would give without a quota (reads the case; 1 if unreadable)."""
    try:
        return count_loaded_images(load(case), config)
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        return 1  # keep the case in the plan: its shard writes the reject row


def intensity_bounds(kind: str, values: np.ndarray, config: ImageSettings) -> tuple[float, float]:
    """Bounds mapped to 0 and 255 for an intensity kind (see ``medgrit.core.cases``)."""
    if kind == "hu":
        return window_bounds(*config.ct_window)
    if kind == "suv":
        return config.pet_suv_window
    if kind == "percentile":
        return percentile_bounds(values, *config.percentiles)
    raise ValueError(f"no bounds for intensity kind {kind!r}")


def check_loaded(case: Case, loaded: LoadedCase) -> Reject | None:
    """Why nothing of a loaded volume case is usable, or None when it is."""
    if loaded.volume is None:
        return None
    image, labels = loaded.volume, loaded.label_volume
    if labels is None:
        raise TypeError(f"reader of {case.format!r} returned a volume without labels")
    if image.data.shape != labels.data.shape:
        detail = f"image {image.data.shape} vs labels {labels.data.shape}"
        return Reject("load", "shape_mismatch", detail)
    if not labels.data.any():
        return Reject("load", "empty_label_map", "the label map has no foreground")
    return None


def volume_images(
    loaded: LoadedCase, config: ImageSettings, quota: int | None
) -> Iterator[tuple[int, Callable[[], DisplayImage]]]:
    """The chosen slices of a volume case: (slice index, a function that makes its image)."""
    image, labels = loaded.volume, loaded.label_volume
    assert image is not None and labels is not None  # check_loaded ran
    plane = config.plane
    bounds = intensity_bounds(loaded.intensity, image.data, config)
    spacing = display_spacing(image.spacing, plane)
    for index in select_case_slices(labels.data, config, quota):

        def make(index: int = int(index)) -> DisplayImage:
            pixels = display_slice(image.data, plane, index)
            if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
                # Not-a-number stays one pixel: set to the bottom of the mapping before
                # resampling, it maps to 0 as NaN would, without spreading.
                pixels = np.where(np.isfinite(pixels), pixels, np.float32(bounds[0]))
            label_map = display_slice(labels.data, plane, index)
            pixels, label_map = square_pixels(pixels, label_map, spacing)
            return DisplayImage(plane, index, to_uint8(pixels, bounds), label_map)

        yield int(index), make


def planar_image(loaded: LoadedCase, planar: PlanarImage, config: ImageSettings) -> DisplayImage:
    """One 2D image of a planar case, mapped to 8 bits unless it already is display-ready."""
    pixels, non_finite = planar.pixels, 0
    if loaded.intensity != "display":
        non_finite = count_non_finite(pixels)
        pixels = to_uint8(pixels, intensity_bounds(loaded.intensity, pixels, config))
    return DisplayImage(planar.plane, planar.slice_index, pixels, planar.labels, non_finite)


# -- regions ---------------------------------------------------------------------------------


def describe_regions(
    label_map: np.ndarray,
    names: dict[int, str],
    config: ImageSettings,
    image_id: str,
    groups: tuple[tuple[int, tuple[int, ...]], ...] = (),
) -> DescribedRegions:
    """The named regions of a label map with their words and mask relations (see
    ``medgrit.core.relations``), and rejects for the others. ``groups``: region-based labels
    (``medgrit.core.cases.Case.label_groups``), whose regions are unions of stored values and
    may overlap; a stored value no group covers is an unknown label."""
    height, width = label_map.shape
    grouped = bool(groups)
    if grouped:
        groups = tuple((i, values) for i, values in groups if i in names)
        extraction = extract_group_regions(label_map, groups, min_area=config.min_area)
    else:
        extraction = extract_regions(label_map, min_area=config.min_area)
    rejects: list[Reject] = []
    for label_id, area in zip(extraction.dropped_label_id, extraction.dropped_area, strict=True):
        name = names.get(int(label_id), f"label {int(label_id)}")
        detail = f"{name}: {int(area)} px < {config.min_area}"
        rejects.append(Reject("regions", "below_min_area", detail))
    table = extraction.regions
    if grouped:
        known = np.ones(len(table), dtype=bool)
        covered = np.isin(label_map, [0, *(v for _, values in groups for v in values)])
        unknown = np.unique(label_map[~covered])
    else:
        known = np.isin(table.label_id, list(names))
        unknown = np.unique(table.label_id[~known])
    for label_id in unknown:
        detail = f"label value {int(label_id)} has no name in the source"
        rejects.append(Reject("regions", "unknown_label", detail))
    if not known.any():
        rejects.append(Reject("regions", "no_regions", "no region left after filtering"))
        return DescribedRegions((), (), tuple(rejects))
    rows = np.flatnonzero(known)
    # As Python ints once for all regions (an image may hold dozens).
    all_boxes = table.bbox[rows].tolist()
    all_boxes_1000 = to_bbox_1000(table.bbox[rows], width, height).tolist()
    label_ids, instances = table.label_id[rows].tolist(), table.instance[rows].tolist()
    areas = table.area[rows].tolist()
    facts: list[RegionFacts] = []
    bboxes: list[tuple[int, int, int, int]] = []
    for k in range(len(rows)):
        bbox = tuple(all_boxes[k])
        area = areas[k]
        facts.append(
            RegionFacts(
                region_id=region_id_for(image_id, len(facts)),
                label=names[label_ids[k]],
                label_id=label_ids[k],
                instance=instances[k],
                bbox_1000=tuple(all_boxes_1000[k]),  # type: ignore[arg-type]
                area=area,
                position=position_word(bbox, width, height),  # type: ignore[arg-type]
                size=size_word(area, width, height),
            )
        )
        bboxes.append(bbox)  # type: ignore[arg-type]
    relations = mask_relations(label_map, facts, bboxes, dict(groups) if grouped else None)
    facts = [replace(f, relations=r) if r else f for f, r in zip(facts, relations, strict=True)]
    return DescribedRegions(tuple(facts), tuple(bboxes), tuple(rejects))


# -- cases and images ------------------------------------------------------------------------


def build_case(task: CaseTask, config: ImageSettings, io: ShardIO, rows: ShardRows) -> None:
    """Rows of one case appended to ``rows`` (each image under its own guard)."""
    try:
        loaded = io.load(task.ref)
    except UnreadableImage as exc:
        rows.reject(task, Reject("load", exc.reason, exc.detail))
        return
    for reason, detail, index in loaded.rejects:
        rows.reject(task, Reject("load", reason, detail, index))
    problem = check_loaded(task.ref, loaded)
    if problem is not None:
        rows.reject(task, problem)
        return
    found = dict(loaded.written_label_names or loaded.label_names)
    words = config.label_names
    names = {
        **dict(task.ref.labels),
        **dict(loaded.label_names),
        **{label_id: words[name] for label_id, name in found.items() if name in words},
    }
    written = {**dict(task.ref.written_labels), **found}
    if loaded.volume is None:
        for planar in loaded.images:
            if not planar.labels.any():
                detail = "the mask has no foreground"
                rows.reject(task, Reject("load", "empty_label_map", detail, planar.slice_index))
        jobs = [
            (p.plane, p.slice_index, lambda p=p: planar_image(loaded, p, config))
            for p in select_planar_images(loaded.images, config, task.quota)
        ]
    else:
        rows.non_finite += count_non_finite(loaded.volume.data)
        plane = config.plane
        jobs = [(plane, i, make) for i, make in volume_images(loaded, config, task.quota)]
        if not jobs:
            detail = f"no {plane} slice holds {config.min_area} labelled pixels (--min-area)"
            rows.reject(task, Reject("load", "no_regions", detail))
            return
    for plane, index, make in jobs:
        io.check_stop()

        def work(make: Callable[[], DisplayImage] = make) -> None:
            build_image(task, loaded.modality, make(), (names, written), config, io, rows)

        guarded(rows, task, "image", index, work, image_id_for(task.case_id, plane, index))


def build_image(
    task: CaseTask,
    modality: str,
    image: DisplayImage,
    labels: tuple[dict[int, str], dict[int, str]],
    config: ImageSettings,
    io: ShardIO,
    rows: ShardRows,
) -> None:
    """Rows of one 2D image (8-bit grey or RGB pixels, label map) appended to ``rows``;
    ``labels``: the readable name and the name as the source writes it, by label id."""
    names, written = labels
    rows.non_finite += image.non_finite
    height, width = image.labels.shape
    image_id = image_id_for(task.case_id, image.plane, image.slice_index)
    if is_blank(image.pixels):
        value = int(image.pixels.flat[0]) if image.pixels.size else 0
        raise UnreadableImage("blank_image", f"every pixel is {value} after intensity mapping")
    described = describe_regions(image.labels, names, config, image_id, task.ref.label_groups)
    for reject in described.rejects:
        rows.reject(task, _at(reject, image.slice_index), image_id)
    if not described.facts:
        return
    facts = ImageFacts(image_id, modality, image.plane, width, height, task.ref.sequence)
    rows.images.append(
        image_row(
            facts,
            task.ref.dataset,
            task.case_id,
            image.slice_index,
            task.split,
            io.encode_png(image.pixels),
        )
    )
    rows.regions.extend(
        region_row(
            fact, image_id, bbox, laterality_of(fact.label), written.get(fact.label_id, fact.label)
        )
        for fact, bbox in zip(described.facts, described.bboxes, strict=True)
    )
    source = case_source(task.ref, image.slice_index)
    rows.pending.append(PendingImage(task, source, facts, list(described.facts)))


def _at(reject: Reject, index: int) -> Reject:
    return Reject(reject.stage, reject.reason, reject.detail, index)


# -- the shard -------------------------------------------------------------------------------


def build_shard_rows(
    cases: list[CaseTask],
    config: ImageSettings,
    generator: Generator,
    io: ShardIO,
    vocabulary: Vocabulary = NO_VOCABULARY,
) -> ShardRows:
    """All rows of a shard, cases in the given order; ``vocabulary`` is the build's label names
    and their synonyms (see :func:`build_vocabulary`), against which every turn's names are
    read."""
    rows = build_image_rows(cases, config, io)
    add_conversations(rows, generator, io, vocabulary)
    return rows


def build_image_rows(cases: list[CaseTask], config: ImageSettings, io: ShardIO) -> ShardRows:
    """A shard's rows before its conversations: its images, regions and rejects, and the images
    whose conversations are still to be made (:func:`add_conversations`), cases in the given
    order."""
    rows = ShardRows()
    for task in cases:
        io.check_stop()
        before = len(rows.images), len(rows.rejects)
        guarded(rows, task, "load", None, lambda task=task: build_case(task, config, io, rows))
        _tell_gains(io, rows, before)
    return rows


def add_conversations(
    rows: ShardRows, generator: Generator, io: ShardIO, vocabulary: Vocabulary = NO_VOCABULARY
) -> None:
    """The conversations of the images :func:`build_image_rows` left pending, added to
    ``rows`` (see :func:`build_shard_rows`)."""
    io.check_stop()
    before = len(rows.images), len(rows.rejects)
    write_conversations(generator, rows, vocabulary)
    _tell_gains(io, rows, before)
    io.counted("qa_pairs", sum(len(conversation["qa"]) for conversation in rows.conversations))


def _tell_gains(io: ShardIO, rows: ShardRows, before: tuple[int, int]) -> None:
    """Tell ``io.counted`` the images and rejects ``rows`` gained since ``before``."""
    io.counted("images", len(rows.images) - before[0])
    io.counted("rejects", len(rows.rejects) - before[1])


def build_vocabulary(cases: list[CaseTask]) -> Vocabulary:
    """The label names of a build's cases and the synonyms their label files give them,
    sorted: the structure names its texts may use (a name a case does not have is an invented
    structure there). The same for any shard plan."""
    return Vocabulary(
        tuple(sorted({name for task in cases for _, name in task.ref.labels})),
        tuple(sorted({pair for task in cases for pair in task.ref.synonyms})),
    )
