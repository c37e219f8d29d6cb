"""Rule-based predictions for the test split, in BiRD's inference output format.

One JSON line per test turn of the ``bird`` export (same records, same order): ``{"id": NAME,
"image": "NAME.png", "question", "annotation" (the reference answer), "response", "task"}``. The
rules (:func:`medgrit.core.exports.predict_baseline_answer`) look only at the train split and the
turn's task, modality and (for VG) the asked label: a floor that any trained model should beat.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from medgrit.adapters.export.bird import test_items
from medgrit.adapters.export.records import DatasetRecords
from medgrit.core.exports import BaselineModel, fit_baseline, predict_baseline_answer


def fit_records(records: DatasetRecords) -> BaselineModel:
    """The baseline fitted on the train split's regions."""
    return fit_baseline(
        (rec.modality, reg.label, reg.bbox_1000)
        for rec in records.splits.get("train", ())
        for reg in rec.regions.values()
    )


def baseline_lines(
    records: DatasetRecords,
    tasks: Iterable[str],
    chosen: Collection[int] | None = None,
    split: str = "test",
) -> list[str]:
    """The JSONL lines of the baseline's predictions for the test turns (or ``split``'s) of
    ``tasks``; with ``chosen``, only for those turns (indices into ``test_items(records,
    split)``)."""
    model = fit_records(records)
    wanted = set(tasks)
    keep = None if chosen is None else set(chosen)
    lines = []
    for index, item in enumerate(test_items(records, split)):
        if item.task not in wanted or (keep is not None and index not in keep):
            continue
        asked = next(
            (item.record.regions[i].label for i in item.region_ids if i in item.record.regions),
            None,
        )
        response = predict_baseline_answer(model, item.task, item.record.modality, asked)
        lines.append(
            json.dumps(
                {
                    "id": item.record.name,
                    "image": f"{item.record.name}.png",
                    "question": item.question,
                    "annotation": item.answer,
                    "response": response,
                    "task": item.task,
                },
                ensure_ascii=False,
            )
        )
    return lines
