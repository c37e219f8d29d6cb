"""Reads what the report shows from a dataset's Parquet parts, column by column.

What it reads, per done shard: ``images`` (image_id, dataset, modality, split), ``regions``
(label, bbox_1000), ``conversations`` (image_id and the ``task`` leaf of ``qa``
only) and ``rejects`` (stage, reason). Image bytes and the full conversations are read only for
the gallery's images, one row group at a time, and their regions (image_id, label, bbox) from
the shards that hold them (:func:`read_samples`). So a 75k-image dataset
costs a few small columns plus the gallery's rows, never the PNGs of every image.

Never read: source file names (the images' ``image.path``, the rejects' ``source`` and
``detail``), which may identify a patient; the report shows pseudonymised case ids only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medgrit.adapters.store.bookkeeping import load_dataset
from medgrit.adapters.store.parquet import open_parquet, part_path, read_parquet, require_parts
from medgrit.schemas.manifest import Manifest


@dataclass(frozen=True)
class RowAt:
    """Where a row lies: the part (relative path) and its row index within that part."""

    part: str
    row: int


@dataclass
class ReportData:
    """Counts and columns over every done shard of one dataset."""

    manifest: Manifest
    image_ids: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    images_by_modality: Counter = field(default_factory=Counter)
    images_by_split: Counter = field(default_factory=Counter)
    images_by_dataset: Counter = field(default_factory=Counter)
    qa_by_modality_task: dict[str, Counter] = field(default_factory=dict)
    labels: Counter = field(default_factory=Counter)
    rejects_by_reason: Counter = field(default_factory=Counter)
    rows: Counter = field(default_factory=Counter)
    bbox_1000: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    image_at: dict[str, RowAt] = field(default_factory=dict)
    conversation_at: dict[str, RowAt] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One gallery image: its PNG, its regions' pixel boxes and labels, and its turns."""

    image_id: str
    case_id: str
    dataset: str
    modality: str
    split: str
    png: bytes
    regions: list[dict]
    turns: list[dict]


def _leaves(file: pq.ParquetFile, prefix: str) -> list[str]:
    meta = file.metadata.schema
    return [meta.column(i).path for i in range(len(meta)) if meta.column(i).path.startswith(prefix)]


def done_shards(manifest: Manifest) -> list[str]:
    """Ids of the shards whose parts are complete, in manifest order."""
    return [s.id for s in manifest.shards if s.status == "done"]


def read_report_data(out_dir: str | Path) -> ReportData:
    """Counts, labels and boxes of every done shard (see the module docstring for the columns).

    Raises:
        ManifestError: when ``out_dir`` is not a readable medgrit dataset.
        MissingPart: when a done shard's table part is not in it.
        UnreadablePart: when a table part is not readable Parquet.
    """
    out = Path(out_dir)
    data = ReportData(manifest=load_dataset(out))
    require_parts(out, data.manifest)
    modality_of: dict[str, str] = {}
    boxes: list[np.ndarray] = []
    for shard in done_shards(data.manifest):
        rel = part_path("images", shard)
        t = read_parquet(out / rel, ["image_id", "dataset", "modality", "split"])
        ids = t.column("image_id").to_pylist()
        mods = t.column("modality").to_pylist()
        for row, (image_id, modality) in enumerate(zip(ids, mods, strict=True)):
            data.image_at[image_id] = RowAt(rel, row)
            modality_of[image_id] = modality
        data.image_ids.extend(ids)
        data.modalities.extend(mods)
        data.images_by_modality.update(mods)
        data.images_by_split.update(_value_counts(t.column("split")))
        data.images_by_dataset.update(_value_counts(t.column("dataset")))
        data.rows["images"] += t.num_rows
        rel = part_path("regions", shard)
        t = read_parquet(out / rel, ["label", "bbox_1000"])
        data.labels.update(_value_counts(t.column("label")))
        flat = pc.list_flatten(t.column("bbox_1000")).to_numpy(zero_copy_only=False)
        boxes.append(flat.reshape(-1, 4))
        data.rows["regions"] += t.num_rows
        rel = part_path("conversations", shard)
        with open_parquet(out / rel) as f:
            t = f.read(columns=["image_id", *_task_leaf(f)])
        ids = t.column("image_id").to_pylist()
        for row, image_id in enumerate(ids):
            data.conversation_at[image_id] = RowAt(rel, row)
        lengths = pc.list_value_length(t.column("qa")).to_pylist()
        tasks = pc.list_flatten(t.column("qa")).combine_chunks().field("task").to_pylist()
        at = 0
        for image_id, length in zip(ids, lengths, strict=True):
            per_task = data.qa_by_modality_task.setdefault(
                modality_of.get(image_id, "unknown"), Counter()
            )
            per_task.update(tasks[at : at + length])
            at += length
        data.rows["conversations"] += t.num_rows
        data.rows["qa"] += len(tasks)
        t = read_parquet(out / part_path("rejects", shard), ["reason"])
        data.rejects_by_reason.update(_value_counts(t.column("reason")))
        data.rows["rejects"] += t.num_rows
    if boxes:
        data.bbox_1000 = np.concatenate(boxes).astype(np.int32)
    return data


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column).to_pylist()
    return {c["values"]: c["counts"] for c in counts}


def _regions_of(out: Path, shard_part: str, image_ids: set[str]) -> dict[str, list[dict]]:
    """Label and pixel box of each region of ``image_ids``, from one shard's regions part."""
    rel = part_path("regions", shard_part.removeprefix("images/part-").removesuffix(".parquet"))
    found: dict[str, list[dict]] = {}
    t = read_parquet(out / rel, ["image_id", "label", "bbox"])
    t = t.filter(pc.is_in(t.column("image_id"), pa.array(sorted(image_ids), pa.string())))
    for row in t.to_pylist():
        found.setdefault(row["image_id"], []).append({"label": row["label"], "bbox": row["bbox"]})
    return found


def _task_leaf(file: pq.ParquetFile) -> list[str]:
    leaves = [p for p in _leaves(file, "qa.") if p.endswith(".task")]
    if not leaves:
        raise ValueError("conversations part without qa.task")
    return leaves[:1]


def _read_row(out: Path, at: RowAt, columns: list[str]) -> dict:
    """One row of a part, reading only the row group that holds it."""
    with open_parquet(out / at.part) as f:
        start = 0
        for group in range(f.metadata.num_row_groups):
            size = f.metadata.row_group(group).num_rows
            if at.row < start + size:
                table: pa.Table = f.read_row_group(group, columns=columns)
                return table.slice(at.row - start, 1).to_pylist()[0]
            start += size
    raise IndexError(f"row {at.row} is not in {at.part}")


def read_samples(out_dir: str | Path, data: ReportData, indices: list[int]) -> list[Sample]:
    """The gallery's images: PNG bytes, regions and conversation of each chosen image."""
    out = Path(out_dir)
    by_part: dict[str, set[str]] = {}
    for i in indices:
        image_id = data.image_ids[i]
        by_part.setdefault(data.image_at[image_id].part, set()).add(image_id)
    regions: dict[str, list[dict]] = {}
    for part, ids in by_part.items():
        regions.update(_regions_of(out, part, ids))
    samples = []
    for i in indices:
        image_id = data.image_ids[i]
        image = _read_row(
            out,
            data.image_at[image_id],
            ["image_id", "dataset", "case_id", "modality", "split", "image.bytes"],
        )
        turns: list[dict] = []
        if image_id in data.conversation_at:
            turns = _read_row(out, data.conversation_at[image_id], ["qa"])["qa"]
        samples.append(
            Sample(
                image_id=image_id,
                case_id=image["case_id"],
                dataset=image["dataset"],
                modality=image["modality"],
                split=image["split"],
                png=image["image"]["bytes"],
                regions=regions.get(image_id, []),
                turns=turns,
            )
        )
    return samples
