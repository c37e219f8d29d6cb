"""``medgrit evaluate PREDICTIONS.jsonl``: BiRD's Med-GRIT scores, per modality, with both means.

With ``--task`` every line is scored as that task (lines whose own ``task`` field names another
task are left out); without it every line must carry a ``task`` field and each task found is
scored. User errors (a missing file, a malformed line, an unknown task, a ``--json`` path that
cannot be written) print one line and exit with code 2, before any line is scored. The caption
scorers (Java) start only when an RC or MIA line is scored; their start and each task scored are
progress phases.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from medgrit.adapters.runtime import progress
from medgrit.cli.messages import fail, reason_of, shown
from medgrit.cli.outputs import check_output
from medgrit.core.vocab import TASKS


def evaluate(
    predictions: Annotated[
        Path,
        typer.Argument(help="JSONL of {id, image, question, annotation, response[, task]}."),
    ],
    task: Annotated[
        str | None,
        typer.Option(help="VG, ROC, RC or MIA (default: each line's task field)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores as JSON here.")
    ] = None,
) -> None:
    """Score predictions with BiRD's metrics, per modality."""
    from medgrit.adapters.evaluation.predictions import PredictionFileError, read_predictions
    from medgrit.adapters.evaluation.report import score_task

    chosen = None
    if task is not None:
        chosen = task.upper()
        if chosen not in TASKS:
            fail(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if not predictions.is_file():
        fail(f"no such predictions file: {shown(predictions)}")
    if json_out is not None:
        check_output(json_out, "--json", "file")
    try:
        lines = read_predictions(predictions)
    except PredictionFileError as exc:
        fail(f"{shown(predictions)}: {exc}")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {shown(predictions)}: {reason_of(exc)}")
    if chosen is None:
        missing = next((p for p in lines if p.task is None), None)
        if missing is not None:
            fail(f"{shown(predictions)}: line {missing.line}: no task field; pass --task")
        groups = {t: [p for p in lines if p.task == t] for t in TASKS}
    else:
        groups = {chosen: [p for p in lines if p.task in (None, chosen)]}
    groups = {t: g for t, g in groups.items() if g}
    if not groups:
        fail(f"{shown(predictions)}: no predictions to score")

    reports = []
    with ExitStack() as stack:
        caption_score = None
        if "RC" in groups or "MIA" in groups:
            from medgrit.adapters.evaluation.captions import CaptionScorer

            progress.phase("starting the caption scorers (METEOR and the PTB tokenizer run Java)")
            caption_score = stack.enter_context(CaptionScorer()).score
        for name, group in groups.items():
            plural = "s" if len(group) != 1 else ""
            progress.phase(f"scoring {len(group)} {name} prediction{plural}")
            try:
                reports.append(score_task(name, group, caption_score))
            except PredictionFileError as exc:
                fail(f"{shown(predictions)}: {exc}")
    typer.echo("\n\n".join(r.render() for r in reports))
    if json_out is not None:
        data = {"predictions": str(predictions), "tasks": {r.task: r.to_json() for r in reports}}
        text = json.dumps(data, indent=2) + "\n"
        try:
            if json_out.exists() and not json_out.is_file():  # /dev/stdout, a pipe
                json_out.write_text(text, encoding="utf-8")
            else:
                from medgrit.adapters.runtime.atomic import write_atomic

                write_atomic(json_out, text)
        except OSError as exc:
            fail(f"cannot write {shown(json_out)}: {reason_of(exc)}")
