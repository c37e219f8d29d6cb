"""Table rows <-> the pipeline's frozen dataclasses, written once for the writer and ``validate``.

The columns are those of ``medgrit.schemas.tables`` (the pyarrow schemas); this module holds
the Python side only (no pyarrow): the pure pipeline builds its rows with it, and ``validate``
reads them back.
"""

from __future__ import annotations

from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.vocab import RejectReason


def image_row(
    image: ImageFacts, dataset: str, case_id: str, slice_index: int, split: str, png: bytes
) -> dict:
    """One ``images`` row (the image struct in the Hugging Face ``Image`` layout; ``sequence``
    null when the source names none)."""
    return {
        "image_id": image.image_id,
        "dataset": dataset,
        "case_id": case_id,
        "modality": image.modality,
        "plane": image.plane,
        "slice_index": slice_index,
        "width": image.width,
        "height": image.height,
        "split": split,
        "image": {"bytes": png, "path": f"{image.image_id}.png"},
        "sequence": image.sequence or None,
    }


def region_row(
    fact: RegionFacts,
    image_id: str,
    bbox: tuple[int, int, int, int],
    laterality: str | None,
    source_label: str,
) -> dict:
    """One ``regions`` row: the facts text may use (with the mask relations), the pixel box,
    the side and the label's name as its source writes it."""
    return {
        "region_id": fact.region_id,
        "image_id": image_id,
        "label": fact.label,
        "label_id": fact.label_id,
        "instance": fact.instance,
        "bbox": list(bbox),
        "bbox_1000": list(fact.bbox_1000),
        "area": fact.area,
        "position": fact.position,
        "size": fact.size,
        "laterality": laterality,
        "relations": [{"relation": rel, "region_id": other} for rel, other in fact.relations],
        "source_label": source_label,
    }


def region_facts(row: dict) -> RegionFacts:
    """The facts a ``regions`` row records (the inverse of :func:`region_row`). A row of a
    schema version 1 table has no ``relations`` (absent, or None when read with the current
    schema): its region has none."""
    relations = row.get("relations") or ()
    return RegionFacts(
        region_id=row["region_id"],
        label=row["label"],
        label_id=row["label_id"],
        instance=row["instance"],
        bbox_1000=tuple(row["bbox_1000"]),  # type: ignore[arg-type]
        area=row["area"],
        position=row["position"],
        size=row["size"],
        relations=tuple((r["relation"], r["region_id"]) for r in relations),
    )


def qa_row(qa: QA) -> dict:
    """One turn of a conversation row's ``qa`` list."""
    return {
        "task": qa.task,
        "question": qa.question,
        "answer": qa.answer,
        "region_ids": list(qa.region_ids),
    }


def qa_of(row: dict) -> QA:
    """The turn a ``qa`` entry records (the inverse of :func:`qa_row`)."""
    return QA(row["task"], row["question"], row["answer"], tuple(row["region_ids"]))


def conversation_row(
    image_id: str,
    split: str,
    turns: list[QA],
    generator: str,
    template_hash: str,
    prompt_hash: str | None,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict:
    """The one ``conversations`` row of an image."""
    return {
        "conversation_id": f"{image_id}-c0",
        "image_id": image_id,
        "split": split,
        "qa": [qa_row(qa) for qa in turns],
        "generator": generator,
        "template_hash": template_hash,
        "prompt_hash": prompt_hash,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }


def reject_row(
    stage: str,
    reason: RejectReason,
    detail: str,
    source: str,
    dataset: str,
    case_id: str,
    image_id: str | None = None,
) -> dict:
    """One ``rejects`` row: where it was dropped, the stable reason and what it came from."""
    return {
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "source": source,
        "dataset": dataset,
        "case_id": case_id,
        "image_id": image_id,
    }
