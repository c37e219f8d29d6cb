"""``medgrit finetune --config FILE``: the finetune flow from the command line.

The config (TOML or YAML, the fields of :class:`FinetuneConfig`; relative paths against the
file's folder) and everything a user can fix are checked before Prefect or torch is imported:
a config problem names its field, a dataset that is missing or not complete, a base model folder
without a ``config.json``, a missing ``train`` extra, an ``output_dir`` that holds something
else. Each is one line and exit code 2. A run into the ``output_dir`` of an earlier run with the
same training settings continues it: finished steps are skipped and training resumes from its
last checkpoint.
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from medgrit.cli.configfile import invalid_config, parse_config_file
from medgrit.cli.messages import fail, fail_unreadable_tables, reason_of, shown
from medgrit.cli.preflight import take_out
from medgrit.schemas.finetune import FinetuneConfig

TRAIN_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")
_HEADLINE = {"VG": "recall@0.5", "ROC": "accuracy", "RC": "CIDEr", "MIA": "CIDEr"}


def load_finetune_config(path: Path) -> FinetuneConfig:
    """Read and validate a fine-tune config; one line and exit code 2 for any problem."""
    data = parse_config_file(path, "fine-tune config")
    if not isinstance(data, dict):
        fail(f"{shown(path)}: the file must hold the fields of a fine-tune (see the README)")
    try:
        config = FinetuneConfig.model_validate(data)
    except ValidationError as exc:
        invalid_config(shown(path), exc)
    return config.resolved(path.parent.absolute())


def _check_dataset(config: FinetuneConfig) -> int:
    """The dataset is complete and has what the run reads; returns its train images."""
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.manifest import ManifestError

    dataset = Path(config.dataset)
    if not dataset.is_dir():
        fail(f"dataset: no such dataset folder: {shown(dataset)}")
    try:
        manifest = load_dataset(dataset)
    except (ManifestError, OSError, ValueError) as exc:
        fail(f"dataset: {reason_of(exc)}")
    shards = manifest.shards
    if manifest.status != "complete" or any(s.status != "done" for s in shards):
        fail(
            f"dataset: {shown(dataset)} is not a complete build; finish it with "
            f"`medgrit resume {shown(dataset)}` first"
        )
    for shard in shards:
        for rel in shard.files or {}:
            if not (dataset / rel).is_file():
                fail(
                    f"dataset: {shown(dataset)} lacks {shown(rel)}; "
                    f"`medgrit validate {shown(dataset)}` says what else is wrong"
                )
    split = manifest.totals.images_by_split if manifest.totals else {}
    if not split.get("train"):
        fail(f"dataset: {shown(dataset)} has no train images to fine-tune on")
    if config.predict and not split.get(config.eval_split):
        fail(
            f"dataset: {shown(dataset)} has no {config.eval_split} images to answer; set "
            "predict = false"
        )
    return int(split["train"])


SUPPORTED_MODELS = ("qwen2_vl", "qwen2_5_vl")


def _check_model(config: FinetuneConfig) -> None:
    name = config.model_name_or_path
    path = Path(name)
    looks_local = path.is_absolute() or name.startswith((".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            fail(f"model_name_or_path: no such model folder: {shown(path)}")
        for needed in ("config.json", "preprocessor_config.json"):
            if not (path / needed).is_file():
                fail(f"model_name_or_path: {shown(path)} holds no {needed}")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            fail(f"model_name_or_path: {shown(path)} holds no tokenizer (tokenizer.json)")
    elif name.count("/") != 1 or not all(name.split("/")):
        fail(
            f"model_name_or_path: {name!r} is neither a model folder nor a hub id "
            "(organisation/name)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_model_loads(config: FinetuneConfig) -> None:
    """The model's config and processor load (from its folder, or from the hub once), and it
    is a model family medgrit fine-tunes."""
    from transformers import AutoConfig

    from medgrit.adapters.training.processor import ProcessorError, VisionChatProcessor

    name = config.model_name_or_path
    try:
        model_config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        fail(f"model_name_or_path: cannot read the model config of {name}: {_first_line(exc)}")
    kind = getattr(model_config, "model_type", None)
    if kind not in SUPPORTED_MODELS:
        fail(
            f"model_name_or_path: {name} is a {kind} model; medgrit fine-tunes Qwen2-VL and "
            "Qwen2.5-VL models"
        )
    try:
        VisionChatProcessor.from_pretrained(name, config.min_pixels, config.max_pixels)
    except ProcessorError as exc:
        fail(f"model_name_or_path: {exc}")
    except (OSError, ValueError, TypeError) as exc:
        fail(
            f"model_name_or_path: cannot load the tokenizer and image processor of {name}: "
            f"{_first_line(exc)}"
        )


def _settled(config: FinetuneConfig) -> FinetuneConfig:
    from medgrit.adapters.training.model import ModelError, settled

    try:
        return settled(config)
    except ModelError as exc:
        fail(f"model_name_or_path: {exc}")


def _check_train_extra() -> None:
    missing = [p for p in TRAIN_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        fail(
            f"fine-tuning needs the train extra (missing: {', '.join(missing)}): "
            "pip install 'medgrit[train]'"
        )


def _check_precision(config: FinetuneConfig) -> None:
    import torch

    if config.attn_implementation == "flash_attention_2" and (
        importlib.util.find_spec("flash_attn") is None
    ):
        fail("attn_implementation: flash_attention_2 needs the flash-attn package; use sdpa")
    if config.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        fail(
            f"bf16: the GPU ({torch.cuda.get_device_name(0)}) has no bf16; set bf16 = false "
            "(fp32, slower) or use another GPU"
        )


def _report(result: dict) -> None:
    ex, tr = result["examples"], result["train"]
    out = Path(result["output_dir"])
    losses = tr.get("losses") or []
    typer.echo(
        f"examples: {ex['examples']:,} ({ex['turns']:,} turns, {ex['tokens']:,} tokens"
        + (f"; {ex['examples_too_long']} too long, left out" if ex["examples_too_long"] else "")
        + (f"; {ex['turns_cut']} turns cut to fit" if ex["turns_cut"] else "")
        + ")"
    )
    typer.echo(
        f"trained: {tr['steps']:,} steps, {tr['epochs']:.2f} epochs, "
        + (f"loss {losses[0][1]:.4f} -> {losses[-1][1]:.4f}, " if losses else "")
        + f"{tr['tokens_per_second']:,.0f} tokens/s; "
        + f"{tr['trainable_parameters']:,} of {tr['total_parameters']:,} parameters trained"
    )
    typer.echo(f"model saved to {shown(out / 'model')}")
    metrics = result.get("metrics")
    if not metrics:
        return
    predicted = result.get("predict") or {}
    limits, longest = (
        predicted.get("max_new_tokens", {}),
        predicted.get("longest_answer_tokens", {}),
    )
    if limits:
        typer.echo(
            f"answered {predicted['predictions']:,} {predicted['split']} turns; new tokens per "
            "task (longest answer): "
            + ", ".join(f"{t} {n} ({longest.get(t, '-')})" for t, n in limits.items())
            + (f"; {predicted['answers_cut']} answers cut" if predicted.get("answers_cut") else "")
        )
    typer.echo(
        f"predictions: {shown(out / 'predictions.jsonl')}; scores: {shown(out / 'metrics.json')}"
    )
    typer.echo(f"{'task':<5} {'metric (mean over present)':<28} {'model':>8} {'baseline':>9}")
    for task, report in metrics["model"].items():
        name = _HEADLINE[task]
        ours = report.get("present_mean", {}).get(name)
        base = metrics["baseline"].get(task, {}).get("present_mean", {}).get(name)
        cells = [
            f"{v:>{w}.4f}" if v is not None else f"{'-':>{w}}" for v, w in ((ours, 8), (base, 9))
        ]
        typer.echo(f"{task:<5} {name:<28} {cells[0]} {cells[1]}")


def finetune(
    config_file: Annotated[
        Path,
        typer.Option(
            "--config",
            help="TOML or YAML file of the fine-tune (dataset, output_dir, model, training).",
        ),
    ],
) -> None:
    """Fine-tune a Qwen2-VL-family model on a dataset, then answer and score its test split."""
    config = load_finetune_config(config_file)
    train_images = _check_dataset(config)
    from medgrit.adapters.export.records import ExportError, read_records
    from medgrit.adapters.store.dataset_dir import current_writer
    from medgrit.adapters.store.parquet import MissingPart
    from medgrit.adapters.training.run import check_output

    try:
        read_records(Path(config.dataset))
    except (ExportError, MissingPart) as exc:
        fail(f"dataset: {exc}")
    except (OSError, ValueError) as exc:  # the readers' UnreadablePart is a ValueError
        fail_unreadable_tables(Path(config.dataset), exc)
    _check_model(config)
    _check_train_extra()
    _check_precision(config)
    _check_model_loads(config)
    config = _settled(config)
    output = Path(config.output_dir)
    writer = current_writer(output) if output.is_dir() else None
    if writer is not None:
        fail(
            f"output_dir {shown(output)} is being written by another medgrit process"
            f"{f' ({writer})' if writer else ''}; wait for it to finish"
        )
    problem = check_output(config)
    if problem is not None:
        fail(problem)
    from medgrit.adapters.training.footprint import disk_problem

    problem = disk_problem(config, train_images)
    if problem is not None:
        fail(problem)

    from medgrit.flows.finetune import finetune as finetune_flow

    with ExitStack() as stack:
        take_out(output, stack, "finetune")  # the lock, held from here to the end
        result = _run(config, finetune_flow)
    _report(result)


def _run(config: FinetuneConfig, finetune_flow: Any) -> dict:
    import torch

    from medgrit.adapters.store.dataset_dir import DatasetBusy
    from medgrit.adapters.training.examples import NoExampleFits
    from medgrit.adapters.training.footprint import DiskTooSmall
    from medgrit.adapters.training.model import ModelError
    from medgrit.adapters.training.processor import ProcessorError
    from medgrit.adapters.training.run import RunMismatch, TrainingFailed

    try:
        return finetune_flow(config=config)
    except (
        RunMismatch,
        DatasetBusy,
        ModelError,
        ProcessorError,
        NoExampleFits,
        DiskTooSmall,
    ) as exc:
        fail(str(exc))
    except TrainingFailed as exc:
        fail(str(exc), code=1)
    except torch.OutOfMemoryError:
        fail(
            "out of GPU memory; lower per_device_train_batch_size (raise "
            "gradient_accumulation_steps to keep the batch) or max_pixels, then run the same "
            "command again to resume",
            code=1,
        )
    except OSError as exc:
        fail(f"the fine-tune failed: {reason_of(exc)}; fix it and run the same command again", 1)
