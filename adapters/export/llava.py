"""LLaVA's conversation layout (also what Qwen2-VL fine-tuning scripts read, see ``qwen2vl``).

``train.json`` and ``test.json``: JSON lists of ``{"id": NAME, "image": "NAME.png",
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...]}``,
one record per image, ``<image>`` only in the first human turn. Images: ``images/NAME.png`` (pass
``images/`` as LLaVA's ``--image_folder``). Text is the dataset's own (Qwen-VL boxes).
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
    write_pngs,
)

TextMap = Callable[[str, ExportRecord, ExportQA], str]


def _same(text: str, record: ExportRecord, qa: ExportQA) -> str:
    return text


def conversation_record(record: ExportRecord, text: TextMap = _same) -> dict:
    """One image's LLaVA record; ``text`` maps each question and answer of a turn (box syntaxes)."""
    turns = []
    for i, qa in enumerate(record.qa):
        question = text(qa.question, record, qa)
        turns.append({"from": "human", "value": f"<image>\n{question}" if i == 0 else question})
        turns.append({"from": "gpt", "value": text(qa.answer, record, qa)})
    return {"id": record.name, "image": f"{record.name}.png", "conversations": turns}


def write_conversations(
    records: DatasetRecords, folder: Path, text: TextMap = _same
) -> dict[str, int]:
    """Write ``train.json``, ``test.json`` and the images; returns records per file."""
    counts = {"images": write_pngs(records, folder / "images")}
    for split in SPLITS:
        rows = [conversation_record(r, text) for r in records.splits.get(split, ()) if r.qa]
        (folder / f"{split}.json").write_text(
            json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        counts[f"{split}.json"] = len(rows)
    return counts


def write_llava(records: DatasetRecords, folder: Path) -> dict[str, int]:
    """Write the LLaVA layout into ``folder``."""
    return write_conversations(records, folder)
