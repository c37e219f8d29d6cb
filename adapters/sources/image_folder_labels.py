"""The ``labels.json`` of an image folder, read and checked: its modality, masks mode, case
pattern and the names of its ``per_class`` mask files (the fields are described in
:mod:`medgrit.adapters.sources.image_folder`). A problem a user must fix raises ``SourceError``
naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from medgrit.adapters.sources.label_files import read_label_file
from medgrit.core.cases import SourceError
from medgrit.core.vocab import MODALITIES

__all__ = [
    "LABELS_JSON",
    "MASK_MODES",
    "case_pattern",
    "class_mask_keys",
    "config_error",
    "modality_of",
    "read_labels_json",
]

LABELS_JSON = "labels.json"
MASK_MODES: tuple[str, ...] = ("label_map", "per_class")


def config_error(path: Path, problem: str) -> SourceError:
    """The error of a ``labels.json`` at ``path`` that a user must fix."""
    return SourceError(f"{path}: {problem}")


def read_labels_json(root: Path) -> tuple[Path, dict]:
    """(path, object) of the ``labels.json`` in ``root``; raises SourceError when it is
    missing or not a JSON object."""
    path = root / LABELS_JSON
    if not path.is_file():
        raise SourceError(
            f"no {LABELS_JSON} in {root}: add one like "
            '{"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"}'
        )
    meta = read_label_file(
        path, '{"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"}'
    )
    if not isinstance(meta, dict):
        raise config_error(path, "expected a JSON object")
    return path, meta


def modality_of(meta: dict, path: Path, override: str | None) -> str:
    """The modality key ``labels.json`` names, else ``override`` (``--modality``)."""
    value = meta.get("modality")
    if value is None:
        if override is None:
            keys = ", ".join(MODALITIES)
            raise config_error(path, f'add "modality" (one of {keys}) or pass --modality')
        value = override
    if value not in MODALITIES:
        raise config_error(
            path, f"modality {value!r} is not one of {', '.join(MODALITIES)}; fix it"
        )
    return str(value)


def case_pattern(meta: dict, path: Path) -> re.Pattern[str] | None:
    """The ``cases`` pattern, whose one group is the case of a stem (None: each stem is a
    case)."""
    raw = meta.get("cases", "stem")
    if raw == "stem":
        return None
    if not isinstance(raw, str):
        raise config_error(path, '"cases" must be "stem" or a regular expression')
    try:
        pattern = re.compile(raw)
    except re.error as exc:
        raise config_error(path, f'"cases" is not a valid regular expression: {exc}') from None
    if pattern.groups != 1:
        raise config_error(
            path, f'"cases" needs exactly one group that captures the case, got {pattern.groups}'
        )
    return pattern


def class_mask_keys(raw_labels: dict[int, str], path: Path) -> list[tuple[int, str]]:
    """(label id, mask stem suffix) pairs of ``per_class`` masks, by label id: a label's mask is
    named ``{stem}_{name}`` or ``{stem}_{id}``. A name that is another label's id is refused."""
    ids = {str(i): i for i in raw_labels}
    for label_id, name in sorted(raw_labels.items()):
        if ids.get(name, label_id) != label_id:
            raise config_error(
                path,
                f"label {label_id} is named {name!r}, which is label {name}'s id: a mask "
                f"named _{name} would be both; rename label {label_id}",
            )
    mask_keys: list[tuple[int, str]] = []
    for label_id, name in sorted(raw_labels.items()):
        mask_keys.append((label_id, f"_{name}"))
        mask_keys.append((label_id, f"_{label_id}"))
    return mask_keys
