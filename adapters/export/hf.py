"""A Hugging Face dataset folder: ``data/{split}-00000-of-00001.parquet`` and a dataset card.

One row per image: ``id`` (the sample name), ``image`` (an ``Image`` feature: PNG bytes),
``image_id``, ``dataset``, ``case_id`` (pseudonymous), ``modality``, ``plane``, ``slice_index``,
``width``, ``height``, ``qa`` (the turns: task, question, answer, region_ids) and ``regions``
(region_id, label, bbox, bbox_1000). ``datasets.load_dataset("/abs/path/to/FOLDER")`` reads it
offline from any working directory, images decoded (their bytes are in the Parquet files): the
card's YAML front matter names the split files, and the Parquet metadata carries the features.
Both split files are written in one pass over the images parts, row group by row group. The
turns' text has its boxes in the box format a :class:`~medgrit.adapters.export.records.TurnText`
writes (``qwen-vl`` by default, the dataset's own text); the card says which.

The card (``README.md``) gives the counts per split, modality and task, the sources (names,
kinds, modalities and case counts, never local paths), the licences the user names, and the
build settings that decide the contents. Source names and licence texts are escaped where they
land in Markdown (:mod:`medgrit.core.markdown`), and the front matter's ``license`` is a quoted
licence id (``other`` for any text that is not one), so the YAML stays valid.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa

from medgrit.adapters.export.hfparquet import (
    IMAGE,
    IMAGE_TYPE,
    INT32,
    STRING,
    ParquetRowGroupWriter,
    with_features,
)
from medgrit.adapters.export.records import (
    SPLITS,
    DatasetRecords,
    ExportRecord,
    TurnText,
    iter_images,
)
from medgrit.adapters.store.bookkeeping import content_config
from medgrit.core.exports import box_format_note
from medgrit.core.markdown import escape_markdown, markdown_table
from medgrit.core.vocab import TASKS
from medgrit.schemas.manifest import Manifest

_QA = pa.struct(
    [
        pa.field("task", pa.string()),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("region_ids", pa.list_(pa.string())),
    ]
)
_REGION = pa.struct(
    [
        pa.field("region_id", pa.string()),
        pa.field("label", pa.string()),
        pa.field("bbox", pa.list_(pa.int32())),
        pa.field("bbox_1000", pa.list_(pa.int32())),
    ]
)
_COLUMNS = [
    ("id", pa.string(), STRING),
    ("image", IMAGE_TYPE, IMAGE),
    ("image_id", pa.string(), STRING),
    ("dataset", pa.string(), STRING),
    ("case_id", pa.string(), STRING),
    ("modality", pa.string(), STRING),
    ("plane", pa.string(), STRING),
    ("slice_index", pa.int32(), INT32),
    ("width", pa.int32(), INT32),
    ("height", pa.int32(), INT32),
    (
        "qa",
        pa.list_(_QA),
        [{"task": STRING, "question": STRING, "answer": STRING, "region_ids": [STRING]}],
    ),
    (
        "regions",
        pa.list_(_REGION),
        [{"region_id": STRING, "label": STRING, "bbox": [INT32], "bbox_1000": [INT32]}],
    ),
]
SCHEMA = with_features(
    pa.schema([pa.field(n, t) for n, t, _ in _COLUMNS]), {n: f for n, _, f in _COLUMNS}
)


DATASET_TEXT = TurnText()  # the dataset's own text: Qwen-VL boxes


def _row(r: ExportRecord, png: bytes, text: TurnText) -> dict:
    return {
        "id": r.name,
        "image": {"bytes": png, "path": f"{r.name}.png"},
        "image_id": r.image_id,
        "dataset": r.dataset,
        "case_id": r.case_id,
        "modality": r.modality,
        "plane": r.plane,
        "slice_index": r.slice_index,
        "width": r.width,
        "height": r.height,
        "qa": [
            {
                "task": q.task,
                "question": text(q.question, r, q),
                "answer": text(q.answer, r, q),
                "region_ids": list(q.region_ids),
            }
            for q in r.qa
        ],
        "regions": [
            {
                "region_id": g.region_id,
                "label": g.label,
                "bbox": list(g.bbox),
                "bbox_1000": list(g.bbox_1000),
            }
            for g in r.regions.values()
        ],
    }


def split_licences(licences: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--license`` values as (the dataset's licence, per-source licences from ``SOURCE=LICENCE``).

    Raises:
        ValueError: for two licences of the whole dataset, or a ``SOURCE=`` with no licence.
    """
    overall: str | None = None
    per: dict[str, str] = {}
    for text in licences:
        source, sep, licence = text.partition("=")
        if sep:
            if not source.strip() or not licence.strip():
                raise ValueError(f"--license {text!r}: write SOURCE=LICENCE, both non-empty")
            per[source.strip()] = licence.strip()
        elif overall is not None:
            raise ValueError("--license without SOURCE= is given twice; give one for the dataset")
        else:
            overall = text.strip()
    return overall, per


def source_names(manifest: Manifest) -> list[str]:
    """The names ``--license SOURCE=LICENCE`` may give: each source's dataset names, sorted."""
    names: set[str] = set()
    for src in manifest.sources:
        if src.dataset is not None:
            names.add(src.dataset)
        names.update(src.datasets or {})
    return sorted(names)


def check_licence_sources(per_source: Mapping[str, str], manifest: Manifest) -> None:
    """Refuse a per-source licence for a name no source of the dataset has (a typo would
    otherwise leave that source's licence out of the card without a word).

    Raises:
        ValueError: naming the unknown names and the known ones.
    """
    known = source_names(manifest)
    unknown = sorted(set(per_source) - set(known))
    if unknown:
        given = ", ".join(f"{n}={per_source[n]}" for n in unknown)
        raise ValueError(
            f"--license {given}: the dataset has no source dataset named "
            f"{', '.join(repr(n) for n in unknown)}; its names are: {', '.join(known) or 'none'}"
        )


_LICENCE_ID = re.compile(r"[a-z0-9][a-z0-9.+_-]*")


def _licence_id(overall: str | None) -> str:
    """The front matter's licence: a hub licence id as given (lowercased), else ``other``."""
    licence = (overall or "").lower()
    return licence if _LICENCE_ID.fullmatch(licence) else "other"


def dataset_card(
    records: DatasetRecords,
    overall: str | None,
    per_source: Mapping[str, str],
    text: TurnText = DATASET_TEXT,
) -> str:
    """The card's text: YAML front matter (configs, splits, licence), how to load it, the box
    format of the text (``text``'s) and the counts."""
    manifest = records.manifest
    front = [
        "---",
        f"license: {json.dumps(_licence_id(overall))}",
        "task_categories:",
        "- image-text-to-text",
        "tags:",
        "- medical",
        "- visual-grounding",
        "- med-grit",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for split in (s for s in SPLITS if records.splits.get(s)):  # an empty split loads as none
        front += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    front.append("---")
    counts = {
        s: Counter((r.modality, q.task) for r in recs for q in r.qa)
        for s, recs in records.splits.items()
    }
    images = {s: Counter(r.modality for r in recs) for s, recs in records.splits.items()}
    modalities = sorted({m for c in images.values() for m in c})
    rows = []
    for split in SPLITS:
        for m in modalities:
            per_task = [counts.get(split, Counter())[(m, t)] for t in TASKS]
            rows.append([split, m, images.get(split, Counter())[m], *per_task, sum(per_task)])
    sources = []
    for src in manifest.sources:
        for name, info in (src.datasets or {src.dataset or "?": None}).items():
            licence = per_source.get(name) or per_source.get(str(src.dataset)) or "not given"
            mods = ", ".join((info.modalities if info else None) or [str(src.modality)])
            cases = info.cases if info else src.cases
            sources.append([name, src.kind, mods, cases, licence])
    config = {
        k: v
        for k, v in content_config(dict(manifest.config)).items()
        if k not in ("key_file", "sources")
    }
    body = [
        "",
        "# Med-GRIT-style refer-and-ground dataset",
        "",
        "Instruction data for visual grounding (VG), referring object classification (ROC), "
        "referring captioning (RC) and medical image analysis (MIA), built by medgrit from "
        f"segmentation masks. {box_format_note(text.box_format, text.max_pixels)} "
        "`regions.bbox` is the half-open pixel box of the image as stored, `regions.bbox_1000` "
        "its Qwen-VL box. Cases are pseudonymised and train and test are split by case.",
        "",
        'Load it with `datasets.load_dataset("path/to/this/folder")` from any working '
        "directory: the images decode to PIL images.",
        "",
        f"Licence: {escape_markdown(overall) if overall else 'not given'}.",
        "",
        "## Counts (images, and QA pairs per task)",
        "",
        markdown_table(["split", "modality", "images", *TASKS, "QA"], rows),
        "",
        "## Sources",
        "",
        markdown_table(["dataset", "kind", "modalities", "cases", "licence"], sources),
        "",
        "## Build config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(front + body)


def write_hf(
    records: DatasetRecords, folder: Path, licences: list[str], text: TurnText = DATASET_TEXT
) -> dict[str, int]:
    """Write the Hugging Face dataset folder, boxes as ``text`` writes them; returns rows per
    file.

    Raises:
        ValueError: for ``licences`` that :func:`split_licences` or
            :func:`check_licence_sources` refuses.
    """
    overall, per_source = split_licences(licences)
    check_licence_sources(per_source, records.manifest)
    names = {s: f"data/{s}-00000-of-00001.parquet" for s in SPLITS}
    with ExitStack() as stack:
        writers = {
            s: stack.enter_context(ParquetRowGroupWriter(folder / n, SCHEMA))
            for s, n in names.items()
        }
        for record, png in iter_images(records):
            if record.split in writers:
                writers[record.split].add(_row(record, png, text))
    counts = {names[s]: w.count for s, w in writers.items()}
    card = dataset_card(records, overall, per_source, text)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return counts
