"""Run one export or the baseline into a temporary folder or file next to ``--out``, then rename.

Nothing half-written is left at ``--out``: the work goes to ``.{name}.tmp-{host}~{pid}~{token}``
beside it (``medgrit.adapters.runtime.atomic``, the writer of every file), which is removed when
anything fails, and is renamed into place only once complete. A writer killed outright
(``kill -9``) cannot remove its own, so each writer first removes those of this host's processes
that are gone (also the ``.{name}.export.tmp-...`` of earlier versions); one of a live process,
or of another machine, is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medgrit.adapters.export.baseline import baseline_lines
from medgrit.adapters.export.bird import write_bird
from medgrit.adapters.export.hf import write_hf
from medgrit.adapters.export.llava import write_llava
from medgrit.adapters.export.qwen2vl import write_qwen2vl
from medgrit.adapters.export.records import DatasetRecords, TurnText, read_records
from medgrit.adapters.export.trl import write_trl
from medgrit.adapters.runtime.atomic import atomic_folder, is_left_by_dead_process, write_atomic
from medgrit.core.exports import export_box_format
from medgrit.core.vlm import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ExportOptions:
    """The options of an export: ``boxes``, the box format of the text (None: the format's
    default, :data:`medgrit.core.exports.EXPORT_BOX_FORMATS`), with ``max_pixels`` the resize
    of its pixel boxes; and the flags of one format (``jsonl``: trl; ``licences``: hf)."""

    jsonl: bool = False
    boxes: str | None = None
    licences: tuple[str, ...] = field(default_factory=tuple)
    max_pixels: int = DEFAULT_MAX_PIXELS


def turn_text(fmt: str, options: ExportOptions) -> TurnText:
    """How an export of ``fmt`` writes its turns' text under ``options``.

    Raises:
        ValueError: for an unknown format, or a box format ``fmt`` cannot carry.
    """
    return TurnText(export_box_format(fmt, options.boxes), options.max_pixels)


Writer = Callable[[DatasetRecords, Path, ExportOptions], dict[str, int]]

FORMATS: dict[str, Writer] = {
    "bird": lambda r, f, o: write_bird(r, f),  # Qwen-VL boxes only (``turn_text`` checks)
    "llava": lambda r, f, o: write_llava(r, f, turn_text("llava", o)),
    "trl": lambda r, f, o: write_trl(r, f, jsonl=o.jsonl, text=turn_text("trl", o)),
    "qwen2vl": lambda r, f, o: write_qwen2vl(r, f, turn_text("qwen2vl", o)),
    "hf": lambda r, f, o: write_hf(r, f, list(o.licences), turn_text("hf", o)),
}


_STAGING = re.compile(r"^\..+\.tmp-.+$")  # also the ``.{name}.export.tmp-...`` of earlier versions


def remove_stale_staging(folder: Path) -> list[str]:
    """Remove the staging folders and files that killed writers left in ``folder``; returns
    their names."""
    try:
        with os.scandir(folder) as entries:
            stale = [e for e in entries if _STAGING.match(e.name)]
    except OSError:
        return []  # no folder yet: nothing was left there
    removed = []
    for entry in stale:
        if not is_left_by_dead_process(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def export_dataset(
    dataset: Path, fmt: str, out: Path, options: ExportOptions = ExportOptions()
) -> dict[str, int]:
    """Export ``dataset`` as ``fmt`` into the folder ``out`` (absent or empty).

    Returns:
        Records (or images) written per file.

    Raises:
        KeyError: for an unknown format.
        ValueError: for a box format (``options.boxes``) the format cannot carry.
        ManifestError, ExportError: for a dataset that is missing or not complete.
    """
    writer = FORMATS[fmt]
    turn_text(fmt, options)  # a box format the format refuses is refused before reading
    records = read_records(dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    # ``out`` is absent or empty (checked by the caller); the rename never replaces anything else.
    with atomic_folder(out) as staging:
        counts = writer(records, staging, options)
    return counts


def write_predictions(dataset: Path, out: Path, tasks: Sequence[str]) -> int:
    """Write the baseline's predictions for ``tasks`` as JSONL at ``out``; returns the lines.

    Raises:
        ManifestError, ExportError: for a dataset that is missing or not complete.
    """
    lines = baseline_lines(read_records(dataset), tasks)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    write_atomic(out, "".join(line + "\n" for line in lines))
    return len(lines)
