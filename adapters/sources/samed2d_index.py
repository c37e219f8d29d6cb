"""SA-Med2D-20M's index: its file names, ``SAMed2D_v1.json`` (image -> masks) and
``SAMed2D_v1_class_mapping_id.json`` (dataset -> class name -> index), read and checked.

The layout and conventions (axis letters, modality prefixes, label ids = class index + 1, the
classes medgrit does not name) are those of :mod:`medgrit.adapters.sources.samed2d`, which opens a
release with these readers and reads its cases. Reading the index opens no image or mask.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from medgrit.adapters.sources.label_files import read_label_file
from medgrit.core.cases import SourceError
from medgrit.core.fsnames import escape_name
from medgrit.core.label_names import MAX_LABEL_ID, label_name_problem, normalise_label_name
from medgrit.core.text import readable_label_name
from medgrit.core.vocab import MODALITIES, RejectReason

__all__ = [
    "CLASS_MAPPING_JSON",
    "INDEX_JSON",
    "PLANES",
    "SaMed2dSlice",
    "SliceName",
    "dataset_labels",
    "find_index",
    "group_volumes",
    "label_filter_reason",
    "modalities_of",
    "modality_of_prefix",
    "parse_image_name",
    "read_class_mapping",
]

INDEX_JSON = "SAMed2D_v1.json"
CLASS_MAPPING_JSON = "SAMed2D_v1_class_mapping_id.json"
PLANES: dict[str, str] = {"x": "sagittal", "y": "coronal", "z": "axial"}
_PLANE_ORDER: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2, "2d": 3}
_TWO_D = "2d_none"
_PREFIX_MODALITIES: dict[str, str] = {
    "ct": "ct",
    "mr": "mr",
    "pet": "pet",
    "endoscopy": "endoscopy",
    "dermoscopy": "dermoscopy",
    "ultrasound": "ultrasound",
}
_WHOLE_PREFIXES: dict[str, str] = {"x_ray": "xray", "fundus_photography": "fundus"}
_GENERIC = re.compile(r"class[\W_]*\d*", re.IGNORECASE)


class SliceName(NamedTuple):
    """The parts of an SA-Med2D-20M image file name."""

    sub_modality: str
    dataset: str
    case: str
    plane: str
    slice_index: int


def parse_image_name(path: str) -> SliceName | None:
    """Parse ``.../{sub}--{dataset}--{case}--{axis}_{slice}.png``; None if it does not fit."""
    name = path.rsplit("/", 1)[-1]
    if not name.endswith(".png"):
        return None
    parts = name[:-4].split("--")
    if len(parts) < 4 or not all(parts):
        return None
    where = parts[-1]
    if where == _TWO_D:
        plane, index = "2d", 0
    else:
        axis, _, number = where.partition("_")
        if axis not in PLANES or not number.isdigit():
            return None
        plane, index = PLANES[axis], int(number)
    return SliceName(parts[0], parts[1], "--".join(parts[2:-1]), plane, index)


def modality_of_prefix(sub_modality: str) -> str | None:
    """Modality key of a file-name prefix (``mr_flair`` -> ``mr``), or None if unknown."""
    whole = _WHOLE_PREFIXES.get(sub_modality)
    if whole is not None:
        return whole
    return _PREFIX_MODALITIES.get(sub_modality.split("_", 1)[0])


def label_filter_reason(raw: str) -> RejectReason | None:
    """Reject reason for a class name medgrit does not use, or None for a usable name."""
    name = raw.strip()
    if name.lower().startswith("union_"):
        return "composite_label"
    if _GENERIC.fullmatch(name):
        return "generic_label"
    if name.lower() in ("left", "right"):
        return "fragment_label"
    return None


@dataclass(frozen=True)
class SaMed2dSlice:
    """One slice of a volume: its image and the masks ``SAMed2D_v1.json`` lists for it."""

    image: str
    masks: tuple[str, ...]


def find_index(root: Path) -> tuple[Path, Path]:
    """(path of SAMed2D_v1.json, folder its paths are relative to)."""
    for folder, data_root in (
        (root, root),
        (root / "annotations", root),
        (root / "SAMed2Dv1", root / "SAMed2Dv1"),
    ):
        if (folder / INDEX_JSON).is_file():
            return folder / INDEX_JSON, data_root
    raise SourceError(
        f"no {INDEX_JSON} in {root} (nor in annotations/ or SAMed2Dv1/): point samed2d: at the "
        "unpacked SAMed2Dv1 folder"
    )


def read_class_mapping(path: Path) -> dict[str, dict[int, str]]:
    """Dataset -> {label id (class index + 1): class name, normalised}.

    Raises:
        SourceError: a missing or malformed file, a key given twice, a class index that is not
            a whole number >= 0 or is given to two classes, or a class name that
            :func:`medgrit.core.label_names.label_name_problem` refuses.
    """
    if not path.is_file():
        raise SourceError(
            f"no {CLASS_MAPPING_JSON} next to {INDEX_JSON} in {path.parent}: it names the "
            "classes; copy it from the release"
        )
    raw = read_label_file(path, '{"<dataset>": {"<class name>": 0, ...}}')
    where = f"malformed {path.name} at {escape_name(str(path))}"
    if not isinstance(raw, dict):
        raise SourceError(f"{where}: expected {{dataset: {{name: index}}}}")
    mapping: dict[str, dict[int, str]] = {}
    for dataset, classes in raw.items():
        if not isinstance(classes, dict):
            raise SourceError(f"{where}: {dataset!r} must map class name -> index")
        by_id: dict[int, str] = {}
        read_as: dict[str, str] = {}  # the words a kept class reaches the text as
        for name, index in classes.items():
            whole = isinstance(index, int) and not isinstance(index, bool)
            if not whole or not 0 <= index < MAX_LABEL_ID:
                raise SourceError(
                    f"{where}: class {name!r} of {dataset!r} has index {index!r}; expected a "
                    "whole number >= 0"
                )
            normal = normalise_label_name(name)
            problem = label_name_problem(normal)
            if problem:
                raise SourceError(f"{where}: the name of class {name!r} of {dataset!r} {problem}")
            if index + 1 in by_id:
                raise SourceError(
                    f"{where}: class index {index} of {dataset!r} is given to both "
                    f"{by_id[index + 1]!r} and {normal!r}"
                )
            words = readable_label_name(normal)
            if label_filter_reason(normal) is None and words in read_as:
                raise SourceError(
                    f"{where}: classes {read_as[words]!r} and {normal!r} of {dataset!r} both "
                    f"read as {words!r} in the text; the release's mapping is not this one"
                )
            read_as.setdefault(words, normal)
            by_id[index + 1] = normal
        mapping[str(dataset)] = by_id
    return mapping


def dataset_labels(classes: dict[int, str]) -> tuple[tuple[int, str], ...]:
    """(id, class name as written) of the classes medgrit names, by id."""
    return tuple(
        sorted(
            (label_id, name)
            for label_id, name in classes.items()
            if label_filter_reason(name) is None
        )
    )


def group_volumes(
    index: dict, index_path: Path, data_root: Path
) -> dict[tuple[str, str, str], list[tuple[int, int, SaMed2dSlice]]]:
    """The index's slices grouped by volume (dataset, case, sub-modality), each as (plane
    order, slice index, slice) in index order, with paths made absolute under ``data_root``.

    Raises:
        SourceError: an entry that does not map to a list of path strings, or image names that
            do not follow the release's pattern.
    """
    prefix = str(data_root) + os.sep
    volumes: dict[tuple[str, str, str], list[tuple[int, int, SaMed2dSlice]]] = {}
    bad_names: list[str] = []
    for image, masks in index.items():
        parsed = parse_image_name(image)
        if parsed is None:
            bad_names.append(image)
            continue
        if not isinstance(masks, list):
            raise SourceError(
                f"malformed {INDEX_JSON} at {index_path}: {image!r} must map to a list of mask "
                "paths"
            )
        if not all(isinstance(m, str) for m in masks):
            raise SourceError(
                f"malformed {INDEX_JSON} at {index_path}: masks of {image!r} must be path strings"
            )
        found = SaMed2dSlice(
            image if image[0] == "/" else prefix + image,
            tuple(m if m[:1] == "/" else prefix + m for m in masks),
        )
        order = _PLANE_ORDER[parsed.plane]
        volume = (parsed.dataset, parsed.case, parsed.sub_modality)
        volumes.setdefault(volume, []).append((order, parsed.slice_index, found))
    if bad_names:
        raise SourceError(
            f"malformed {INDEX_JSON} at {index_path}: {len(bad_names)} image name(s) do not follow "
            f"{{modality}}--{{dataset}}--{{case}}--{{x|y|z}}_{{slice}}.png, e.g. {bad_names[0]!r}"
        )
    return volumes


def modalities_of(subs: set[str], modality: str | None, index_path: Path) -> dict[str, str]:
    """The modality key of each sub-modality prefix: the one medgrit knows, else ``modality``.

    Raises:
        SourceError: a prefix medgrit does not know, without ``modality``.
    """
    modality_of: dict[str, str] = {}
    for sub in sorted(subs):
        found = modality_of_prefix(sub) or modality
        if found is None:
            raise SourceError(
                f"unknown modality prefix {sub!r} in {index_path}; pass --modality "
                f"({', '.join(MODALITIES)})"
            )
        modality_of[sub] = found
    return modality_of
