"""The finetune flow: a BiRD-style model trained, asked and scored on one medgrit dataset.

``finetune`` takes one :class:`FinetuneConfig` and runs four tasks in order, each a step of
``medgrit.adapters.training.run``: ``prepare_examples`` -> ``train_model`` (TRL's SFTTrainer) ->
``predict_test`` (greedy answers per task, and the baseline's) -> ``evaluate_predictions``
(BiRD's metrics). The run is named ``finetune <output folder>`` and tagged ``medgrit``,
``finetune`` and ``model:<base model>``. Its artifacts, keyed by the output folder's name:
``medgrit-finetune-<name>-examples`` (what the examples hold), ``-training`` (the logged loss
and learning rate per step), one table per scored task (``-vg``, ``-roc``, ``-rc``, ``-mia``:
a row per modality and the two means, the model's numbers beside the baseline's) and a markdown
summary. Names and paths in them are escaped (:mod:`medgrit.core.markdown`): the Prefect UI
renders the summary, descriptions and string cells as Markdown. The output folder is locked
while the flow runs (one writer at a time).
"""

from __future__ import annotations

from medgrit.flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()

from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402

from medgrit.adapters.runtime.interrupt import stop_on_signals  # noqa: E402
from medgrit.adapters.store.dataset_dir import hold_dataset  # noqa: E402
from medgrit.adapters.training.model import settled  # noqa: E402
from medgrit.adapters.training.run import RunMismatch, start_run  # noqa: E402
from medgrit.core.markdown import (  # noqa: E402
    escape_cells,
    escape_markdown,
    markdown_code,
    markdown_table,
)
from medgrit.flows.dashboard import dataset_name, tag_flow_run  # noqa: E402
from medgrit.schemas.finetune import FinetuneConfig  # noqa: E402
from medgrit.tasks.finetune import (  # noqa: E402
    evaluate_predictions,
    predict_test,
    prepare_examples,
    train_model,
)

__all__ = ["RunMismatch", "finetune"]


def finetune_run_name() -> str:
    """``finetune <output folder>`` (read from the run's ``config`` parameter)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    config: Any = (context.parameters or {}).get("config") if context else None
    out = (
        config.get("output_dir")
        if isinstance(config, Mapping)
        else getattr(config, "output_dir", None)
    )
    return f"finetune {dataset_name(out)}" if out else "finetune"


def artifact_key(config: FinetuneConfig, part: str) -> str:
    return f"medgrit-finetune-{dataset_name(config.output_dir)}-{part}"


def _number(value: float) -> float:
    return round(float(value), 4)


def metric_rows(model: Mapping, baseline: Mapping | None) -> list[dict[str, Any]]:
    """A task's table: a row per modality present, then BiRD's mean over eight and the mean
    over those present; each metric's column for the model, then ``baseline <metric>``."""
    per = model["per_modality"]
    base_per = (baseline or {}).get("per_modality", {})
    metrics = list(next(iter(per.values()), {}))
    rows = []
    for modality in per:
        row: dict[str, Any] = {"modality": modality, "samples": model["samples"][modality]}
        row |= {m: _number(per[modality][m]) for m in metrics}
        if modality in base_per:
            row |= {f"baseline {m}": _number(base_per[modality][m]) for m in metrics}
        rows.append(row)
    for mean, label in (("official_mean", "mean over 8"), ("present_mean", "mean over present")):
        row = {"modality": label, "samples": sum(model["samples"].values())}
        row |= {m: _number(model[mean][m]) for m in metrics}
        if baseline is not None:
            row |= {f"baseline {m}": _number(baseline[mean][m]) for m in metrics}
        rows.append(row)
    return rows


def _summary(config: FinetuneConfig, examples: dict, trained: dict, metrics: dict | None) -> str:
    losses = trained.get("losses") or []
    model, dataset = markdown_code(config.model_name_or_path), markdown_code(config.dataset)
    folder = Path(config.output_dir).absolute().as_uri()
    lines = [
        f"# Fine-tune of {model} on {dataset}",
        "",
        f"- output: {markdown_code(config.output_dir)} ([folder]({folder}))",
        f"- {config.finetune}, boxes as {config.box_format}; {examples['examples']} examples, "
        f"{examples['turns']} turns, {examples['tokens']} tokens"
        + (f" ({examples['examples_too_long']} too long)" if examples["examples_too_long"] else ""),
        f"- {trained['steps']} steps, {trained['epochs']:.2f} epochs, "
        f"{trained['tokens_per_second']:.0f} tokens/s; loss "
        + (f"{losses[0][1]:.4f} -> {losses[-1][1]:.4f}" if losses else "not logged"),
        f"- trainable parameters: {trained['trainable_parameters']:,} of "
        f"{trained['total_parameters']:,}",
    ]
    if metrics:
        rows = []
        for task, report in metrics["model"].items():
            means = report.get("present_mean") or {}
            if not means:  # nothing scored (VG turns without reference boxes)
                rows.append([task, "-", "-", "-"])
                continue
            name = next(iter(means))
            base = metrics["baseline"].get(task, {}).get("present_mean", {}).get(name)
            rows.append(
                [
                    task,
                    f"{name} (mean over present)",
                    f"{means[name]:.4f}",
                    f"{base:.4f}" if base is not None else "-",
                ]
            )
        header = ["task", "headline metric", "model", "baseline"]
        lines += ["", markdown_table(header, rows, ["left", "left", "right", "right"])]
    return "\n".join(lines)


@flow(name="finetune", flow_run_name=finetune_run_name, log_prints=False)
def finetune(config: FinetuneConfig) -> dict:
    """Train a Qwen2-VL-family model on a medgrit dataset, answer its test turns and score them.

    Returns ``{"output_dir", "examples", "train", "predict", "metrics"}`` (the last two None
    without predict).

    Raises:
        RunMismatch: ``output_dir`` holds a run of other settings or of a changed dataset.
        DatasetBusy: another process writes ``output_dir``.
    """
    logger = get_run_logger()
    config = settled(config.resolved(Path.cwd()))
    tag_flow_run(["medgrit", "finetune", f"model:{config.model_name_or_path}"])
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    with hold_dataset(output), stop_on_signals():
        start_run(config)
        examples = prepare_examples(config)
        logger.info(
            "%d train examples (%d turns, %d tokens)",
            examples["examples"],
            examples["turns"],
            examples["tokens"],
        )
        create_table_artifact(
            escape_cells({"what": k.replace("_", " "), "count": v} for k, v in examples.items()),
            key=artifact_key(config, "examples"),
            description="The train examples: images, turns, tokens, and what did not fit.",
        )
        trained = train_model(config)
        create_table_artifact(
            [{"step": step, "loss": _number(loss)} for step, loss in trained["losses"]],
            key=artifact_key(config, "training"),
            description=(
                f"{trained['steps']} steps in {trained['train_runtime_s']:.0f} s, "
                f"{trained['tokens_per_second']:.0f} tokens/s"
            ),
        )
        metrics = predicted = None
        if config.predict:
            predicted = predict_test(config)
            logger.info("%d %s turns answered", predicted["predictions"], predicted["split"])
            metrics = evaluate_predictions(config)
            for task, report in metrics["model"].items():
                create_table_artifact(
                    escape_cells(metric_rows(report, metrics["baseline"].get(task))),
                    key=artifact_key(config, task.lower()),
                    description=f"{escape_markdown(task)}: the model's scores per modality "
                    "beside the baseline's",
                )
        create_markdown_artifact(
            _summary(config, examples, trained, metrics),
            key=artifact_key(config, "summary"),
            description="The fine-tune run",
        )
    return {
        "output_dir": str(output),
        "examples": examples,
        "train": trained,
        "predict": predicted,
        "metrics": metrics,
    }
