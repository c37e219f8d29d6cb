"""``medgrit export DIR --format F --out PATH``: a finished dataset as training code reads it.

Formats: ``bird`` (BiRD's Qwen-VL/PaddleMIX JSON), ``llava``, ``trl`` (Parquet, or ``--jsonl``),
``qwen2vl`` (Qwen2-VL's layout) and ``hf`` (a Hugging Face dataset folder with a card;
``--license``). ``--boxes`` picks the box format of the text (each format's default:
:data:`medgrit.core.exports.EXPORT_BOX_FORMATS`), pixel boxes in the frame ``medgrit finetune``
trains in (``--max-pixels``); ``--absolute-boxes`` is the older name of ``--boxes
qwen2.5-absolute`` for ``qwen2vl``. The format logic is in ``medgrit.adapters.export``. User
errors are one line and exit code 2, before anything is written.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from medgrit.cli.messages import fail, fail_unreadable_tables, reason_of, shown
from medgrit.cli.outputs import check_output
from medgrit.core.exports import EXPORT_BOX_FORMATS, export_box_format
from medgrit.core.vlm import (
    BOX_FORMATS,
    BOX_FRAME,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    RESIZED_PIXEL_FRAME,
)

if TYPE_CHECKING:
    from medgrit.adapters.export.write import ExportOptions

FORMAT_NAMES = tuple(EXPORT_BOX_FORMATS)
# Choices, so that --help lists them (and any case is taken).
ExportFormat = StrEnum("ExportFormat", {name: name for name in FORMAT_NAMES})
BoxFormat = StrEnum("BoxFormat", {name: name for name in BOX_FORMATS})
_DEFAULTS = "; ".join(f"{f}: {boxes[0]}" for f, boxes in EXPORT_BOX_FORMATS.items())
_PIXEL_FORMATS = [f for f in BOX_FORMATS if BOX_FRAME[f] == RESIZED_PIXEL_FRAME]


def check_new_out(out: Path, kind: Literal["file", "folder"] = "folder") -> None:
    """Refuse an --out that exists and is not empty (an export never overwrites), or that could
    not be written: checked before the dataset is read, however long the export would take."""
    if not str(out).strip():
        fail("--out needs a name")
    if kind == "folder":
        if out.exists() and not out.is_dir():
            fail(f"--out {shown(out)} is a file; choose a new folder")
        if out.is_dir() and any(out.iterdir()):
            fail(f"--out {shown(out)} is not empty; choose a new folder")
    else:
        if out.is_dir():
            fail(f"--out {shown(out)} is a folder; choose a file name")
        if out.exists() and out.stat().st_size > 0:
            fail(f"--out {shown(out)} exists and is not empty; choose a new file")
    check_output(out, "--out", kind, make_parents=True)  # missing folders above it are made


def box_format_of(fmt: str, boxes: str | None, absolute_boxes: bool, max_pixels: int | None) -> str:
    """The box format the export writes, from ``--boxes`` and the older ``--absolute-boxes``;
    refuses (one line, exit 2) what the format cannot carry and a ``--max-pixels`` it would not
    read."""
    if absolute_boxes:
        if fmt != "qwen2vl":
            fail("--absolute-boxes applies to --format qwen2vl only; use --boxes qwen2.5-absolute")
        if boxes not in (None, "qwen2.5-absolute"):
            fail(f"--absolute-boxes means --boxes qwen2.5-absolute, not {boxes}; give one of them")
        typer.echo(
            "medgrit: --absolute-boxes is deprecated; use --boxes qwen2.5-absolute", err=True
        )
        boxes = "qwen2.5-absolute"
    try:
        box_format = export_box_format(fmt, boxes)
    except ValueError as exc:
        fail(str(exc))
    if max_pixels is not None and box_format not in _PIXEL_FORMATS:
        fail(
            f"--max-pixels applies to --boxes {' and '.join(_PIXEL_FORMATS)} (pixel boxes) "
            f"only, not to {box_format}"
        )
    return box_format


def export(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory of a complete build.")],
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", case_sensitive=False, help="Layout to write.")
    ] = ...,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).")] = ...,  # type: ignore[assignment]
    boxes: Annotated[
        BoxFormat | None,
        typer.Option(
            "--boxes",
            case_sensitive=False,
            show_default=False,
            help="Boxes in the text: qwen-vl <ref>/<box> 0-1000; qwen2-tokens Qwen2-VL's box "
            "tokens 0-1000; qwen2.5-absolute those tokens in pixels of the resized image "
            "(Qwen2.5-VL, as finetune); qwen2.5-json Qwen2.5-VL's bbox_2d JSON in those pixels. "
            f"Default by format: {_DEFAULTS}. bird writes qwen-vl only.",
        ),
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            "--max-pixels",
            min=DEFAULT_MIN_PIXELS,
            show_default=False,
            help="Pixel boxes: the image processor's max_pixels the model trains with "
            f"(default {DEFAULT_MAX_PIXELS}, finetune's).",
        ),
    ] = None,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="trl: JSONL with image paths instead of Parquet.")
    ] = False,
    absolute_boxes: Annotated[
        bool,
        typer.Option("--absolute-boxes", help="qwen2vl: deprecated; --boxes qwen2.5-absolute."),
    ] = False,
    license: Annotated[
        list[str] | None,
        typer.Option(
            "--license",
            help="hf: the dataset's licence, or SOURCE=LICENCE per source dataset (repeatable).",
        ),
    ] = None,
) -> None:
    """Export a dataset for training code (BiRD, LLaVA, TRL, Qwen2-VL, Hugging Face)."""
    from medgrit.adapters.export.hf import check_licence_sources, split_licences
    from medgrit.adapters.export.write import ExportOptions
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.manifest import ManifestError

    fmt = str(format.value)
    if jsonl and fmt != "trl":
        fail("--jsonl applies to --format trl only")
    if license and fmt != "hf":
        fail("--license applies to --format hf only")
    box_format = box_format_of(fmt, boxes and str(boxes.value), absolute_boxes, max_pixels)
    try:
        _, per_source = split_licences(list(license or []))
    except ValueError as exc:
        fail(str(exc))
    if per_source:  # a misspelt SOURCE= would leave that source's licence out of the card
        try:
            check_licence_sources(per_source, load_dataset(dataset))
        except (ManifestError, ValueError) as exc:
            fail(str(exc))
    check_new_out(out)
    options = ExportOptions(
        jsonl=jsonl,
        boxes=box_format,
        licences=tuple(license or []),
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
    )
    _write(dataset, fmt, out, options)


def _write(dataset: Path, fmt: str, out: Path, options: ExportOptions) -> None:
    """Run the export; its errors are one line (exit 2, or 1 for a disk that fails)."""
    from pyarrow import ArrowException

    from medgrit.adapters.export.records import ExportError
    from medgrit.adapters.export.write import export_dataset
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.adapters.store.parquet import MissingPart

    _expect_images(dataset)
    try:
        counts = export_dataset(dataset, fmt, out, options)
    except (ManifestError, ExportError, MissingPart) as exc:
        fail(str(exc))
    except ArrowException as exc:
        fail_unreadable_tables(dataset, exc)
    except OSError as exc:
        fail(f"cannot write {shown(out)}: {reason_of(exc)}", code=1)
    for name, n in counts.items():
        typer.echo(f"{name}: {n}")
    boxes = f"with {options.boxes} boxes"
    typer.echo(f"exported {shown(dataset)} as {fmt} {boxes} to {shown(out)}")


def _expect_images(dataset: Path) -> None:
    """Tell the progress display how many images the export writes: the dataset's recorded
    total (none when its manifest cannot say; the export then says what is wrong)."""
    from medgrit.adapters.runtime import progress
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.manifest import ManifestError

    if not progress.active():
        return
    try:
        totals = load_dataset(dataset).totals
    except (ManifestError, OSError, ValueError):
        return
    if totals is not None:
        progress.expect("images", totals.rows.get("images", 0))
