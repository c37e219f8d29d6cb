"""Qwen2-VL's grounding tokens in the LLaVA-style layout its fine-tuning scripts read.

Same files as ``llava`` (``train.json``, ``test.json``, ``images/``; image paths relative to the
export folder, loaded as ``llava`` says), with boxes in Qwen2-VL's tokens by default
(``qwen2-tokens``): each Qwen-VL ``<ref>X</ref><box>(x1,y1),(x2,y2)</box>`` written as
``<|object_ref_start|>X<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`` with the
region's ``bbox_1000`` (Qwen2-VL's 0-1000 frame). ``qwen2.5-absolute`` writes the same tokens
with the region's box in pixels of the image as Qwen2.5-VL sees it (resized to multiples of 28,
:func:`medgrit.core.vlm.resized_size`), the boxes ``medgrit finetune`` trains Qwen2.5-VL on;
``qwen2.5-json`` and ``qwen-vl`` are also written (:mod:`medgrit.core.exports`).
"""

from __future__ import annotations

from pathlib import Path

from medgrit.adapters.export.llava import TextMap, write_conversations
from medgrit.adapters.export.records import DatasetRecords, TurnText

QWEN2_TOKENS = TurnText("qwen2-tokens")


def write_qwen2vl(
    records: DatasetRecords, folder: Path, text: TextMap = QWEN2_TOKENS
) -> dict[str, int]:
    """Write the Qwen2-VL layout into ``folder``, boxes as ``text`` writes them."""
    return write_conversations(records, folder, text)
