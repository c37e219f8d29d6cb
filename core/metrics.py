"""Scores of BiRD's evaluation on Med-GRIT tasks, and the stricter grounding figures of later work.

Pure functions only (numpy and scipy): the JSONL reading and the caption scorers (Java) live in
``medgrit.adapters.evaluation``.

Conventions, fixed so that numbers compare with the BiRD paper (MICCAI 2024) on Med-GRIT-270k:

- Boxes are Qwen-VL text boxes ``<box>(x1,y1),(x2,y2)</box>`` in 0-1000 integer coordinates,
  read as ``[x1, y1, x2, y2]`` floats. Area is ``(x2 - x1) * (y2 - y1)`` with no ``+1``: the
  corners are treated as continuous coordinates, the way BiRD's script computes IoU.
- A box whose text does not hold exactly four numbers is kept as a row of NaN: its IoU with
  anything is NaN, which never passes a threshold (BiRD scores such a box as IoU 0).
- Scores are computed per modality, then averaged with equal weight. BiRD divides by all eight
  of its modality keys (an absent modality counts as 0): that is ``official_mean``;
  ``present_mean`` averages the modalities that have samples.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from medgrit.core.vocab import BIRD_MODALITY
from medgrit.core.vocab import MODALITIES as DATASET_MODALITIES

# BiRD's modality keys, in its table order. "x" is X-ray.
MODALITIES: tuple[str, ...] = tuple(BIRD_MODALITY[m] for m in DATASET_MODALITIES)
# medgrit's dataset keys that BiRD spells differently.
MODALITY_ALIASES: Mapping[str, str] = {m: k for m, k in BIRD_MODALITY.items() if m != k}

BOX_PATTERN = re.compile(r"<box>(.*?)</box>")
# BiRD's fallback for answers that drop the tags: integers, no spaces.
BARE_BOX_PATTERN = re.compile(r"\(\d+,\d+\),\(\d+,\d+\)")
_LINE_BETWEEN_NEWLINES = re.compile(r"\n(.*?)\n", re.DOTALL)

HUNGARIAN_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.75)


def modality_key(prefix: str) -> str | None:
    """BiRD's modality key for a file-name prefix (``ct``, ``xray`` -> ``x``), None if unknown."""
    key = MODALITY_ALIASES.get(prefix, prefix)
    return key if key in MODALITIES else None


def clean_response(text: str) -> str:
    """Clean a raw model response exactly as BiRD's ``extract_information`` does before scoring.

    Steps, in BiRD's order: cut at the first ``.<|im_end|>`` (keeping the full stop); drop every
    ``<|im_end|>`` followed by a newline; when the text holds a line between two newlines, keep
    only the first such line; drop ``<|endoftext|>``; strip white space. A ``<|im_end|>`` with
    neither a full stop before nor a newline after is kept, as BiRD keeps it, so scores match.
    """
    if ".<|im_end|>" in text:
        text = text.split(".<|im_end|>")[0] + "."
    text = text.replace("<|im_end|>\n", "")
    match = _LINE_BETWEEN_NEWLINES.search(text)
    if match:
        text = match.group(1)
    return text.replace("<|endoftext|>", "").strip()


def _box_from_text(text: str) -> np.ndarray:
    parts = text.replace("(", "").replace(")", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return np.full(4, np.nan)
    return np.array(values) if len(values) == 4 else np.full(4, np.nan)


def _boxes(texts: Sequence[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, 4))
    return np.stack([_box_from_text(t) for t in texts])


def reference_boxes(annotation: str) -> np.ndarray:
    """The ``<box>`` boxes of a reference answer as an (N, 4) float array (N may be 0).

    Raises:
        ValueError: a reference box that is not four numbers; the reference is wrong, not the
            model, so it is not scored as a miss.
    """
    texts = BOX_PATTERN.findall(annotation)
    boxes = _boxes(texts)
    bad = [t for t, row in zip(texts, boxes, strict=True) if not np.isfinite(row).all()]
    if bad:
        raise ValueError(f"reference box <box>{bad[0]}</box> is not four finite numbers")
    return boxes


def predicted_boxes(response: str) -> np.ndarray:
    """The boxes of a (cleaned) response as an (M, 4) float array; unreadable boxes are NaN rows.

    ``<box>`` tags first; when there are none, the bare ``(x1,y1),(x2,y2)`` pattern, as BiRD's
    script falls back for models that drop the tags.
    """
    texts = BOX_PATTERN.findall(response) or BARE_BOX_PATTERN.findall(response)
    return _boxes(texts)


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of every pair, shape (N, M), BiRD's formula (no ``+1``; a zero union gives NaN)."""
    b1 = np.asarray(boxes1, dtype=float).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=float).reshape(-1, 4)
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def count_found(references: np.ndarray, predictions: np.ndarray, threshold: float = 0.5) -> int:
    """How many reference boxes have ANY predicted box with IoU strictly above ``threshold``.

    No one-to-one matching: one predicted box may find several references (BiRD's Recall@0.5).
    """
    if len(references) == 0 or len(predictions) == 0:
        return 0
    iou = box_iou(references, predictions)
    return int(np.count_nonzero((iou > threshold).any(axis=1)))


def matched_ious(references: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """IoU of each reference box with its one-to-one partner, shape (N,).

    Pairs are chosen by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``)
    maximising the total IoU, each predicted box used at most once; unreadable boxes count IoU 0.
    A reference left without a partner (fewer predictions than references) gets IoU 0.
    """
    out = np.zeros(len(references))
    if len(references) == 0 or len(predictions) == 0:
        return out
    iou = np.nan_to_num(box_iou(references, predictions), nan=0.0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    out[rows] = iou[rows, cols]
    return out


def roc_correct(annotation: str, response: str) -> bool:
    """BiRD's referring-object-classification rule.

    Correct when every token of the reference split on single spaces, lower-cased, is a
    substring of the lower-cased response: "left kidney" is found in "The left kidneys".
    An empty reference is one empty token, always found, as in BiRD's script.
    """
    said = response.lower()
    return all(token in said for token in annotation.lower().split(" "))


@dataclass(frozen=True)
class BoxTally:
    """Grounding counts of one modality, summed over its samples (every count is per box)."""

    references: int = 0
    found: int = 0
    samples: int = 0
    skipped: int = 0
    matched_iou_sum: float = 0.0
    matched_at: tuple[int, ...] = (0,) * len(HUNGARIAN_THRESHOLDS)

    def add(self, references: np.ndarray, predictions: np.ndarray) -> BoxTally:
        """The tally with one more sample; a reference without boxes counts only as skipped."""
        if len(references) == 0:
            return BoxTally(
                self.references,
                self.found,
                self.samples,
                self.skipped + 1,
                self.matched_iou_sum,
                self.matched_at,
            )
        ious = matched_ious(references, predictions)
        return BoxTally(
            self.references + len(references),
            self.found + count_found(references, predictions),
            self.samples + 1,
            self.skipped,
            self.matched_iou_sum + float(ious.sum()),
            tuple(
                n + int(np.count_nonzero(ious > t))
                for n, t in zip(self.matched_at, HUNGARIAN_THRESHOLDS, strict=True)
            ),
        )

    def scores(self) -> dict[str, float]:
        """Recall@0.5 (any match), Hungarian accuracy at each threshold and mean matched IoU.

        Every figure is per reference box: found boxes / reference boxes (BiRD sums boxes over
        the modality's samples before dividing, it does not average per sample).
        """
        n = self.references
        out = {"recall@0.5": self.found / n if n else 0.0}
        for t, k in zip(HUNGARIAN_THRESHOLDS, self.matched_at, strict=True):
            out[f"hungarian_acc@{t}"] = k / n if n else 0.0
        out["hungarian_mean_iou"] = self.matched_iou_sum / n if n else 0.0
        return out


def official_mean(per_modality: Mapping[str, float]) -> float:
    """BiRD's mean: the sum over present modalities divided by all eight keys (absent = 0)."""
    return sum(per_modality.get(m, 0.0) for m in MODALITIES) / len(MODALITIES)


def present_mean(per_modality: Mapping[str, float]) -> float:
    """Mean over the modalities that have samples (0.0 when none has)."""
    values = [per_modality[m] for m in MODALITIES if m in per_modality]
    return sum(values) / len(values) if values else 0.0
