"""``medgrit demo-data DIR``: the demo sources written to a folder, to build or to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medgrit.cli.messages import fail, reason_of, shown


def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the demo sources into.")],
) -> None:
    """Write the demo sources (all eight modalities, in their native layouts) to a folder."""
    from medgrit.adapters.synthetic.demo import demo_source_specs, ensure_demo_data

    if out.exists() and not out.is_dir():
        fail(f"{shown(out)} is a file, not a folder; choose a new folder")
    if out.exists() and any(out.iterdir()) and not (out / ".complete").is_file():
        fail(f"{shown(out)} is not empty; choose a new folder")
    try:
        root = ensure_demo_data(out)
    except OSError as exc:
        fail(f"cannot write the demo sources to {shown(out)}: {reason_of(exc)}")
    typer.echo(f"demo sources written to {shown(root.resolve())}; build them with:")
    typer.echo("  medgrit build " + shown(" ".join(demo_source_specs(root))) + " --out DIR")
