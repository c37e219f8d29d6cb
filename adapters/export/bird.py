"""BiRD's released training layout (Qwen-VL fine-tuned through PaddleMIX).

``train.json``: a JSON list of ``{"id": NAME, "conversations": [[question, answer], ...]}``, one
record per image, whose first question starts with ``Picture 1: <img>NAME.png</img>\\n``.
``Test_VG.json``, ``Test_RO.json``, ``Test_GC.json``, ``Test_MII.json`` (BiRD's names for VG, ROC,
RC, MIA): one record per test turn, ``{"id": NAME, "conversations": [[question, answer]]}``, the
question again with the image prefix; an image with two turns of a task has two records of the
same id. Images: ``images/NAME.png``. Text is the dataset's own (Qwen-VL boxes, ``bbox_1000``),
the only box format BiRD's Qwen-VL code reads.

The files name no image path but the ``id``; from any working directory, load them as::

    import datasets
    folder = "/abs/path/to/export"
    ds = datasets.load_dataset("json", data_files={"train": f"{folder}/train.json"})
    ds = ds.map(lambda r: {"image": f"{folder}/images/{r['id']}.png"})
    ds = ds.cast_column("image", datasets.Image())
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medgrit.adapters.export.records import DatasetRecords, ExportRecord, write_pngs
from medgrit.core.exports import BIRD_TEST_FILES, bird_question
from medgrit.core.vocab import TASKS


@dataclass(frozen=True)
class TestItem:
    """One test turn as BiRD evaluates it (shared by the ``bird`` export and the baseline)."""

    record: ExportRecord
    task: str
    question: str
    answer: str
    region_ids: tuple[str, ...]


def test_items(records: DatasetRecords, split: str = "test") -> list[TestItem]:
    """Every turn of the test split (or of ``split``), with BiRD's prefixed question, in record
    order."""
    return [
        TestItem(rec, qa.task, bird_question(rec.name, qa.question), qa.answer, qa.region_ids)
        for rec in records.splits.get(split, ())
        for qa in rec.qa
    ]


def _train_record(rec: ExportRecord) -> dict:
    pairs = [[q.question, q.answer] for q in rec.qa]
    if pairs:
        pairs[0][0] = bird_question(rec.name, pairs[0][0])
    return {"id": rec.name, "conversations": pairs}


def _dump(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def write_bird(records: DatasetRecords, folder: Path) -> dict[str, int]:
    """Write the BiRD layout into ``folder``; returns the number of records per file."""
    counts = {"images": write_pngs(records, folder / "images")}
    train = [_train_record(r) for r in records.splits.get("train", ()) if r.qa]
    _dump(folder / "train.json", train)
    counts["train.json"] = len(train)
    items = test_items(records)
    for task in TASKS:
        rows = [
            {"id": it.record.name, "conversations": [[it.question, it.answer]]}
            for it in items
            if it.task == task
        ]
        _dump(folder / BIRD_TEST_FILES[task], rows)
        counts[BIRD_TEST_FILES[task]] = len(rows)
    return counts
