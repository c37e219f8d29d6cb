"""One read of a finished dataset, shared by every export format and the baseline.

A dataset is read once into :class:`DatasetRecords`: per split, one :class:`ExportRecord` per
image (its SA-Med2D-style sample name, its metadata, its turns and the regions they show, and an
:class:`ImageRef` saying where its PNG bytes are), in manifest shard order then table order, so
every export lists the same records in the same order.

The text side is held in memory: the images table without its ``image`` column, the regions and
the conversations (a few hundred bytes per image). The PNG bytes are not: a Med-GRIT-sized build
(75,000 images of up to 1024x1024, 100-500 kB each) would need tens of GB. :func:`iter_images`
streams them one images part at a time, ``IMAGE_BATCH_ROWS`` rows per read, so an export holds
about one batch of image bytes (plus what its writer buffers, see ``hfparquet``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from medgrit.adapters.runtime import progress
from medgrit.adapters.store.bookkeeping import load_dataset
from medgrit.adapters.store.parquet import open_parquet, part_path, read_parquet, require_parts
from medgrit.adapters.store.validate import read_table
from medgrit.core.exports import Box, model_text, sample_name
from medgrit.core.vlm import BOX_FRAME, DEFAULT_MAX_PIXELS, RESIZED_PIXEL_FRAME, resized_size
from medgrit.schemas.manifest import Manifest
from medgrit.schemas.tables import TABLES

SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_BATCH_ROWS = 64
_TEXT_COLUMNS = [f.name for f in TABLES["images"] if f.name != "image"]


class ExportError(Exception):
    """A dataset that cannot be exported as it is (the user can fix it): one line of text."""


@dataclass(frozen=True)
class ExportRegion:
    """One region row as exports need it."""

    region_id: str
    label: str
    bbox: Box
    bbox_1000: Box


@dataclass(frozen=True)
class ExportQA:
    """One turn: a question, its reference answer, and the regions it is about."""

    task: str
    question: str
    answer: str
    region_ids: tuple[str, ...]


@dataclass(frozen=True)
class ImageRef:
    """Where an image's PNG bytes are: row ``row`` (0-based) of the images part ``part`` (a path
    relative to the dataset directory)."""

    part: str
    row: int


@dataclass(frozen=True)
class ExportRecord:
    """One image of a split with its conversation and regions (its bytes: :func:`iter_images`)."""

    name: str
    image_id: str
    dataset: str
    case_id: str
    modality: str
    plane: str
    slice_index: int
    width: int
    height: int
    split: str
    image: ImageRef
    qa: tuple[ExportQA, ...]
    regions: Mapping[str, ExportRegion]


@dataclass(frozen=True)
class TurnText:
    """How an export writes a turn's text: boxes in ``box_format`` (one of
    :data:`medgrit.core.vlm.BOX_FORMATS`), those in pixels in the frame of the image resized as
    a Qwen2-VL-family image processor with ``max_pixels`` does (``medgrit finetune``'s default),
    through :func:`medgrit.core.exports.model_text`, as ``finetune`` writes them."""

    box_format: str = "qwen-vl"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, text: str, record: ExportRecord, qa: ExportQA) -> str:
        """``text`` (a question or answer of ``qa``, a turn of ``record``) in the box format.

        Raises:
            ExportError: for an image a Qwen2-VL-family model cannot take (pixel formats only).
            ValueError: for an unknown box format, or a box that is no box of the image.
        """
        size = (record.width, record.height)
        resized = size
        if BOX_FRAME.get(self.box_format) == RESIZED_PIXEL_FRAME:
            try:
                resized = resized_size(*size, max_pixels=self.max_pixels)
            except ValueError as exc:
                raise ExportError(
                    f"{record.name}: {exc}, so it has no {self.box_format} boxes; "
                    "export with --boxes qwen-vl or qwen2-tokens"
                ) from None
        return model_text(text, record.regions, qa.region_ids, self.box_format, size, resized)


@dataclass(frozen=True)
class DatasetRecords:
    """A dataset's records per split, its manifest (config, sources) for dataset cards, and its
    directory and images parts (paths relative to it, manifest order) for :func:`iter_images`."""

    splits: Mapping[str, tuple[ExportRecord, ...]]
    manifest: Manifest
    root: Path
    image_parts: tuple[str, ...]


def read_records(out: Path) -> DatasetRecords:
    """Read a complete dataset's image metadata, regions and conversations once (no PNG bytes).

    Raises:
        ManifestError: when ``out`` is no medgrit dataset (its message says why).
        ExportError: when the build is not complete, or two images share a sample name.
        MissingPart: when a table part is not in ``out``.
        UnreadablePart: when a table part is not readable Parquet.
    """
    manifest = load_dataset(out)
    shards = manifest.shards
    if manifest.status != "complete" or any(s.status != "done" for s in shards):
        raise ExportError(
            f"{out} is not a complete build; finish it with `medgrit resume {out}` first"
        )
    require_parts(out, manifest)
    regions: dict[str, dict[str, ExportRegion]] = {}
    for r in read_table(out, "regions"):
        regions.setdefault(r["image_id"], {})[r["region_id"]] = ExportRegion(
            r["region_id"], r["label"], tuple(r["bbox"]), tuple(r["bbox_1000"])
        )
    turns = {
        c["image_id"]: tuple(
            ExportQA(q["task"], q["question"], q["answer"], tuple(q["region_ids"])) for q in c["qa"]
        )
        for c in read_table(out, "conversations")
    }
    splits: dict[str, list[ExportRecord]] = {s: [] for s in SPLITS}
    names: set[str] = set()
    parts = [part_path("images", s.id) for s in shards]
    for part in parts:
        rows = read_parquet(out / part, _TEXT_COLUMNS, TABLES["images"]).to_pylist()
        for row, im in enumerate(rows):
            name = sample_name(
                im["modality"], im["dataset"], im["case_id"], im["plane"], im["slice_index"]
            )
            if name in names:
                raise ExportError(f"two images of {out} share the sample name {name}")
            names.add(name)
            splits.setdefault(im["split"], []).append(
                ExportRecord(
                    name=name,
                    image_id=im["image_id"],
                    dataset=im["dataset"],
                    case_id=im["case_id"],
                    modality=im["modality"],
                    plane=im["plane"],
                    slice_index=im["slice_index"],
                    width=im["width"],
                    height=im["height"],
                    split=im["split"],
                    image=ImageRef(part, row),
                    qa=turns.get(im["image_id"], ()),
                    regions=regions.get(im["image_id"], {}),
                )
            )
    return DatasetRecords({k: tuple(v) for k, v in splits.items()}, manifest, out, tuple(parts))


def iter_images(records: DatasetRecords) -> Iterator[tuple[ExportRecord, bytes]]:
    """Every record with its PNG bytes, one images part at a time, in part then row order (so
    each split's records come in the order of ``records.splits``).

    Raises:
        ExportError: when an images part no longer holds the image a record was read from.
        UnreadablePart: when an images part is not readable Parquet.
    """
    at = {(r.image.part, r.image.row): r for recs in records.splits.values() for r in recs}
    for part in records.image_parts:
        row = 0
        with open_parquet(records.root / part) as parquet:
            batches = parquet.iter_batches(
                batch_size=IMAGE_BATCH_ROWS, columns=["image_id", "image"]
            )
            for batch in batches:
                ids = batch.column("image_id").to_pylist()
                pngs = batch.column("image").field("bytes")
                for i, image_id in enumerate(ids):
                    record = at.get((part, row))
                    if record is None or record.image_id != image_id:
                        raise ExportError(
                            f"{records.root / part} changed while exporting; export again"
                        )
                    yield record, pngs[i].as_py()
                    progress.advance("images")  # the caller is done with it
                    row += 1


def write_pngs(records: DatasetRecords, folder: Path) -> int:
    """Write every image as ``folder/NAME.png`` (the table's bytes unchanged); returns the count."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for record, png in iter_images(records):
        (folder / f"{record.name}.png").write_bytes(png)
        count += 1
    return count
