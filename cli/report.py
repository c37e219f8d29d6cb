"""``medgrit report DIR --out report.html``: one self-contained HTML page about a dataset.

User errors (DIR is not a medgrit dataset, --out is a folder or cannot be written, --out lies
inside DIR, --out exists and --overwrite was not given) are one line and exit code 2, checked
before anything is read; the page is written to a temporary file and renamed, so a failed run
leaves nothing half-written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from medgrit.adapters.runtime import progress
from medgrit.cli.messages import fail, fail_unreadable_tables, reason_of, shown
from medgrit.cli.outputs import check_output


def _check_target(out: Path, dataset: Path, overwrite: bool) -> None:
    check_output(out, "--out", "file")
    if out.exists() and not overwrite:
        fail(f"--out {shown(out)} exists; give --overwrite to replace it, or another file name")
    resolved, root = out.resolve(), dataset.resolve()
    if resolved == root or root in resolved.parents:
        fail(
            f"--out {shown(out)} lies inside the dataset {shown(dataset)}; write the report "
            "outside it (a dataset holds only medgrit's files)"
        )


def report(
    dataset: Annotated[Path, typer.Argument(metavar="DIR", help="Dataset directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write.")] = Path(
        "report.html"
    ),
    samples: Annotated[
        int, typer.Option(min=0, help="Gallery size: images shown with boxes and conversation.")
    ] = 8,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the gallery's choice of images.")] = 0,
    reject_examples: Annotated[
        int, typer.Option(min=0, help="Examples shown per reject reason (0: counts only).")
    ] = 3,
    overwrite: Annotated[
        bool, typer.Option(help="Replace --out when it exists (else an existing file is refused).")
    ] = False,
) -> None:
    """Write a self-contained HTML report of a dataset: counts, labels, boxes, a gallery.

    Tables of images per modality, split and dataset, QA pairs per modality and task, labels
    and rejects; histograms of box sizes and centres; sample images (one of each modality
    first) with their boxes and conversations; examples of each reject reason (the image, the
    rejected turn, the words that broke the rule marked). One file, nothing fetched: open it
    anywhere.
    """
    from medgrit.adapters.store.dataset_dir import is_medgrit_dataset
    from medgrit.adapters.store.manifest import ManifestError

    if not str(out).strip():
        fail("--out needs a file name")
    if not dataset.is_dir():
        fail(f"{shown(dataset)} is not a folder; give a dataset directory")
    if not is_medgrit_dataset(dataset):
        fail(f"{shown(dataset)} is not a medgrit dataset (no medgrit dataset.json in it)")
    _check_target(out, dataset, overwrite)
    if sys.stderr.isatty():  # off a terminal an error stays the only line
        progress.phase(f"reading {shown(dataset)} and drawing its report")

    from pyarrow import ArrowException

    from medgrit.adapters.report.html import write_report
    from medgrit.adapters.store.parquet import MissingPart

    try:
        written = write_report(
            dataset, out, samples=samples, seed=seed, reject_examples=reject_examples
        )
    except (ManifestError, MissingPart) as exc:
        fail(str(exc))
    except ArrowException as exc:
        fail_unreadable_tables(dataset, exc)
    except OSError as exc:
        fail(f"cannot write --out {shown(out)}: {reason_of(exc)}")
    typer.echo(f"report written to {shown(written)}")
