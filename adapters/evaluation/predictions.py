"""Reading prediction files: JSONL lines as BiRD's inference writes them.

One JSON object per line with ``id``, ``image``, ``question``, ``annotation`` (the reference
answer) and ``response`` (the model's raw answer), and optionally ``task`` (VG, ROC, RC, MIA).
The modality is the prefix before the first ``_`` of ``id`` (medgrit's ids,
``ct_00--Dataset--case--z_0042``) or, when that is not a modality key (BiRD's files carry
integer ids), of ``image``, which is where BiRD's own scripts read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medgrit.core.metrics import MODALITIES, modality_key
from medgrit.core.vocab import TASKS


class PredictionFileError(ValueError):
    """A prediction file a user must fix; the message names the line."""


@dataclass(frozen=True)
class Prediction:
    """One scored answer: where it sits in the file, its modality and task, both texts."""

    line: int
    id: str
    modality: str
    task: str | None
    annotation: str
    response: str


def _modality(record: dict, line: int) -> str:
    for field in ("id", "image"):
        value = record.get(field)
        if value is None:
            continue
        # BiRD's image paths start with the modality folder (``endoscopy_3/...``); a path
        # into an export's folder (``images/ct_00--...png``) names it in the file name.
        for text in (str(value), PurePosixPath(str(value)).name):
            key = modality_key(text.split("_")[0].lower())
            if key is not None:
                return key
    raise PredictionFileError(
        f"line {line}: no modality: the id (or image) must start with one of "
        f"{', '.join(MODALITIES)} followed by '_'"
    )


def _task(record: dict, line: int) -> str | None:
    value = record.get("task")
    if value is None:
        return None
    task = str(value).upper()
    if task not in TASKS:
        raise PredictionFileError(
            f"line {line}: unknown task {value!r}; use one of {', '.join(TASKS)}"
        )
    return task


def read_predictions(path: Path) -> list[Prediction]:
    """Every non-blank line of ``path`` as a Prediction, in file order.

    Raises:
        PredictionFileError: a line that is not a JSON object, lacks ``annotation`` or
            ``response`` (or holds non-text there), or has no modality or an unknown task.
        OSError: the file cannot be read.
    """
    out: list[Prediction] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PredictionFileError(f"line {number}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise PredictionFileError(f"line {number}: nested too deeply to read") from None
            if not isinstance(record, dict):
                raise PredictionFileError(f"line {number}: not a JSON object")
            for field in ("annotation", "response"):
                if not isinstance(record.get(field), str):
                    raise PredictionFileError(f"line {number}: needs a text field {field!r}")
            task = _task(record, number)
            if task in ("RC", "MIA") and not record["annotation"].strip():
                # Caption scores need a reference text (CIDEr has nothing to weigh otherwise).
                raise PredictionFileError(f"line {number}: an {task} line needs an annotation")
            out.append(
                Prediction(
                    line=number,
                    id=str(record.get("id", number)),
                    modality=_modality(record, number),
                    task=task,
                    annotation=record["annotation"],
                    response=record["response"],
                )
            )
    return out
