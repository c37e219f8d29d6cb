"""TRL's conversational vision layout for ``SFTTrainer``.

One row per image: ``messages``, a list of ``{"role": "user" | "assistant", "content": [...]}``
whose parts are ``{"type": "image"}`` (only at the start of the first user turn) and
``{"type": "text", "text": ...}``, and ``images``, the list of the row's one image.

Parquet (default): ``train.parquet``, ``test.parquet``; images as ``{bytes, path}`` structs with
``datasets`` features, so ``load_dataset("parquet", ...)`` gives PIL images; in Parquet every
content part has both keys (``text`` is null on the image part), as on TRL's own hub datasets.
JSONL (``jsonl=True``): ``train.jsonl``, ``test.jsonl`` with images as paths relative to the
folder (``images/NAME.png``, written alongside). Text is the dataset's own (Qwen-VL boxes).
Both Parquet files are written in one pass over the images parts, row group by row group.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa

from medgrit.adapters.export.hfparquet import (
    IMAGE,
    IMAGE_TYPE,
    STRING,
    ParquetRowGroupWriter,
    with_features,
)
from medgrit.adapters.export.records import (
    SPLITS,
    DatasetRecords,
    ExportRecord,
    iter_images,
    write_pngs,
)

_PART = pa.struct([pa.field("type", pa.string()), pa.field("text", pa.string())])
_MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.list_(_PART))])
SCHEMA = with_features(
    pa.schema([pa.field("messages", pa.list_(_MESSAGE)), pa.field("images", pa.list_(IMAGE_TYPE))]),
    {
        "messages": [{"role": STRING, "content": [{"type": STRING, "text": STRING}]}],
        "images": [IMAGE],
    },
)


def messages_of(record: ExportRecord) -> list[dict]:
    """The record's turns as TRL messages (the image part first in the first user turn)."""
    messages = []
    for i, qa in enumerate(record.qa):
        content = [{"type": "text", "text": qa.question}]
        if i == 0:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": qa.answer}]})
    return messages


def _parquet_row(record: ExportRecord, png: bytes) -> dict:
    return {
        "messages": [
            {"role": m["role"], "content": [{"text": None, **p} for p in m["content"]]}
            for m in messages_of(record)
        ],
        "images": [{"bytes": png, "path": f"{record.name}.png"}],
    }


def write_trl(records: DatasetRecords, folder: Path, jsonl: bool = False) -> dict[str, int]:
    """Write the TRL layout into ``folder``; returns rows per file."""
    if not jsonl:
        with ExitStack() as stack:
            writers = {
                s: stack.enter_context(ParquetRowGroupWriter(folder / f"{s}.parquet", SCHEMA))
                for s in SPLITS
            }
            for record, png in iter_images(records):
                if record.qa and record.split in writers:
                    writers[record.split].add(_parquet_row(record, png))
        return {f"{s}.parquet": w.count for s, w in writers.items()}
    counts = {"images": write_pngs(records, folder / "images")}
    for split in SPLITS:
        lines = [
            json.dumps(
                {"messages": messages_of(r), "images": [f"images/{r.name}.png"]},
                ensure_ascii=False,
            )
            for r in records.splits.get(split, ())
            if r.qa
        ]
        (folder / f"{split}.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        counts[f"{split}.jsonl"] = len(lines)
    return counts
