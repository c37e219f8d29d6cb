"""Hand-written turns about real image facts, for measuring the verifier (``benchmarks/data``).

A file is a JSON list of images: ``{"image_id", "size": [width, height], "facts": {"modality",
"view", "regions": [{"id", "label", "box", "position", "size", "side", "image_side",
"relations", "area"[, "mask_relations"]}]}, "turns": [{"task", "question", "answer",
"region_ids"[, "class", "why"]}]}``. The facts are those an LLM is given
(``medgrit.schemas.llm.ImagePromptFacts``) plus each region's area and, where the file has them,
its relations from the masks to the other regions shown (``[relation, prompt id]``); the turns
were written from them, in free prose, by people who did not read the verifier (``class``: the
lie a turn tells, in the lies files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.text import MODALITY_NAMES

_MODALITY_KEYS = {name: key for key, name in MODALITY_NAMES.items()}
_PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class NaturalTurn:
    """One written turn, its image and regions, and the lie it tells (None: honest)."""

    image: ImageFacts
    regions: tuple[RegionFacts, ...]
    qa: QA
    lie: str | None
    why: str


def load_turns(path: Path) -> list[NaturalTurn]:
    """Every turn of a file, with region ids ``<image_id>-<prompt id>``."""
    out = []
    for item in json.loads(Path(path).read_text(encoding="utf-8")):
        facts = item["facts"]
        first = facts["view"].split()[0]
        plane = first if first in _PLANES else "2d"
        width, height = item.get("size", (512, 512))
        image = ImageFacts(
            item["image_id"], _MODALITY_KEYS[facts["modality"]], plane, width, height
        )
        label_ids: dict[str, int] = {}
        for r in facts["regions"]:
            label_ids.setdefault(r["label"], len(label_ids) + 1)
        regions = tuple(
            RegionFacts(
                f"{image.image_id}-{r['id']}",
                r["label"],
                label_ids[r["label"]],
                0,
                tuple(r["box"]),
                r["area"],
                r["position"],
                r["size"],
                tuple(
                    (relation, f"{image.image_id}-{other}")
                    for relation, other in r.get("mask_relations", ())
                ),
            )
            for r in facts["regions"]
        )
        for turn in item["turns"]:
            ids = tuple(f"{image.image_id}-{i}" for i in turn["region_ids"])
            qa = QA(turn["task"], turn["question"], turn["answer"], ids)
            out.append(NaturalTurn(image, regions, qa, turn.get("class"), turn.get("why", "")))
    return out
