"""``medgrit predict-baseline DIR --out PREDICTIONS.jsonl``: a rule-based floor for models.

Predictions for the test turns the ``bird`` export writes, in BiRD's inference output format, from
rules over the train split (``medgrit.core.exports.predict_baseline_answer``): VG gives the
label's mean train box, ROC and RC the modality's most frequent label, MIA its most frequent
labels with their mean boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medgrit.cli.export import check_new_out
from medgrit.cli.messages import fail, fail_unreadable_tables, reason_of, shown
from medgrit.core.vocab import TASKS


def predict_baseline(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory of a complete build.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="JSONL file to write (new or empty).")
    ] = ...,  # type: ignore[assignment]
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task", help="Only these tasks: VG, ROC, RC, MIA (repeatable; default: all)."
        ),
    ] = None,
) -> None:
    """Write rule-based predictions for a dataset's test split (a floor for models)."""
    from pyarrow import ArrowException

    from medgrit.adapters.export.records import ExportError
    from medgrit.adapters.export.write import write_predictions
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.adapters.store.parquet import MissingPart

    tasks = [t.strip().upper() for t in (task or TASKS)]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        fail(f"unknown --task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    check_new_out(out, kind="file")
    try:
        n = write_predictions(dataset, out, tasks)
    except (ManifestError, ExportError, MissingPart) as exc:
        fail(str(exc))
    except ArrowException as exc:
        fail_unreadable_tables(dataset, exc)
    except OSError as exc:
        fail(f"cannot write {shown(out)}: {reason_of(exc)}", code=1)
    typer.echo(f"{n} predictions written to {shown(out)}")
