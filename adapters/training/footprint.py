"""What a fine-tune writes to disk, known before it starts.

The model is built from its config on PyTorch's ``meta`` device (no weights read, no memory
taken), and the parameters that train are counted as :func:`.model.prepare_model` chooses them:

- a checkpoint holds the weights the trainer saves (``full``: the whole model, trained weights in
  fp32 and frozen ones in the load dtype; ``lora``: the adapter and the merger, fp32) and, with
  ``save_optimizer_state``, AdamW's two fp32 moments of every trained weight;
- the trainer saves every ``save_steps`` steps and at the last step, and writes a checkpoint
  before it deletes the oldest, so ``save_total_limit + 1`` checkpoints exist for a moment;
- the model saved at the end (the checkpoint's weights without the optimizer) is written after
  the last checkpoint, once only ``save_total_limit`` of them are left;
- the examples (the train images' PNG bytes and tokens) are written before training.

For Qwen2.5-VL-3B in ``full`` mode a checkpoint is 38.7 GB with its optimizer state and 13.8 GB
without, so the run needs 77 GB or 28 GB free besides its examples; a LoRA checkpoint (r = 64)
is 1.9 GB.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medgrit.adapters.training.model import VISION_LINEARS
from medgrit.schemas.finetune import FinetuneConfig

_ADAM_MOMENTS_BYTES = 8  # two fp32 moments per trained weight


class DiskTooSmall(ValueError):
    """The disk of ``output_dir`` cannot hold the run's checkpoints and model (one line)."""


@dataclass(frozen=True)
class Footprint:
    """Bytes on disk: one checkpoint, the final model, and how many checkpoints coexist."""

    checkpoint: int
    model: int
    checkpoints_at_once: int
    checkpoints_kept: int

    @property
    def need(self) -> int:
        """The most the run holds at once: while a checkpoint is written beside the kept ones,
        or once the model is written beside them."""
        return max(
            self.checkpoint * self.checkpoints_at_once,
            self.checkpoint * self.checkpoints_kept + self.model,
        )


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
        where = f".{name}"
        chosen = (
            ".language_model." in where
            and any(where.endswith(f".{m}") for m in config.lora_target_modules)
        ) or (
            ".visual.blocks." in where
            and config.train_vision_tower
            and any(where.endswith(f".{m}") for m in VISION_LINEARS)
        )
        if chosen:
            count += config.lora_r * (module.in_features + module.out_features)
    return count


def saves(config: FinetuneConfig, train_images: int) -> int:
    """How many checkpoints the run writes at most: one every ``save_steps`` and one at the
    last step (train images bound the examples)."""
    if config.max_steps > 0:
        steps = config.max_steps
    else:
        batch = (
            config.per_device_train_batch_size
            * config.gradient_accumulation_steps
            * config.num_processes
        )
        steps = math.ceil(config.num_train_epochs * math.ceil(train_images / batch))
    return max(1, math.ceil(steps / config.save_steps))


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
    written = saves(config, train_images)
    limit = config.save_total_limit or written
    return Footprint(
        checkpoint=weights + optimizer,
        model=weights,
        checkpoints_at_once=min(written, limit + 1),
        checkpoints_kept=min(written, limit),
    )


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


def _examples_estimate(config: FinetuneConfig) -> int:
    """Bytes the examples will take: the dataset's images tables bound their PNG bytes."""
    from medgrit.adapters.store.bookkeeping import load_dataset

    dataset = Path(config.dataset)
    manifest = load_dataset(dataset)
    images = [
        dataset / rel for shard in manifest.shards for rel in shard.files or {} if "images" in rel
    ]
    return sum(p.stat().st_size for p in images if p.is_file())


def disk_problem(config: FinetuneConfig, train_images: int) -> str | None:
    """Why ``output_dir``'s disk cannot take the run (one line), or None. What the run's folder
    already holds (examples, checkpoints, model of an earlier try) counts as taken."""
    from medgrit.adapters.training.run import EXAMPLES
    from medgrit.adapters.training.trainer import CHECKPOINTS, MODEL

    output = Path(config.output_dir)
    probe = output
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = footprint(config, train_images)
    held = sum(_size_of(output / f) for f in (CHECKPOINTS, MODEL)) if output.is_dir() else 0
    examples = 0 if (output / EXAMPLES).is_dir() else _examples_estimate(config)
    if need.need + examples - held <= free:
        return None
    advice = ["free space", "choose another output_dir"]
    if config.save_optimizer_state:
        advice.insert(0, "set save_optimizer_state = false")
    if config.finetune == "full":
        advice.insert(0, "use finetune = 'lora'")
    kept = need.checkpoints_kept
    return (
        f"output_dir {output}: the run needs about {_gb(need.need + examples)} "
        f"({need.checkpoints_at_once} checkpoints of {_gb(need.checkpoint)} while one is "
        f"written, or {kept} and the model of {_gb(need.model)}; examples {_gb(examples)}) and "
        f"the disk has {_gb(free + held)} for it: {', '.join(advice[:-1])} or {advice[-1]}"
    )
