"""One shard's work: read each case, slice it, extract regions, write text, verify, make rows.

This is where one image can be followed from its source file to its table rows:
``ShardBuilder.build`` -> ``build_case`` (load, check, choose slices, intensity bounds) ->
``build_image`` (display slice, square pixels, regions, words; image and region rows) ->
``write_conversations`` (the generator writes every image's turns at once, so an LLM can take
them concurrently) -> ``write_conversation`` (verification, conversation row).
Record-level problems become reject rows with a stable reason; nothing here raises for them.
Each case (and within it each image) runs under a guard: an exception that is not an
infrastructure failure (``medgrit.core.failures``) rolls back that record's rows and becomes one
reject row (its ``UnreadableImage`` reason, else ``unexpected_error`` with the exception's class),
so one bad record never sinks the shard. The builder checks for a stop request between records.
NaN and infinite intensities are left out of the mapping and counted (``ShardRows.non_finite``);
an image that shows nothing after mapping is ``blank_image``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgrit.adapters.sources import load_case
from medgrit.adapters.store.png import encode_png
from medgrit.core.cases import Case, LoadedCase, PlanarImage, UnreadableImage
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name
from medgrit.core.generation import Generated, Generator, ImageFacts, RegionFacts
from medgrit.core.ids import image_id_for, region_id_for
from medgrit.core.intensity import (
    count_non_finite,
    is_blank,
    percentile_bounds,
    to_uint8,
    window_bounds,
)
from medgrit.core.regions import extract_regions, to_bbox_1000
from medgrit.core.slicing import (
    display_slice,
    display_spacing,
    foreground_slices,
    select_slices,
    square_pixels,
)
from medgrit.core.text import laterality_of, position_word, size_word
from medgrit.core.verify import verify_qa
from medgrit.schemas.config import BuildConfig


@dataclass(frozen=True)
class CaseTask:
    """A case as planned: its pseudonymous id, its split and how many images it may give."""

    ref: Case
    case_id: str
    split: str
    quota: int | None = None


@dataclass(frozen=True)
class PendingImage:
    """An image whose rows are written and whose conversation is still to be generated."""

    task: CaseTask
    source: str
    image: ImageFacts
    regions: list[RegionFacts]


@dataclass
class ShardRows:
    """Rows of the four tables for one shard, in deterministic order."""

    images: list[dict] = field(default_factory=list)
    regions: list[dict] = field(default_factory=list)
    conversations: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    non_finite: int = 0  # NaN or infinite intensities left out of the mapping

    def as_tables(self) -> dict[str, list[dict]]:
        """The rows by table name."""
        return {
            "images": self.images,
            "regions": self.regions,
            "conversations": self.conversations,
            "rejects": self.rejects,
        }


def case_source(ref: Case, slice_index: int | None = None) -> str:
    """Reference to the source of a reject row: dataset, label file (for DICOM, whose file
    names may carry identifiers, the case pseudonym), slice."""
    base = escape_name(f"{ref.dataset}/{ref.reference}")
    return base if slice_index is None else f"{base}#slice={slice_index}"


def error_detail(exc: Exception, ref: Case) -> str:
    """What a reject row says of an unexpected exception: its class, and for formats whose
    messages cannot quote patient data (not DICOM) its message, escaped and cut short."""
    if ref.identifying:
        return type(exc).__name__
    text = str(exc)
    if isinstance(exc, OSError) and exc.filename:
        text = f"[Errno {exc.errno}] {exc.strerror}: {Path(str(exc.filename)).name}"
    # Reject rows name files, not the folders a user keeps them in.
    for path in sorted({*ref.message_paths, _source_root(ref)} - {""}, key=len)[::-1]:
        text = text.replace(str(Path(path).parent) + "/", "").replace(path, Path(path).name)
    return f"{type(exc).__name__}: {escape_name(' '.join(text.split()))}"[:300]


def _source_root(ref: Case) -> str:
    return ref.source.partition(":")[2]


def select_case_slices(labels: np.ndarray, config: BuildConfig, quota: int | None) -> np.ndarray:
    """The slice indices a volume contributes under the config (and the max-images quota)."""
    slices = foreground_slices(labels, config.plane, min_pixels=config.min_area)
    return _apply_quota(slices, config, quota)


def select_planar_images(
    images: tuple[PlanarImage, ...], config: BuildConfig, quota: int | None
) -> list[PlanarImage]:
    """The 2D images of a planar case to take (those with foreground, stride, cap, quota)."""
    with_foreground = np.array([i for i, im in enumerate(images) if im.labels.any()], dtype=int)
    return [images[i] for i in _apply_quota(with_foreground, config, quota)]


def _apply_quota(indices: np.ndarray, config: BuildConfig, quota: int | None) -> np.ndarray:
    chosen = select_slices(indices, config.slice_stride, config.max_slices_per_case)
    if quota is not None:
        chosen = select_slices(chosen, 1, quota)
    return chosen


def count_case_images(ref: Case, config: BuildConfig) -> int:
    """How many images a case would give without a quota (reads the case; 1 if unreadable)."""
    try:
        loaded = load_case(ref)
        if loaded.label_volume is not None:
            labels = loaded.label_volume.data
            return max(1, int(select_case_slices(labels, config, None).size))
        return max(1, len(select_planar_images(loaded.images, config, None)))
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        return 1  # keep the case in the plan: its shard writes the reject row


def intensity_bounds(kind: str, values: np.ndarray, config: BuildConfig) -> tuple[float, float]:
    """Bounds mapped to 0 and 255 for an intensity kind (see ``medgrit.core.cases``)."""
    if kind == "hu":
        return window_bounds(*config.ct_window)
    if kind == "suv":
        return config.pet_suv_window
    if kind == "percentile":
        return percentile_bounds(values, *config.percentiles)
    raise ValueError(f"no bounds for intensity kind {kind!r}")


class ShardBuilder:
    """Turns the cases of a shard into table rows.

    Args:
        config: the build config.
        generator: writes conversations for images.
    """

    def __init__(
        self,
        config: BuildConfig,
        generator: Generator,
        check_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.generator = generator
        self.check_stop = check_stop
        self.pending: list[PendingImage] = []

    def build(self, cases: list[CaseTask]) -> ShardRows:
        """All rows of a shard, cases in the given order."""
        rows = ShardRows()
        for task in cases:
            self.check_stop()
            self.guarded(rows, task, "load", None, lambda task=task: self.build_case(task, rows))
        self.check_stop()
        self.write_conversations(rows)
        return rows

    def guarded(
        self,
        rows: ShardRows,
        task: CaseTask,
        stage: str,
        index: int | None,
        work: Callable[[], None],
        image_id: str | None = None,
    ) -> None:
        """Run one record's ``work``; on a record-level exception drop what it added to
        ``rows`` and write one reject row instead (infrastructure failures propagate)."""
        marks = (
            len(rows.images),
            len(rows.regions),
            len(rows.conversations),
            len(rows.rejects),
            len(self.pending),
            rows.non_finite,
        )
        try:
            work()
        except Exception as exc:
            if fails_the_shard(exc):
                raise
            del rows.images[marks[0] :], rows.regions[marks[1] :]
            del rows.conversations[marks[2] :], rows.rejects[marks[3] :]
            del self.pending[marks[4] :]
            rows.non_finite = marks[5]
            if isinstance(exc, UnreadableImage):
                reason, detail = exc.reason, exc.detail
            else:
                reason, detail = "unexpected_error", error_detail(exc, task.ref)
            self._reject(rows, stage, reason, detail, case_source(task.ref, index), task, image_id)

    def _reject(
        self,
        rows: ShardRows,
        stage: str,
        reason: str,
        detail: str,
        source: str,
        task: CaseTask,
        image_id: str | None = None,
    ) -> None:
        rows.rejects.append(
            {
                "stage": stage,
                "reason": reason,
                "detail": detail,
                "source": source,
                "dataset": task.ref.dataset,
                "case_id": task.case_id,
                "image_id": image_id,
            }
        )

    def load(self, task: CaseTask, rows: ShardRows) -> LoadedCase | None:
        """Load and check a case; None (and a reject row) when nothing of it is usable."""
        ref = task.ref
        try:
            loaded = load_case(ref)
        except UnreadableImage as exc:
            self._reject(rows, "load", exc.reason, exc.detail, case_source(ref), task)
            return None
        for reason, detail, index in loaded.rejects:
            self._reject(rows, "load", reason, detail, case_source(ref, index), task)
        if loaded.volume is None:
            return loaded
        image, labels = loaded.volume, loaded.label_volume
        if labels is None:
            raise TypeError(f"loader of {ref.format!r} returned a volume without labels")
        if image.data.shape != labels.data.shape:
            detail = f"image {image.data.shape} vs labels {labels.data.shape}"
            self._reject(rows, "load", "shape_mismatch", detail, case_source(ref), task)
            return None
        if not labels.data.any():
            detail = "the label map has no foreground"
            self._reject(rows, "load", "empty_label_map", detail, case_source(ref), task)
            return None
        return loaded

    def build_case(self, task: CaseTask, rows: ShardRows) -> None:
        """Rows of one case appended to ``rows`` (each image under its own guard)."""
        loaded = self.load(task, rows)
        if loaded is None:
            return
        names = {**dict(task.ref.labels), **dict(loaded.label_names)}
        if loaded.volume is None:
            for planar in loaded.images:
                if not planar.labels.any():
                    self._reject(
                        rows,
                        "load",
                        "empty_label_map",
                        "the mask has no foreground",
                        case_source(task.ref, planar.slice_index),
                        task,
                    )
            for planar in select_planar_images(loaded.images, self.config, task.quota):
                self.check_stop()
                self.guarded(
                    rows,
                    task,
                    "image",
                    planar.slice_index,
                    lambda planar=planar: self.build_planar(task, loaded, planar, names, rows),
                    image_id_for(task.case_id, planar.plane, planar.slice_index),
                )
            return
        image, labels = loaded.volume, loaded.label_volume
        plane = self.config.plane
        rows.non_finite += count_non_finite(image.data)
        bounds = intensity_bounds(loaded.intensity, image.data, self.config)
        spacing = display_spacing(image.spacing, plane)
        chosen = select_case_slices(labels.data, self.config, task.quota)
        if chosen.size == 0:
            detail = f"no {plane} slice holds {self.config.min_area} labelled pixels (--min-area)"
            self._reject(rows, "load", "no_regions", detail, case_source(task.ref), task)
            return
        for index in chosen:
            self.check_stop()

            def work(index: int = int(index)) -> None:
                pixels = display_slice(image.data, plane, index)
                if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
                    # Not-a-number stays one pixel: set to the bottom of the mapping before
                    # resampling, it maps to 0 as NaN would, without spreading.
                    pixels = np.where(np.isfinite(pixels), pixels, np.float32(bounds[0]))
                label_map = display_slice(labels.data, plane, index)
                pixels, label_map = square_pixels(pixels, label_map, spacing)
                self.build_image(
                    task,
                    loaded.modality,
                    plane,
                    index,
                    to_uint8(pixels, bounds),
                    label_map,
                    names,
                    rows,
                )

            image_id = image_id_for(task.case_id, plane, int(index))
            self.guarded(rows, task, "image", int(index), work, image_id)

    def build_planar(
        self,
        task: CaseTask,
        loaded: LoadedCase,
        planar: PlanarImage,
        names: dict[int, str],
        rows: ShardRows,
    ) -> None:
        """Rows of one 2D image of a planar case (intensity mapping, then :meth:`build_image`)."""
        pixels = planar.pixels
        if loaded.intensity != "display":
            rows.non_finite += count_non_finite(pixels)
            bounds = intensity_bounds(loaded.intensity, pixels, self.config)
            pixels = to_uint8(pixels, bounds)
        self.build_image(
            task,
            loaded.modality,
            planar.plane,
            planar.slice_index,
            pixels,
            planar.labels,
            names,
            rows,
        )

    def build_image(
        self,
        task: CaseTask,
        modality: str,
        plane: str,
        index: int,
        pixels: np.ndarray,
        label_map: np.ndarray,
        names: dict[int, str],
        rows: ShardRows,
    ) -> None:
        """Rows of one 2D image (8-bit grey or RGB pixels, label map) appended to ``rows``."""
        ref, config = task.ref, self.config
        height, width = label_map.shape
        image_id = image_id_for(task.case_id, plane, index)
        source = case_source(ref, index)
        if is_blank(pixels):
            value = int(pixels.flat[0]) if pixels.size else 0
            raise UnreadableImage("blank_image", f"every pixel is {value} after intensity mapping")
        extraction = extract_regions(label_map, min_area=config.min_area)
        for label_id, area in zip(
            extraction.dropped_label_id, extraction.dropped_area, strict=True
        ):
            name = names.get(int(label_id), f"label {int(label_id)}")
            self._reject(
                rows,
                "regions",
                "below_min_area",
                f"{name}: {int(area)} px < {config.min_area}",
                source,
                task,
                image_id,
            )
        table = extraction.regions
        known = np.isin(table.label_id, list(names))
        for label_id in np.unique(table.label_id[~known]):
            self._reject(
                rows,
                "regions",
                "unknown_label",
                f"label value {int(label_id)} has no name in the source",
                source,
                task,
                image_id,
            )
        if not known.any():
            self._reject(
                rows,
                "regions",
                "no_regions",
                "no region left after filtering",
                source,
                task,
                image_id,
            )
            return
        boxes_1000 = to_bbox_1000(table.bbox, width, height)
        facts: list[RegionFacts] = []
        region_rows: list[dict] = []
        for row in np.flatnonzero(known):
            bbox = tuple(int(v) for v in table.bbox[row])
            label = names[int(table.label_id[row])]
            fact = RegionFacts(
                region_id=region_id_for(image_id, len(facts)),
                label=label,
                label_id=int(table.label_id[row]),
                instance=int(table.instance[row]),
                bbox_1000=tuple(int(v) for v in boxes_1000[row]),  # type: ignore[arg-type]
                area=int(table.area[row]),
                position=position_word(bbox, width, height),  # type: ignore[arg-type]
                size=size_word(int(table.area[row]), width, height),
            )
            facts.append(fact)
            region_rows.append(
                {
                    "region_id": fact.region_id,
                    "image_id": image_id,
                    "label": label,
                    "label_id": fact.label_id,
                    "instance": fact.instance,
                    "bbox": list(bbox),
                    "bbox_1000": list(fact.bbox_1000),
                    "area": fact.area,
                    "position": fact.position,
                    "size": fact.size,
                    "laterality": laterality_of(label),
                }
            )

        rows.images.append(
            {
                "image_id": image_id,
                "dataset": ref.dataset,
                "case_id": task.case_id,
                "modality": modality,
                "plane": plane,
                "slice_index": index,
                "width": width,
                "height": height,
                "split": task.split,
                "image": {"bytes": encode_png(pixels), "path": f"{image_id}.png"},
            }
        )
        rows.regions.extend(region_rows)
        self.pending.append(
            PendingImage(task, source, ImageFacts(image_id, modality, plane, width, height), facts)
        )

    def write_conversations(self, rows: ShardRows) -> None:
        """Generate, verify and append the conversations of every pending image.

        An image left without a conversation (its turns all failed, or writing them failed) is
        dropped from the image and region rows: every image written has one conversation.
        """
        pending, self.pending = self.pending, []
        items = [(p.image, p.regions) for p in pending]
        try:
            results: list[Generated | None] = list(self.generator.generate_all(items))
        except Exception as exc:
            if fails_the_shard(exc):
                raise
            results = [self._generate_one(item, rows) for item in pending]
        dropped: set[str] = set()
        for item, result in zip(pending, results, strict=True):
            if result is None or not self._write_guarded(item, result, rows):
                dropped.add(item.image.image_id)
        if dropped:
            rows.images[:] = [r for r in rows.images if r["image_id"] not in dropped]
            rows.regions[:] = [r for r in rows.regions if r["image_id"] not in dropped]

    def _generate_one(self, item: PendingImage, rows: ShardRows) -> Generated | None:
        """One image's conversation alone (after the shard's batch failed); None on failure."""
        try:
            return self.generator.generate_all([(item.image, item.regions)])[0]
        except Exception as exc:
            if fails_the_shard(exc):
                raise
            self._reject_unexpected(rows, "generate", item, exc)
            return None

    def _write_guarded(self, item: PendingImage, result: Generated, rows: ShardRows) -> bool:
        marks = (len(rows.conversations), len(rows.rejects))
        try:
            return self.write_conversation(item, result, rows)
        except Exception as exc:
            if fails_the_shard(exc):
                raise
            del rows.conversations[marks[0] :], rows.rejects[marks[1] :]
            self._reject_unexpected(rows, "verify", item, exc)
            return False

    def _reject_unexpected(
        self, rows: ShardRows, stage: str, item: PendingImage, exc: Exception
    ) -> None:
        detail = error_detail(exc, item.task.ref)
        self._reject(
            rows, stage, "unexpected_error", detail, item.source, item.task, item.image.image_id
        )

    def write_conversation(self, item: PendingImage, result: Generated, rows: ShardRows) -> bool:
        """Verify one image's generated turns and append its conversation row; False (and an
        ``empty_conversation`` reject) when no turn passed."""
        task, source, image_id = item.task, item.source, item.image.image_id
        for reason, detail in result.rejects:
            self._reject(rows, "generate", reason, detail, source, task, image_id)
        by_id = {f.region_id: f for f in item.regions}
        accepted = []
        for qa in result.turns:
            reason = verify_qa(qa, by_id, self.generator.text_rules)
            if reason is None:
                accepted.append(qa)
            else:
                detail = f"{qa.task}: {qa.answer[:200]}"
                self._reject(rows, "verify", reason, detail, source, task, image_id)
        if not accepted:
            self._reject(
                rows,
                "verify",
                "empty_conversation",
                "no turn passed verification",
                source,
                task,
                image_id,
            )
            return False
        rows.conversations.append(
            {
                "conversation_id": f"{image_id}-c0",
                "image_id": image_id,
                "split": task.split,
                "qa": [
                    {
                        "task": qa.task,
                        "question": qa.question,
                        "answer": qa.answer,
                        "region_ids": list(qa.region_ids),
                    }
                    for qa in accepted
                ],
                "generator": self.generator.name,
                "template_hash": self.generator.template_hash,
                "prompt_hash": result.prompt_hash,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
        )
        return True
