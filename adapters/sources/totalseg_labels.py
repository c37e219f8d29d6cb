"""TotalSegmentator's class maps and the label table it writes into a NIfTI header.

TotalSegmentator numbers the classes of a task (``total``: 117 CT classes, ``total_mr``: 50 MR
classes) with ids 1..n; its multilabel output stores those ids as voxel values. Its writer puts
the map into the file's header too, as a NIfTI extension holding a ``CaretExtension`` XML
document whose ``LabelTable`` has one ``<Label Key="ID" ...><![CDATA[NAME]]></Label>`` per
class.

:func:`class_map` gives a task's map from the installed ``totalsegmentator`` package
(``totalsegmentator.map_to_binary.class_map``) when it is importable and has the task, else from
the copy bundled with medgrit (``totalseg_classes.json``, TotalSegmentator 2.x).
"""

from __future__ import annotations

import importlib
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from functools import cache
from importlib import resources

from medgrit.core.cases import SourceError
from medgrit.core.label_names import check_label_map

__all__ = ["CLASS_MAP_OF_MODALITY", "class_map", "header_label_map"]

# The TotalSegmentator task whose classes a modality's masks are named after.
CLASS_MAP_OF_MODALITY: Mapping[str, str] = {"ct": "total", "mr": "total_mr"}

# A label table larger than this is no TotalSegmentator label table.
_MAX_TABLE_BYTES = 1 << 20


@cache
def _bundled() -> dict[str, dict[int, str]]:
    text = resources.files(__package__).joinpath("totalseg_classes.json").read_text("utf-8")
    return {task: {int(k): v for k, v in names.items()} for task, names in json.loads(text).items()}


@cache
def _installed(task: str) -> dict[int, str] | None:
    try:
        module = importlib.import_module("totalsegmentator.map_to_binary")
    except ImportError:
        return None
    found = getattr(module, "class_map", {}).get(task)
    return {int(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None


def class_map(task: str, installed: bool = True) -> dict[int, str]:
    """Class id -> class name of a TotalSegmentator task (``total``, ``total_mr``): the
    installed package's map (unless ``installed`` is false) else the bundled copy.

    Raises:
        KeyError: a task neither the installed package nor the bundled copy knows.
    """
    return dict((_installed(task) if installed else None) or _bundled()[task])


def header_label_map(header: object, where: str) -> dict[int, str] | None:
    """The label table TotalSegmentator wrote into a NIfTI header's extensions, or None when
    the header holds none.

    Args:
        header: a nibabel NIfTI header (its ``extensions`` are read; no voxel is).
        where: the file, for messages.

    Raises:
        SourceError: a label table that cannot be read, or that
            :func:`medgrit.core.label_names.check_label_map` refuses.
    """
    for extension in getattr(header, "extensions", ()):
        content = extension.get_content()
        if not isinstance(content, bytes) or b"<CaretExtension" not in content[:4096]:
            continue
        if len(content) > _MAX_TABLE_BYTES or b"<!DOCTYPE" in content or b"<!ENTITY" in content:
            raise SourceError(f"the label table in the header of {where} is not one to read")
        try:
            root = ElementTree.fromstring(content.rstrip(b"\0 \n\r\t"))
        except ElementTree.ParseError as exc:
            raise SourceError(
                f"the label table in the header of {where} is malformed XML ({exc}); "
                "rewrite the file with TotalSegmentator or remove the header extension"
            ) from None
        pairs = [(label.get("Key"), label.text or "") for label in root.iter("Label")]
        return check_label_map(pairs, f"the label table in the header of {where}")
    return None
