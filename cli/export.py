"""``medgrit export DIR --format F --out PATH``: a finished dataset as training code reads it.

Formats: ``bird`` (BiRD's Qwen-VL/PaddleMIX JSON), ``llava``, ``trl`` (Parquet, or ``--jsonl``),
``qwen2vl`` (Qwen2-VL box tokens; ``--absolute-boxes`` for Qwen2.5-VL pixel boxes) and ``hf`` (a
Hugging Face dataset folder with a card; ``--license``). The format logic is in
``medgrit.adapters.export``. User errors are one line and exit code 2, before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from medgrit.cli.messages import fail, fail_unreadable_tables, reason_of, shown
from medgrit.cli.outputs import check_output

FORMAT_NAMES = ("bird", "llava", "trl", "qwen2vl", "hf")


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


def export(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory of a complete build.")],
    format: Annotated[
        str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMAT_NAMES)}.")
    ] = ...,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new or empty).")] = ...,  # type: ignore[assignment]
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="trl: JSONL with image paths instead of Parquet.")
    ] = False,
    absolute_boxes: Annotated[
        bool,
        typer.Option(
            "--absolute-boxes", help="qwen2vl: pixel boxes (Qwen2.5-VL) instead of 0-1000."
        ),
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
    from pyarrow import ArrowException

    from medgrit.adapters.export.hf import check_licence_sources, split_licences
    from medgrit.adapters.export.records import ExportError
    from medgrit.adapters.export.write import ExportOptions, export_dataset
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.adapters.store.parquet import MissingPart

    fmt = format.strip().lower()
    if fmt not in FORMAT_NAMES:
        fail(f"unknown --format {format!r}; choose one of {', '.join(FORMAT_NAMES)}")
    if jsonl and fmt != "trl":
        fail("--jsonl applies to --format trl only")
    if absolute_boxes and fmt != "qwen2vl":
        fail("--absolute-boxes applies to --format qwen2vl only")
    if license and fmt != "hf":
        fail("--license applies to --format hf only")
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
    options = ExportOptions(jsonl, absolute_boxes, tuple(license or []))
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
    typer.echo(f"exported {shown(dataset)} as {fmt} to {shown(out)}")
