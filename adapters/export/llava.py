"""LLaVA's conversation layout (also what Qwen2-VL fine-tuning scripts read, see ``qwen2vl``).

``train.json`` and ``test.json``: JSON lists of ``{"id": NAME, "image": "images/NAME.png",
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}``,
one record per image, ``<image>`` only in the first human turn. Images: ``images/NAME.png``.

Image paths are relative to the folder the JSON files are in, as LLaVA's ``image`` is relative to
the trainer's ``--image_folder``: pass the export folder itself as ``--image_folder`` (the same
for Qwen2-VL fine-tuning scripts), from any working directory. ``datasets`` does not resolve a
path against its JSON file, so from anywhere load it as::

    import datasets
    folder = "/abs/path/to/export"
    files = {split: f"{folder}/{split}.json" for split in ("train", "test")}
    ds = datasets.load_dataset("json", data_files=files)
    ds = ds.map(lambda r: {"image": f"{folder}/{r['image']}"})
    ds = ds.cast_column("image", datasets.Image())

Text: boxes in the box format a :class:`~medgrit.adapters.export.records.TurnText` writes
(``qwen-vl`` by default: the dataset's own text).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from medgrit.adapters.export.records import (
    SPLITS,
    DatasetRecords,
    ExportQA,
    ExportRecord,
    TurnText,
    write_pngs,
)

TextMap = Callable[[str, ExportRecord, ExportQA], str]
DATASET_TEXT = TurnText()  # the dataset's own text: Qwen-VL boxes
IMAGES = "images"


def conversation_record(record: ExportRecord, text: TextMap = DATASET_TEXT) -> dict:
    """One image's LLaVA record; ``text`` maps each question and answer of a turn (box syntaxes)."""
    turns = []
    for i, qa in enumerate(record.qa):
        question = text(qa.question, record, qa)
        turns.append({"from": "human", "value": f"<image>\n{question}" if i == 0 else question})
        turns.append({"from": "gpt", "value": text(qa.answer, record, qa)})
    return {"id": record.name, "image": f"{IMAGES}/{record.name}.png", "conversations": turns}


def write_conversations(
    records: DatasetRecords, folder: Path, text: TextMap = DATASET_TEXT
) -> dict[str, int]:
    """Write ``train.json``, ``test.json`` and the images; returns records per file."""
    counts = {IMAGES: write_pngs(records, folder / IMAGES)}
    for split in SPLITS:
        rows = [conversation_record(r, text) for r in records.splits.get(split, ()) if r.qa]
        (folder / f"{split}.json").write_text(
            json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        counts[f"{split}.json"] = len(rows)
    return counts


def write_llava(
    records: DatasetRecords, folder: Path, text: TextMap = DATASET_TEXT
) -> dict[str, int]:
    """Write the LLaVA layout into ``folder``, boxes as ``text`` writes them."""
    return write_conversations(records, folder, text)
