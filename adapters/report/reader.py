"""Reads what the report shows from a dataset's Parquet parts, column by column.

What it reads, per done shard: ``images`` (image_id, dataset, modality, split), ``regions``
(label, bbox_1000), ``conversations`` (image_id and the ``task`` leaf of ``qa``
only) and ``rejects`` (every column; of each shard's rejects only a few candidates for examples
are kept, :func:`medgrit.core.report_stats.reject_candidates`). Image bytes and the full
conversations are read only for the gallery's images and the rejects' examples, one row group at
a time, and their regions (image_id, label, bbox) from the shards that hold them
(:func:`read_samples`, :func:`read_reject_examples`). So a 75k-image dataset costs a few small
columns plus the shown rows, never the PNGs of every image.

Never shown: source file names (the images' ``image.path`` is not read; the rejects' ``source``
is read only to hide its file name, and the case's name, where a detail quotes them: ``no such
file: [file]``), which may identify a patient; the report shows pseudonymised case ids only.
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
from medgrit.core.report_stats import (
    RejectRow,
    best_units,
    choose_reject_examples,
    hide_names,
    ranked,
    reject_candidates,
)
from medgrit.schemas.manifest import Manifest

_REJECT_COLUMNS = ["stage", "reason", "detail", "source", "dataset", "case_id", "image_id"]


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
    example_candidates: list[RejectRow] = field(default_factory=list)
    examples_per_reason: int = 0


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


@dataclass(frozen=True)
class RejectExample:
    """One reject row shown as an example of its reason.

    Attributes:
        row: the row.
        detail: its detail as shown: the source's file and case names hidden.
        png: its image's PNG bytes, or None when the dataset does not hold the image (or the
            report's pictures ran out).
        regions: the image's regions (label and pixel box), as the gallery draws them.
    """

    row: RejectRow
    detail: str
    png: bytes | None = None
    regions: list[dict] = field(default_factory=list)


def _leaves(file: pq.ParquetFile, prefix: str) -> list[str]:
    meta = file.metadata.schema
    return [meta.column(i).path for i in range(len(meta)) if meta.column(i).path.startswith(prefix)]


def done_shards(manifest: Manifest) -> list[str]:
    """Ids of the shards whose parts are complete, in manifest order."""
    return [s.id for s in manifest.shards if s.status == "done"]


def read_report_data(out_dir: str | Path, examples: int = 0) -> ReportData:
    """Counts, labels and boxes of every done shard (see the module docstring for the columns),
    and candidates for ``examples`` example rows per reject reason.

    Raises:
        ManifestError: when ``out_dir`` is not a readable medgrit dataset.
        MissingPart: when a done shard's table part is not in it.
        UnreadablePart: when a table part is not readable Parquet.
    """
    out = Path(out_dir)
    data = ReportData(manifest=load_dataset(out), examples_per_reason=max(examples, 0))
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
        columns = _REJECT_COLUMNS if data.examples_per_reason else ["reason"]
        t = read_parquet(out / part_path("rejects", shard), columns)
        data.rejects_by_reason.update(_value_counts(t.column("reason")))
        data.rows["rejects"] += t.num_rows
        if data.examples_per_reason and t.num_rows:
            rows = _reject_rows(t, modality_of, data.examples_per_reason)
            data.example_candidates = reject_candidates(
                [*data.example_candidates, *rows], data.examples_per_reason
            )
    if boxes:
        data.bbox_1000 = np.concatenate(boxes).astype(np.int32)
    return data


def _reject_rows(t: pa.Table, modality_of: dict[str, str], per_group: int) -> list[RejectRow]:
    """The rows of one shard's rejects that may become examples. A shard may hold millions of
    rows but few distinct reasons, datasets, images and cases: only the rows of the units
    :func:`~medgrit.core.report_stats.best_units` keeps, with each unit's first detail, become
    objects."""
    unit = pc.coalesce(t.column("image_id"), t.column("case_id"), pa.scalar("", pa.string()))
    keyed = pa.table(
        {
            "reason": t.column("reason"),
            "dataset": pc.fill_null(t.column("dataset"), ""),
            "image_id": pc.fill_null(t.column("image_id"), ""),
            "unit": unit,
            "detail": t.column("detail"),
        }
    )
    firsts = keyed.group_by(["reason", "dataset", "image_id", "unit"]).aggregate(
        [("detail", "min")]
    )
    groups = firsts.to_pylist()
    keys = [
        (g["reason"], g["dataset"] or None, modality_of.get(g["image_id"]), g["unit"])
        for g in groups
    ]
    best = best_units(keys, per_group)
    wanted = [
        "\x1f".join((g["reason"], g["dataset"], g["unit"], g["detail_min"]))
        for g, key in zip(groups, keys, strict=True)
        if key in best
    ]
    joined = pc.binary_join_element_wise(
        keyed["reason"], keyed["dataset"], keyed["unit"], keyed["detail"], "\x1f"
    )
    chosen = t.filter(pc.is_in(joined, pa.array(wanted, pa.string())))
    return [
        RejectRow(
            reason=row["reason"],
            stage=row["stage"],
            detail=row["detail"],
            dataset=row["dataset"],
            case_id=row["case_id"],
            image_id=row["image_id"],
            modality=modality_of.get(row["image_id"] or ""),
            source=row["source"],
        )
        for row in chosen.to_pylist()
    ]


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


def _read_images(out: Path, data: ReportData, image_ids: list[str]) -> dict[str, dict]:
    """Each image's row (PNG bytes and the columns the page shows) and its regions, under
    ``regions``; one row group per image, one regions part per shard."""
    by_part: dict[str, set[str]] = {}
    for image_id in image_ids:
        by_part.setdefault(data.image_at[image_id].part, set()).add(image_id)
    regions: dict[str, list[dict]] = {}
    for part, ids in by_part.items():
        regions.update(_regions_of(out, part, ids))
    columns = ["image_id", "dataset", "case_id", "modality", "split", "image.bytes"]
    return {
        image_id: {
            **_read_row(out, data.image_at[image_id], columns),
            "regions": regions.get(image_id, []),
        }
        for image_id in dict.fromkeys(image_ids)
    }


def read_samples(out_dir: str | Path, data: ReportData, indices: list[int]) -> list[Sample]:
    """The gallery's images: PNG bytes, regions and conversation of each chosen image."""
    out = Path(out_dir)
    images = _read_images(out, data, [data.image_ids[i] for i in indices])
    samples = []
    for i in indices:
        image_id = data.image_ids[i]
        image = images[image_id]
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
                regions=image["regions"],
                turns=turns,
            )
        )
    return samples


def _names_in(row: RejectRow, case_names: dict[str, str]) -> dict[str, str]:
    """The file and case names a row's detail may quote, and what stands for each."""
    names: dict[str, str] = {}
    case = case_names.get(row.case_id or "")
    if case:
        names.update({case: "[case]", Path(case).name: "[case]"})
    source = row.source.split("#")[0]
    reference = source.removeprefix(f"{row.dataset}/") if row.dataset else source
    file_name = Path(reference).name
    for name in (source, reference, file_name, file_name.split(".")[0]):
        if name:
            names[name] = "[file]"
    return names


def read_reject_examples(
    out_dir: str | Path, data: ReportData, pictures: int
) -> dict[str, list[RejectExample]]:
    """Example rows of each reject reason (:func:`~medgrit.core.report_stats.choose_reject_examples`
    over what :func:`read_report_data` kept), reasons most frequent first; the first
    ``pictures`` examples whose image the dataset holds come with it, in that order.
    """
    out = Path(out_dir)
    chosen = choose_reject_examples(data.example_candidates, data.examples_per_reason)
    case_names = {c.case_id: c.case for s in data.manifest.shards for c in s.cases}
    ordered = [(reason, chosen.get(reason, [])) for reason in ranked(data.rejects_by_reason)]
    pictured = [
        row for _, rows in ordered for row in rows if row.pictured and row.image_id in data.image_at
    ][:pictures]
    images = _read_images(out, data, [row.image_id for row in pictured if row.image_id])
    examples: dict[str, list[RejectExample]] = {}
    for reason, rows in ordered:
        examples[reason] = []
        for row in rows:
            image = images.get(row.image_id or "") if row in pictured else None
            examples[reason].append(
                RejectExample(
                    row=row,
                    detail=_shown_detail(row, case_names),
                    png=image["image"]["bytes"] if image else None,
                    regions=image["regions"] if image else [],
                )
            )
    return examples


def _shown_detail(row: RejectRow, case_names: dict[str, str]) -> str:
    """A reject's detail as the page shows it: a turn's words as written (a turn never quotes a
    file), a reader's message with the file and case names it quotes hidden."""
    if row.stage in ("generate", "verify"):
        return row.detail
    return hide_names(row.detail, _names_in(row, case_names))
