"""``medgrit inspect SOURCE...``: what a build would read, in seconds, without Prefect.

The sources and the options that change what a build reads (plane, modality, channels, label
names, slice choice, intensity windows, ``--max-images``, the split's share) are taken as
``medgrit build`` takes them, and checked with the same one-line messages (exit code 2). The
counts are ``medgrit.adapters.inspect``'s: a table per topic for a person (rich tables in a
terminal, plain aligned text elsewhere), or ``--json`` (its documented structure). Nothing is
written: the pseudonymisation key is read when it exists, never created.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from pydantic import ValidationError

from medgrit.cli.configfile import read_label_words
from medgrit.cli.messages import fail, reason_of, shown
from medgrit.cli.preflight import absolute_spec, key_path_of
from medgrit.core.markdown import printable_text
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.sources import kinds_help

if TYPE_CHECKING:
    from medgrit.adapters.inspect import Inspection
    from medgrit.adapters.planning import SourceListing

# A table for a person: title, column names, rows (numbers are right-aligned).
Table = tuple[str, tuple[str, ...], list[tuple[object, ...]]]
_SOURCE_COLUMNS = (
    *("source", "kind", "datasets", "cases", "taken", "read", "train", "test"),
    *("images", "listed images", "rejects"),
)


def inspect(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help=f"Sources as KIND:PATH or 'demo' (the default). {kinds_help()}."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print JSON (for scripts).")
    ] = False,
    sample: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Read N cases spread over the sources (default: every case of at most 60, "
            "else 60).",
        ),
    ] = None,
    all_cases: Annotated[
        bool, typer.Option("--all", metavar="", help="Read every case, however many.")
    ] = False,
    plane: Annotated[
        Literal["axial", "coronal", "sagittal"],
        typer.Option(case_sensitive=False, help="Slice plane."),
    ] = "axial",
    modality: Annotated[
        str | None,
        typer.Option(help="Modality key (ct, mr, xray, pet, ...) when the source does not say."),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(metavar="NAMES", help="Only these channels, as for `medgrit build`."),
    ] = None,
    label_names: Annotated[
        Path | None, typer.Option(help="File of the words for labels, as for `medgrit build`.")
    ] = None,
    max_images: Annotated[int | None, typer.Option(help="Take at most N images.")] = None,
    slice_stride: Annotated[int, typer.Option(help="Take every N-th slice with foreground.")] = 1,
    max_slices_per_case: Annotated[
        int | None, typer.Option(help="At most N slices per case, spread evenly.")
    ] = None,
    min_area: Annotated[int, typer.Option(help="Drop region instances under N pixels.")] = 16,
    ct_window: Annotated[
        str | None,
        typer.Option(metavar="LEVEL,WIDTH", help="CT window in HU (default 40,400)."),
    ] = None,
    percentiles: Annotated[
        str | None,
        typer.Option(metavar="LOW,HIGH", help="MR/PET intensity percentiles (default 0.5,99.5)."),
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of cases held out as test.")] = 0.11,
    key_file: Annotated[
        Path | None,
        typer.Option(help="Pseudonymisation key file (read if it exists; for the build's splits)."),
    ] = None,
) -> None:
    """Show what a build would read: cases, splits, modalities, labels, images and rejects.

    Per source and in total, as a build with the same options would find them; nothing is
    written. Large collections are sampled (--sample, --all); the output says how many cases
    were read.
    """
    from medgrit.cli import _config_error, _pair

    fields: dict = {
        "sources": [absolute_spec(spec) for spec in (sources or ["demo"])],
        "out": "-",  # no dataset is written
        "plane": plane,
        "modality": modality,
        "channels": None if channels is None else channels.split(","),
        "label_names": read_label_words(label_names) if label_names else {},
        "max_images": max_images,
        "slice_stride": slice_stride,
        "max_slices_per_case": max_slices_per_case,
        "min_area": min_area,
        "test_fraction": test_fraction,
        "key_file": str(key_file.expanduser().absolute()) if key_file else None,
    }
    if ct_window is not None:
        fields["ct_window"] = _pair(ct_window, "--ct-window")
    if percentiles is not None:
        fields["percentiles"] = _pair(percentiles, "--percentiles")
    try:
        config = BuildConfig(**fields)
    except ValidationError as exc:
        _config_error(exc)
    if all_cases and sample is not None:
        fail("give --sample N or --all, not both")
    _show(config, sample, all_cases, as_json)


def _show(config: BuildConfig, sample: int | None, all_cases: bool, as_json: bool) -> None:
    """Inspect the sources of ``config`` and print what was found."""
    from medgrit.adapters.inspect import DEFAULT_SAMPLE, inspect_sources
    from medgrit.cli.terminal import end_progress
    from medgrit.core.failures import StopRequested

    listing, key = _open(config)
    keyless = not key_path_of(config).exists()
    try:
        found = inspect_sources(
            config, listing, key, None if all_cases else sample or DEFAULT_SAMPLE
        )
    except StopRequested:
        raise KeyboardInterrupt from None  # main() says it stopped
    except OSError as exc:
        fail(f"cannot read the sources: {reason_of(exc)}", code=1)
    end_progress()  # the progress lines (or full bars) come before the tables
    if keyless:
        typer.echo(
            f"note: no pseudonymisation key at {shown(key_path_of(config))} yet, so the "
            "train/test split shown is one of many; the first build creates the key and fixes it",
            err=True,
        )
    if as_json:
        typer.echo(json.dumps(found.to_json(), indent=2))
    elif not _print_rich(found):
        typer.echo(render_text(found))


def _open(config: BuildConfig) -> tuple[SourceListing, bytes]:
    """The sources opened as ``medgrit build`` opens them, with its messages; the key when its
    file exists, else a throwaway one (nothing is created)."""
    from medgrit.adapters.planning import open_build_sources
    from medgrit.adapters.runtime.keys import load_or_create_key
    from medgrit.adapters.sources import SourceError

    key_path = key_path_of(config)
    try:
        key = load_or_create_key(key_path) if key_path.exists() else secrets.token_bytes(32)
    except (OSError, ValueError) as exc:
        fail(f"cannot use the pseudonymisation key {shown(key_path)}: {reason_of(exc)}")
    try:
        listing = open_build_sources(config, key)
    except SourceError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read the sources: {reason_of(exc)}")
    except (RecursionError, ValueError) as exc:
        fail(f"cannot read the sources: {type(exc).__name__}: {str(exc)[:200]}")
    if not any(s.cases for s in listing.sources):
        fail("the sources hold no cases (no label files found)")
    return listing, key


# -- for a person ----------------------------------------------------------------------------


def headline(found: Inspection) -> str:
    """One line: what was read, with which options."""
    cases = found.total.to_json()["cases"]
    n = len(found.sources)
    listed = f"{n} source{'' if n == 1 else 's'}, {cases['listed']} cases listed"
    if cases["taken"] < cases["listed"]:
        listed += f", {cases['taken']} taken (--max-images)"
    read = (
        f"counts from {cases['read']} of {cases['taken']} cases (a sample; --all reads every case)"
        if found.sampled
        else "every case taken was read"
    )
    c = found.config
    options = f"plane {c.plane}, min area {c.min_area} px"
    if c.max_images is not None:
        options += f", at most {c.max_images} images"
    return f"{listed}; {read}; {options}"


def tables(found: Inspection) -> list[Table]:
    """The tables a person reads: sources, modalities, labels, rejects."""
    rows = [
        _source_row(printable_text(s.spec), s.kind, tally.to_json()) for s, tally in found.sources
    ]
    total = found.total.to_json()
    rows.append(_source_row("total", "", total))
    modalities = [
        (m["modality"], m["sequence"] or "", m["cases"], m["images"]) for m in total["modalities"]
    ]
    labels = [
        (x["dataset"], x["label"], x["written"], x["images"], x["instances"])
        for x in total["labels"]
    ]
    rejects = []
    for r in total["rejects"]:
        first = r["examples"][0] if r["examples"] else {"source": "", "detail": ""}
        example = f"{first['source']}: {first['detail']}" if first["source"] else ""
        rejects.append((r["reason"], r["stage"], r["count"], example))
    return [
        (
            "sources",
            _SOURCE_COLUMNS,
            rows,
        ),
        ("modalities", ("modality", "sequence", "cases", "images"), modalities),
        ("labels", ("dataset", "label", "written", "images", "instances"), labels),
        ("rejects", ("reason", "stage", "count", "example"), rejects),
    ]


def _source_row(name: str, kind: str, summary: dict) -> tuple[object, ...]:
    cases, images = summary["cases"], summary["images"]
    rejects = sum(r["count"] for r in summary["rejects"])
    return (
        name,
        kind,
        len(summary["datasets"]),
        cases["listed"],
        cases["taken"],
        cases["read"],
        cases["train"],
        cases["test"],
        images["total"],
        images["listed"],
        rejects,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def render_text(found: Inspection) -> str:
    """Plain aligned tables (for pipes and files); every cell on one line, escaped."""
    out = [printable_text(headline(found))]
    for title, columns, rows in tables(found):
        out += ["", title if rows else f"{title}: none"]
        if not rows:
            continue
        cells = [tuple(printable_text(str(c)) for c in row) for row in [columns, *rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
        right = [_is_number(v) for v in rows[0]]
        for row in cells:
            aligned = zip(row, widths, right, strict=True)
            out.append("  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in aligned).rstrip())
    return "\n".join(out)


def _print_rich(found: Inspection) -> bool:
    """The same tables drawn by rich when stdout is a terminal (False when it is not); cells
    are plain text, never markup."""
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    console = Console(highlight=False)
    if not console.is_terminal or console.is_dumb_terminal:
        return False
    console.print(Text(printable_text(headline(found)), style="bold"))
    for title, columns, rows in tables(found):
        if not rows:
            console.print(Text(f"{title}: none"))
            continue
        table = RichTable(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            header_style="bold",
            pad_edge=False,
        )
        for name, number in zip(columns, map(_is_number, rows[0]), strict=True):
            table.add_column(name, justify="right" if number else "left", overflow="fold")
        for i, row in enumerate(rows):
            totals = title == "sources" and i == len(rows) - 1
            if totals:
                table.add_section()
            cells = [Text(printable_text(str(c))) for c in row]
            table.add_row(*cells, style="bold" if totals else None)
        console.print(table)
    return True
