"""What a fine-tune writes to disk, known before it starts.

The model is built from its config on PyTorch's ``meta`` device (no weights read, no memory
taken), and the parameters that train are counted as :func:`.model.prepare_model` chooses them:

- a checkpoint holds the weights the trainer saves (``full``: the whole model, trained weights in
  fp32 and frozen ones in the load dtype; ``lora``: the adapter and the merger, fp32) and, with
  ``save_optimizer_state``, AdamW's two fp32 moments of every trained weight;
- the trainer writes a new checkpoint before it deletes the oldest, so ``save_total_limit + 1``
  checkpoints exist at once (fewer when the run saves fewer times);
- the model saved at the end is the checkpoint's weights without the optimizer.

For Qwen2.5-VL-3B in ``full`` mode a checkpoint is about 39 GB with its optimizer state and 14 GB
without (the run then needs 91 GB or 41 GB free); a LoRA checkpoint (r = 64) is 1.9 GB.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medgrit.schemas.finetune import FinetuneConfig

_ADAM_MOMENTS_BYTES = 8  # two fp32 moments per trained weight
_VISION_LINEARS = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")


class DiskTooSmall(ValueError):
    """The disk of ``output_dir`` cannot hold the run's checkpoints and model (one line)."""


@dataclass(frozen=True)
class Footprint:
    """Bytes on disk: one checkpoint, the final model, and how many checkpoints coexist."""

    checkpoint: int
    model: int
    checkpoints_at_once: int

    @property
    def need(self) -> int:
        return self.checkpoint * self.checkpoints_at_once + self.model


def _part(name: str) -> str:
    if ".visual.merger." in f".{name}":
        return "merger"
    return "vision" if ".visual." in f".{name}" else "language"


def _lora_parameters(model: object, config: FinetuneConfig) -> int:
    """Parameters of the LoRA matrices (r x in, out x r) on the layers they adapt."""
    import torch

    count = 0
    for name, module in model.named_modules():  # type: ignore[attr-defined]
        if not isinstance(module, torch.nn.Linear):
            continue
        leaf, where = name.rsplit(".", 1)[-1], f".{name}"
        chosen = (".language_model." in where and leaf in config.lora_target_modules) or (
            ".visual.blocks." in where and config.train_vision_tower and leaf in _VISION_LINEARS
        )
        if chosen:
            count += config.lora_r * (module.in_features + module.out_features)
    return count


def saves(config: FinetuneConfig, train_images: int) -> int:
    """How many checkpoints the run writes at most (train images bound the examples)."""
    if config.max_steps > 0:
        steps = config.max_steps
    else:
        batch = (
            config.per_device_train_batch_size
            * config.gradient_accumulation_steps
            * config.num_processes
        )
        steps = math.ceil(config.num_train_epochs * math.ceil(train_images / batch))
    return max(1, steps // config.save_steps)


def footprint(config: FinetuneConfig, train_images: int) -> Footprint:
    """The disk a run of ``config`` takes (see the module docstring)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            AutoConfig.from_pretrained(config.model_name_or_path)
        )
    sizes = {"vision": 0, "merger": 0, "language": 0}
    for name, param in model.named_parameters():
        sizes[_part(name)] += param.numel()
    frozen_bytes = 2 if config.bf16 else 4
    if config.finetune == "full":
        trained = sum(
            sizes[p]
            for p, on in (
                ("vision", config.train_vision_tower),
                ("merger", config.train_merger),
                ("language", config.train_language_model),
            )
            if on
        )
        weights = trained * 4 + (sum(sizes.values()) - trained) * frozen_bytes
    else:
        trained = _lora_parameters(model, config) + (sizes["merger"] if config.train_merger else 0)
        weights = trained * 4
    optimizer = trained * _ADAM_MOMENTS_BYTES if config.save_optimizer_state else 0
    limit = config.save_total_limit
    at_once = min(saves(config, train_images), limit + 1 if limit else saves(config, train_images))
    return Footprint(checkpoint=weights + optimizer, model=weights, checkpoints_at_once=at_once)


def _size_of(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def disk_problem(config: FinetuneConfig, train_images: int) -> str | None:
    """Why ``output_dir``'s disk cannot take the run (one line), or None. What an earlier run
    of the same folder already wrote (checkpoints, model) counts as taken."""
    from medgrit.adapters.training.trainer import CHECKPOINTS, MODEL

    output = Path(config.output_dir)
    probe = output
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = footprint(config, train_images)
    written = _size_of(output / CHECKPOINTS) + _size_of(output / MODEL) if output.is_dir() else 0
    if need.need - written <= free:
        return None
    advice = (
        "set save_optimizer_state = false, free space or choose another output_dir"
        if config.save_optimizer_state
        else "free space or choose another output_dir"
    )
    return (
        f"output_dir {output}: the run needs about {_gb(need.need - written)} free "
        f"({need.checkpoints_at_once} checkpoints of {_gb(need.checkpoint)} while the newest is "
        f"written, and the model of {_gb(need.model)}); the disk has {_gb(free)}: {advice}"
    )
