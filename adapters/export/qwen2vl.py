"""Qwen2-VL's grounding tokens in the LLaVA-style layout its fine-tuning scripts read.

Same files as ``llava`` (``train.json``, ``test.json``, ``images/``), with each Qwen-VL
``<ref>X</ref><box>(x1,y1),(x2,y2)</box>`` written as
``<|object_ref_start|>X<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``. The numbers
come from the regions table: ``bbox_1000`` (Qwen2-VL's 0-1000 frame) by default; with
``absolute`` the region's pixel ``bbox`` (Qwen2.5-VL's absolute coordinates on the image as
stored, half-open, so x2 and y2 are exclusive edges).
"""

from __future__ import annotations

from pathlib import Path

from medgrit.adapters.export.llava import write_conversations
from medgrit.adapters.export.records import DatasetRecords, ExportQA, ExportRecord
from medgrit.core.exports import qwen2vl_text


def write_qwen2vl(records: DatasetRecords, folder: Path, absolute: bool = False) -> dict[str, int]:
    """Write the Qwen2-VL layout into ``folder``."""

    def text(value: str, record: ExportRecord, qa: ExportQA) -> str:
        return qwen2vl_text(value, record.text_regions(absolute, first=qa.region_ids))

    return write_conversations(records, folder, text)
