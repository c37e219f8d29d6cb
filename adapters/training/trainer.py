"""Training with TRL's ``SFTTrainer`` on the examples of :mod:`.examples`.

The examples are already tokenised with their labels (loss on the answers only), so TRL's own
dataset preparation is skipped and :class:`~.processor.TrainCollator` makes the batches (pixel
values, image grids, ``mm_token_type_ids``). Checkpoints go to ``OUTPUT/checkpoints`` every
``save_steps``; a run started again resumes from the last one. The trained adapter (or model)
and its processor are saved to ``OUTPUT/model``.

Several processes: run this module under ``torchrun``
(``python -m medgrit.adapters.training.trainer CONFIG.json EXAMPLES``); transformers' Trainer
(through accelerate) then trains data-parallel with no change here, and only rank 0 writes the
model.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medgrit.adapters.runtime.atomic import write_atomic
from medgrit.adapters.training.examples import load_train_examples
from medgrit.adapters.training.model import load_base_model, prepare_model
from medgrit.adapters.training.processor import TrainCollator, VisionChatProcessor
from medgrit.schemas.finetune import FinetuneConfig

CHECKPOINTS = "checkpoints"
MODEL = "model"
TRAIN_RESULT = "train_result.json"


@dataclass(frozen=True)
class TrainResult:
    """What one training run did: steps, losses as logged, throughput, parameters trained."""

    steps: int
    epochs: float
    losses: list[tuple[int, float]]
    train_runtime_s: float
    samples_per_second: float
    tokens_per_second: float
    trainable_parameters: int
    total_parameters: int
    resumed_from: str | None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainResult:
        data = dict(data)
        data["losses"] = [tuple(x) for x in data["losses"]]
        return cls(**data)


def sft_config(config: FinetuneConfig, output: Path) -> Any:
    """TRL's ``SFTConfig`` of a medgrit config (same names where they overlap)."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output / CHECKPOINTS),
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_length,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=config.bf16,
        train_sampling_strategy=config.train_sampling_strategy,
        length_column_name="length",
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what lets torchrun train on CPUs (gloo)
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        save_only_model=not config.save_optimizer_state,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        ddp_find_unused_parameters=False,
    )


def last_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint of an earlier run, if any. The trainer writes
    ``trainer_state.json`` last: a checkpoint without it was cut off by a kill and is skipped."""
    folder = output / CHECKPOINTS
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def parameter_groups(model: Any, args: Any, merger_lr: float | None) -> list[dict]:
    """The optimiser's groups: weight decay on matrices only (not on biases, norm scales or
    any other vector, whatever their module's class), and the merger's own learning rate. The
    language model's groups come first (the trainer logs the first group's learning rate)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            merger = ".visual.merger." in f".{name}"
            groups.setdefault((merger, param.ndim >= 2), []).append(param)
    return [
        {
            "params": params,
            "lr": merger_lr if merger and merger_lr is not None else args.learning_rate,
            "weight_decay": args.weight_decay if decays else 0.0,
        }
        for (merger, decays), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def _catch_up_schedule() -> Any:
    """A callback that moves the learning-rate schedule to the resumed step when the checkpoint
    held no scheduler state (``save_optimizer_state = false``)."""
    from transformers import TrainerCallback

    class CatchUpSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            if lr_scheduler is None:
                return
            with warnings.catch_warnings():  # stepping before the optimiser: on purpose
                warnings.simplefilter("ignore")
                for _ in range(max(0, state.global_step - lr_scheduler.last_epoch)):
                    lr_scheduler.step()

    return CatchUpSchedule()


def build_trainer(
    config: FinetuneConfig,
    output: Path,
    model: Any,
    processor: VisionChatProcessor,
    dataset: Any,
    callbacks: tuple = (),
) -> Any:
    """TRL's ``SFTTrainer`` over a prepared model and the written examples, with the merger's
    learning rate and the schedule kept right on resume."""
    from trl import SFTTrainer

    merger_lr = config.merger_learning_rate

    class Trainer(SFTTrainer):
        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:  # transformers takes the groups given as "params"
                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                groups = parameter_groups(self.model, self.args, merger_lr)
                self.optimizer_cls_and_kwargs = (cls, {**kwargs, "params": groups})
            return super().create_optimizer(model)

    return Trainer(
        model=model,
        args=sft_config(config, output),
        train_dataset=dataset,
        data_collator=TrainCollator(processor, config.pad_to_multiple_of),
        processing_class=processor.tokenizer,
        callbacks=[_catch_up_schedule(), *callbacks],
    )


def train(config: FinetuneConfig, examples: Path) -> TrainResult:
    """Train on the examples in ``examples``; save model and processor to ``OUTPUT/model``.
    The trained model is freed before this returns (prediction loads the saved one)."""
    result = _train_and_save(config, examples)
    gc.collect()  # the trainer's patched forward holds the model in a reference cycle
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _train_and_save(config: FinetuneConfig, examples: Path) -> TrainResult:
    output = Path(config.output_dir)
    processor = VisionChatProcessor.from_pretrained(
        config.model_name_or_path, config.min_pixels, config.max_pixels
    )
    dataset = load_train_examples(examples)
    model, trainable = prepare_model(load_base_model(config.model_name_or_path, config), config)
    trainer = build_trainer(config, output, model, processor, dataset)
    resume = last_checkpoint(output)
    outcome = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    runtime = float(outcome.metrics.get("train_runtime", 0.0))
    steps = int(trainer.state.global_step)
    counted = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    tokens = float(counted[-1]) if counted else _tokens_seen(dataset, config, steps)
    result = TrainResult(
        steps=steps,
        epochs=float(trainer.state.epoch or 0.0),
        losses=losses,
        train_runtime_s=runtime,
        samples_per_second=float(outcome.metrics.get("train_samples_per_second", 0.0)),
        tokens_per_second=tokens / runtime if runtime > 0 else 0.0,
        trainable_parameters=trainable.trainable,
        total_parameters=trainable.total,
        resumed_from=resume.name if resume else None,
    )
    work = output / f".{MODEL}.partial"
    if trainer.is_world_process_zero():
        shutil.rmtree(work, ignore_errors=True)
    trainer.save_model(str(work))  # every rank takes part (sharded states); rank 0 writes
    if trainer.is_world_process_zero():
        processor.save_pretrained(work)
        shutil.rmtree(output / MODEL, ignore_errors=True)
        os.replace(work, output / MODEL)
        write_atomic(output / TRAIN_RESULT, json.dumps(result.to_json(), indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return result


def _tokens_seen(dataset: Any, config: FinetuneConfig, steps: int) -> float:
    """Tokens trained on (without padding), estimated from the mean example length."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps * world
    lengths = dataset["length"]
    mean = sum(lengths) / max(1, len(lengths))
    return math.floor(mean * per_step * steps)


def main(argv: list[str] | None = None) -> None:
    """``python -m medgrit.adapters.training.trainer CONFIG.json EXAMPLES``: one process of a
    ``torchrun`` launch."""
    args = sys.argv[1:] if argv is None else argv
    config = FinetuneConfig.model_validate_json(Path(args[0]).read_text(encoding="utf-8"))
    train(config, Path(args[1]))


if __name__ == "__main__":
    main()
