"""The steps of one fine-tune run and the folder they share (``output_dir``).

::

    OUTPUT/finetune.json        the run's record: config, dataset fingerprint, each step's result
    OUTPUT/examples/train.arrow train examples (tokenised, with PNG bytes), memory-mapped
    OUTPUT/checkpoints/         the trainer's checkpoints (a run started again resumes from them)
    OUTPUT/model/               the adapter (LoRA) or the model (full), with tokenizer and
                                image processor
    OUTPUT/predictions.jsonl    the model's answers to the test turns (BiRD's inference format)
    OUTPUT/baseline.jsonl       ``predict-baseline``'s answers to the same turns
    OUTPUT/metrics.json         both scored by ``medgrit evaluate``'s code, per task and modality

Each step writes under a temporary name and renames, then records itself in ``finetune.json``; a
step already recorded is not done again. A run into a folder that holds a run of another
training config, or of a dataset that has changed since, is refused (:class:`RunMismatch`).
Fields that only change prediction (tasks, samples, batch size, new tokens) may differ: the
prediction steps then run again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medgrit.adapters.export.records import DatasetRecords, read_records
from medgrit.adapters.runtime.atomic import write_atomic
from medgrit.adapters.store.bookkeeping import load_dataset
from medgrit.schemas.finetune import FinetuneConfig

RECORD = "finetune.json"
MARKER = "medgrit_finetune"
EXAMPLES = "examples"
PREDICTIONS = "predictions.jsonl"
BASELINE = "baseline.jsonl"
METRICS = "metrics.json"
# Fields that change only what is predicted: a run may change them, and predicts again.
PREDICTION_FIELDS = frozenset(
    {
        "predict",
        "eval_split",
        "eval_tasks",
        "max_eval_samples",
        "per_device_eval_batch_size",
        "max_new_tokens",
    }
)
# Fields that change neither the model nor the predictions.
FREE_FIELDS = frozenset(
    {
        "dataloader_num_workers",
        "logging_steps",
        "output_dir",
        "save_total_limit",
        "save_optimizer_state",
    }
)


class RunMismatch(ValueError):
    """``output_dir`` holds something this run must not continue or overwrite (one line)."""


class TrainingFailed(RuntimeError):
    """The training processes under ``torchrun`` ended with an error (their output says why)."""


def training_fields(config: FinetuneConfig) -> dict[str, Any]:
    skip = PREDICTION_FIELDS | FREE_FIELDS
    return {k: v for k, v in config.model_dump(mode="json").items() if k not in skip}


def dataset_fingerprint(dataset: Path) -> str:
    """A digest of the dataset's shard files (their sha256 in the manifest): it changes when a
    shard is added or rebuilt."""
    manifest = load_dataset(dataset)
    digest = hashlib.sha256()
    for shard in manifest.shards:
        for rel, sha in sorted((shard.files or {}).items()):
            digest.update(f"{shard.id}\x00{rel}\x00{sha}\n".encode())
    return digest.hexdigest()


def read_record(output: Path) -> dict | None:
    """The run record in ``output``, or None when there is none."""
    path = output / RECORD
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(data, dict)
        or data.get(MARKER) != 1
        or not isinstance(data.get("training"), dict)
        or not isinstance(data.get("steps"), dict)
    ):
        raise RunMismatch(f"{path} is no medgrit fine-tune record; choose a new output_dir")
    return data


def training_started(output: Path, record: dict) -> bool:
    """Whether the run in ``output`` has trained at all (a checkpoint, a model, or its record):
    before that, a run of other settings may start it afresh."""
    from medgrit.adapters.training.trainer import CHECKPOINTS, MODEL

    return (
        "train" in record["steps"]
        or (output / MODEL).exists()
        or any((output / CHECKPOINTS).glob("checkpoint-*"))
    )


def write_record(output: Path, record: dict) -> None:
    write_atomic(output / RECORD, json.dumps(record, indent=2) + "\n")


def check_output(config: FinetuneConfig) -> str | None:
    """Why ``config.output_dir`` cannot take this run (None: it can). It can when it does not
    exist, is empty, or holds a run of the same training config on the same dataset."""
    output, dataset = Path(config.output_dir), Path(config.dataset)
    if output.exists() and not output.is_dir():
        return f"output_dir {output} is a file; choose a folder"
    real_out, real_ds = os.path.realpath(output), os.path.realpath(dataset)
    if real_out == real_ds or real_out.startswith(real_ds + os.sep):
        return f"output_dir {output} lies inside the dataset {dataset}; choose a folder outside it"
    if real_ds.startswith(real_out + os.sep):
        return f"the dataset {dataset} lies inside output_dir {output}; choose another folder"
    if not output.is_dir() or not any(p.name != ".medgrit.lock" for p in output.iterdir()):
        return None
    try:
        record = read_record(output)
    except (RunMismatch, ValueError, OSError) as exc:
        return str(exc) if isinstance(exc, RunMismatch) else f"{output / RECORD}: {exc}"
    if record is None:
        return f"output_dir {output} is not empty and holds no fine-tune run; choose a new folder"
    if not training_started(output, record):
        return None  # nothing trained yet: start_run starts it afresh
    before, now = record["training"], training_fields(config)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        return (
            f"output_dir {output} holds a fine-tune with other settings "
            f"({', '.join(changed)}); use a new output_dir"
        )
    if record.get("dataset_fingerprint") != dataset_fingerprint(dataset):
        return (
            f"the dataset {dataset} changed since the fine-tune in {output} started; use a new "
            "output_dir"
        )
    return None


def start_run(config: FinetuneConfig) -> dict:
    """The run record, new or continued; the prediction steps are cleared when their settings
    changed. Raises :class:`RunMismatch` where :func:`check_output` objects."""
    problem = check_output(config)
    if problem is not None:
        raise RunMismatch(problem)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    fresh = {
        MARKER: 1,
        "training": training_fields(config),
        "dataset_fingerprint": dataset_fingerprint(Path(config.dataset)),
        "steps": {},
    }
    record = read_record(output) or fresh
    if (
        record["training"] != fresh["training"]
        or record.get("dataset_fingerprint") != fresh["dataset_fingerprint"]
    ):  # a run that failed before it trained, now with other settings: start afresh
        shutil.rmtree(output / EXAMPLES, ignore_errors=True)
        record = fresh
    prediction = {k: config.model_dump(mode="json")[k] for k in sorted(PREDICTION_FIELDS)}
    if record.get("prediction") != prediction:
        for step in ("predict", "evaluate"):
            record["steps"].pop(step, None)
    record["prediction"] = prediction
    record["config"] = config.model_dump(mode="json")
    write_record(output, record)
    return record


def finish_step(config: FinetuneConfig, step: str, result: dict) -> None:
    output = Path(config.output_dir)
    record = read_record(output) or {}
    record.setdefault("steps", {})[step] = result
    write_record(output, record)


def step_result(config: FinetuneConfig, step: str) -> dict | None:
    record = read_record(Path(config.output_dir)) or {}
    return (record.get("steps") or {}).get(step)


def load_processor(config: FinetuneConfig, path: str | None = None):  # -> VisionChatProcessor
    from medgrit.adapters.training.processor import VisionChatProcessor

    return VisionChatProcessor.from_pretrained(
        path or config.model_name_or_path, config.min_pixels, config.max_pixels
    )


def box_format_of(config: FinetuneConfig) -> str:
    """The run's box format (``auto``: the base model's own)."""
    from medgrit.adapters.training.model import settled

    return settled(config).box_format


def records_of(config: FinetuneConfig) -> DatasetRecords:
    return read_records(Path(config.dataset))


def prepare_examples(config: FinetuneConfig) -> dict:
    """Write the train examples (once per run); returns their statistics."""
    from medgrit.adapters.training.examples import write_train_examples

    done = step_result(config, "examples")
    if done is not None:
        return done
    output = Path(config.output_dir)
    work = output / f".{EXAMPLES}.partial"
    shutil.rmtree(work, ignore_errors=True)
    stats = write_train_examples(
        records_of(config), load_processor(config), box_format_of(config), config.max_length, work
    )
    shutil.rmtree(output / EXAMPLES, ignore_errors=True)
    os.replace(work, output / EXAMPLES)
    result = asdict(stats)
    finish_step(config, "examples", result)
    return result


def train_model(config: FinetuneConfig) -> dict:
    """Train (resuming from the last checkpoint), once per run; returns the training result.
    With ``num_processes`` > 1 the trainer runs under ``torchrun``.

    Raises:
        DiskTooSmall: when the disk cannot hold the checkpoints and the model.
    """
    from medgrit.adapters.training.footprint import DiskTooSmall, disk_problem
    from medgrit.adapters.training.trainer import MODEL, TRAIN_RESULT, TrainResult, train

    done = step_result(config, "train")
    if done is not None:
        return done
    output = Path(config.output_dir)
    examples = output / EXAMPLES
    totals = load_dataset(Path(config.dataset)).totals
    problem = disk_problem(config, int(totals.images_by_split.get("train", 0)) if totals else 0)
    if problem is not None:
        raise DiskTooSmall(problem)
    if config.num_processes == 1:
        result = train(config, examples).to_json()
    else:
        settings = output / ".train-config.json"
        write_atomic(settings, config.model_dump_json())
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free rendezvous port: two runs on one machine do not collide
            f"--nproc_per_node={config.num_processes}",
            "-m",
            "medgrit.adapters.training.trainer",
            str(settings),
            str(examples),
        ]
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            raise TrainingFailed(
                f"training under torchrun ended with exit code {done.returncode} (see its "
                "output above); fix it and run the same command again to resume"
            )
        result = TrainResult.from_json(
            json.loads((output / TRAIN_RESULT).read_text(encoding="utf-8"))
        ).to_json()
    if not (output / MODEL).is_dir():
        raise RuntimeError(f"training ended without writing {output / MODEL}")
    finish_step(config, "train", result)
    return result


def predict_test(config: FinetuneConfig) -> dict:
    """The trained model's answers, and the baseline's, to the chosen turns of ``eval_split``,
    with as many new tokens per task as its longest answer needs (and a margin)."""
    from medgrit.adapters.export.baseline import baseline_lines
    from medgrit.adapters.training.examples import (
        iter_prompts,
        longest_answers,
        new_token_limits,
        select_test_items,
    )
    from medgrit.adapters.training.generate import predict_lines
    from medgrit.adapters.training.model import load_trained_model
    from medgrit.adapters.training.trainer import MODEL

    done = step_result(config, "predict")
    if done is not None:
        return done
    import torch

    output = Path(config.output_dir)
    records = records_of(config)
    split, tasks = config.eval_split, list(config.eval_tasks)
    trained = trained_turns(output) if split == "train" else None
    chosen = select_test_items(records, tasks, config.max_eval_samples, split, trained)
    processor = load_processor(config, str(output / MODEL))
    box_format = box_format_of(config)
    longest = longest_answers(records, processor, box_format)
    limits = new_token_limits(longest, dict(config.max_new_tokens))
    model = load_trained_model(str(output / MODEL), config)
    if torch.cuda.is_available():
        model = model.to("cuda")
    lines = predict_lines(
        model,
        processor,
        iter_prompts(records, processor, box_format, chosen, split),
        config.per_device_eval_batch_size,
        limits,
        box_format,
    )
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    write_atomic(output / PREDICTIONS, "".join(line + "\n" for line in lines))
    baseline = baseline_lines(records, tasks, chosen, split)
    write_atomic(output / BASELINE, "".join(line + "\n" for line in baseline))
    cut = sum(1 for line in lines if json.loads(line).get("cut"))
    result = {
        "predictions": len(lines),
        "split": split,
        "file": PREDICTIONS,
        "baseline": BASELINE,
        "max_new_tokens": {t: limits[t] for t in tasks if t in limits},
        "longest_answer_tokens": {t: longest[t] for t in tasks if t in longest},
        "answers_cut": cut,
    }
    finish_step(config, "predict", result)
    return result


def trained_turns(output: Path) -> dict[str, int]:
    """Turns kept per train example (the rest did not fit ``max_length``), by image name."""
    from medgrit.adapters.training.examples import load_train_examples

    examples = load_train_examples(output / EXAMPLES).select_columns(["name", "turns"])
    return dict(zip(examples["name"], examples["turns"], strict=True))


def score_file(path: Path, stack: ExitStack, scorer: list) -> dict:
    """``medgrit evaluate``'s numbers for one prediction file: ``{task: report JSON}``."""
    from medgrit.adapters.evaluation.predictions import read_predictions
    from medgrit.adapters.evaluation.report import score_task
    from medgrit.core.vocab import TASKS

    lines = read_predictions(path)
    reports = {}
    for task in TASKS:
        group = [p for p in lines if p.task == task]
        if not group:
            continue
        if task in ("RC", "MIA") and not scorer:
            from medgrit.adapters.evaluation.captions import CaptionScorer

            scorer.append(stack.enter_context(CaptionScorer()).score)
        reports[task] = score_task(task, group, scorer[0] if scorer else None).to_json()
    return reports


def evaluate_predictions(config: FinetuneConfig) -> dict:
    """Score the model's and the baseline's answers; writes ``metrics.json``."""
    output = Path(config.output_dir)
    if step_result(config, "evaluate") is not None and (output / METRICS).is_file():
        return json.loads((output / METRICS).read_text(encoding="utf-8"))
    with ExitStack() as stack:
        scorer: list = []
        metrics = {
            "model": score_file(output / PREDICTIONS, stack, scorer),
            "baseline": score_file(output / BASELINE, stack, scorer),
        }
    write_atomic(output / METRICS, json.dumps(metrics, indent=2) + "\n")
    finish_step(config, "evaluate", {"file": METRICS})
    return metrics
