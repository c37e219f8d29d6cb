"""TRL's conversational vision layout for ``SFTTrainer``.

One row per image: ``messages``, a list of ``{"role": "user" | "assistant", "content": [...]}``
whose parts are ``{"type": "image"}`` (only at the start of the first user turn) and
``{"type": "text", "text": ...}``, and ``images``, the list of the row's one image.

Parquet (default): ``train.parquet``, ``test.parquet``; images as ``{bytes, path}`` structs with
``datasets`` features, so they load with images decoded from any working directory::

    datasets.load_dataset("parquet", data_files={"train": "/abs/trl/train.parquet", ...})

In Parquet every content part has both keys (``text`` is null on the image part), as on TRL's
own hub datasets. Both Parquet files are written in one pass over the images parts, row group
by row group.

JSONL (``jsonl=True``): ``train.jsonl``, ``test.jsonl`` with images as paths relative to the
folder the JSONL files are in (``images/NAME.png``, written alongside). ``datasets`` does not
resolve a path against its JSON file, so from anywhere load it as::

    folder = "/abs/path/to/export"
    files = {split: f"{folder}/{split}.jsonl" for split in ("train", "test")}
    ds = datasets.load_dataset("json", data_files=files)
    ds = ds.map(lambda r: {"images": [f"{folder}/{p}" for p in r["images"]]})
    ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))

Text: boxes in Qwen2.5-VL's absolute pixels by default (``qwen2.5-absolute``, what ``medgrit
finetune`` trains its default Qwen2.5-VL model on), in the frame of the image resized with
``max_pixels`` 1280 * 28 * 28: give the processor TRL trains with the same ``max_pixels`` (the
model's own default is larger), or export with the ``--max-pixels`` it uses. Any box format of
:data:`medgrit.core.vlm.BOX_FORMATS` can be written instead
(:class:`~medgrit.adapters.export.records.TurnText`).
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
from medgrit.adapters.export.llava import IMAGES, TextMap
from medgrit.adapters.export.records import (
    SPLITS,
    DatasetRecords,
    ExportRecord,
    TurnText,
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
FINETUNE_TEXT = TurnText("qwen2.5-absolute")  # medgrit finetune's boxes for its default model


def messages_of(record: ExportRecord, text: TextMap = FINETUNE_TEXT) -> list[dict]:
    """The record's turns as TRL messages (the image part first in the first user turn), each
    question and answer as ``text`` writes it."""
    messages = []
    for i, qa in enumerate(record.qa):
        content = [{"type": "text", "text": text(qa.question, record, qa)}]
        if i == 0:
            content.insert(0, {"type": "image"})
        answer = text(qa.answer, record, qa)
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _parquet_row(record: ExportRecord, png: bytes, text: TextMap) -> dict:
    return {
        "messages": [
            {"role": m["role"], "content": [{"text": None, **p} for p in m["content"]]}
            for m in messages_of(record, text)
        ],
        "images": [{"bytes": png, "path": f"{record.name}.png"}],
    }


def write_trl(
    records: DatasetRecords, folder: Path, jsonl: bool = False, text: TextMap = FINETUNE_TEXT
) -> dict[str, int]:
    """Write the TRL layout into ``folder``, boxes as ``text`` writes them; returns rows per
    file."""
    if not jsonl:
        with ExitStack() as stack:
            writers = {
                s: stack.enter_context(ParquetRowGroupWriter(folder / f"{s}.parquet", SCHEMA))
                for s in SPLITS
            }
            for record, png in iter_images(records):
                if record.qa and record.split in writers:
                    writers[record.split].add(_parquet_row(record, png, text))
        return {f"{s}.parquet": w.count for s, w in writers.items()}
    counts = {IMAGES: write_pngs(records, folder / IMAGES)}
    for split in SPLITS:
        lines = [
            json.dumps(
                {"messages": messages_of(r, text), "images": [f"{IMAGES}/{r.name}.png"]},
                ensure_ascii=False,
            )
            for r in records.splits.get(split, ())
            if r.qa
        ]
        (folder / f"{split}.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        counts[f"{split}.jsonl"] = len(lines)
    return counts
