"""The config of the ``finetune`` flow (``medgrit finetune --config FILE``).

One pydantic model: Prefect validates it as the flow's parameter and draws the UI form from it.
Field names follow TRL's ``SFTConfig`` (and transformers' ``TrainingArguments`` under it) where
the two overlap, so a TRL user reads them as they are. The defaults are BiRD's recipe (two
epochs, a cosine schedule with 1% warm-up, weight decay 0.1, Adam beta2 0.95, sequence length
2048, bf16; vision encoder frozen, the vision-language merger and the language model trained)
with LoRA in place of BiRD's full fine-tune: LoRA at ten times BiRD's learning rate of 2e-5 and a
scale (alpha / r) of 2, the merger at 2e-5; ``finetune = "full"`` takes BiRD's 2e-5 throughout.
Imports nothing heavy: the data pipeline may import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medgrit.core.vocab import TASKS, Task

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
# Default learning rates: BiRD's 2e-5 for full fine-tuning; LoRA's low-rank updates need about
# ten times that to move as far.
LEARNING_RATES = {"lora": 2e-4, "full": 2e-5}
# The language model's linear layers; LoRA adapts these (and never the vision tower).
LANGUAGE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class FinetuneConfig(BaseModel):
    """Everything a fine-tune run needs: data, model, what trains, optimiser, batches, output."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dataset: str = Field(description="A complete medgrit dataset directory (its train split).")
    output_dir: str = Field(
        description="Where the run writes: examples, checkpoints, model, predictions, metrics."
    )
    model_name_or_path: str = Field(
        DEFAULT_MODEL, description="Base model: a Hugging Face hub id or a local folder."
    )
    box_format: Literal["auto", "qwen-vl", "qwen2-tokens", "qwen2.5-absolute", "qwen2.5-json"] = (
        Field(
            "auto",
            description=(
                "Boxes in the model's text. 'auto': the base model's own ('qwen2-tokens' for "
                "Qwen2-VL, 'qwen2.5-absolute' for Qwen2.5-VL); 'qwen2-tokens': box tokens, 0-1000; "
                "'qwen2.5-absolute': box tokens, pixels of the resized image; 'qwen2.5-json': "
                '{"bbox_2d": [...], "label": ...} in those pixels; \'qwen-vl\': <ref>/<box>, '
                "0-999, as BiRD."
            ),
        )
    )
    finetune: Literal["lora", "full"] = Field(
        "lora",
        description="'lora': adapters on the language model (fits a 24 GB GPU and a small disk); "
        "'full': its weights, as BiRD (a 80 GB GPU, checkpoints of ~40 GB for a 3B model).",
    )
    train_vision_tower: bool = Field(False, description="Train the vision encoder (BiRD: no).")
    train_merger: bool = Field(True, description="Train the vision-language merger (BiRD: yes).")
    train_language_model: bool = Field(True, description="Train the language model (BiRD: yes).")
    lora_r: int = Field(64, ge=1)
    lora_alpha: int = Field(
        128, ge=1, description="LoRA's scale is lora_alpha / lora_r (2 by default)."
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(LANGUAGE_LINEARS),
        description="Linear layers of the language model that get LoRA adapters.",
    )

    num_train_epochs: float = Field(2.0, gt=0)
    max_steps: int = Field(-1, ge=-1, description="Stop after this many steps (-1: epochs).")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Default (null) by mode: 2e-4 for 'lora', 2e-5 (BiRD's) for 'full'.",
    )
    merger_learning_rate: float | None = Field(
        2e-5,
        gt=0,
        description="Learning rate of the vision-language merger, which trains whole in both "
        "modes (null: learning_rate).",
    )
    lr_scheduler_type: Literal[
        "cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts"
    ] = "cosine"
    warmup_ratio: float = Field(0.01, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.95, ge=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    optim: Literal["adamw_torch", "adamw_torch_fused"] = Field(
        "adamw_torch_fused", description="Optimiser (the fused AdamW needs a GPU or a recent CPU)."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1)

    max_length: int = Field(
        2048, ge=64, description="Tokens per example; turns that do not fit are left out."
    )
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1)
    gradient_checkpointing: bool = True
    bf16: bool = Field(True, description="bf16 mixed precision (needs a GPU that has it).")
    train_sampling_strategy: Literal["group_by_length", "random"] = Field(
        "group_by_length", description="Batch examples of similar length together (less padding)."
    )
    pad_to_multiple_of: int | None = Field(64, ge=1)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    dataloader_num_workers: int = Field(2, ge=0)
    min_pixels: int | None = Field(
        None, ge=28 * 28, description="Image processor's minimum pixels (default: the model's)."
    )
    max_pixels: int | None = Field(
        1280 * 28 * 28,
        ge=28 * 28,
        description="Image processor's maximum pixels (1280 image tokens; null: the model's).",
    )
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(500, ge=1, description="Checkpoint every N steps (resumable).")
    save_total_limit: int | None = Field(
        1, ge=1, description="Checkpoints kept (one more exists while the next is written)."
    )
    save_optimizer_state: bool = Field(
        True,
        description="Keep the optimizer state in checkpoints (twice the trained weights in "
        "size). Without it a resumed run restarts Adam's moments, at the right learning rate.",
    )
    num_processes: int = Field(
        1, ge=1, description="Training processes (GPUs); >1 starts them with torchrun."
    )

    predict: bool = Field(
        True, description="Generate answers for the test split (or eval_split) and score them."
    )
    eval_split: Literal["test", "train"] = Field(
        "test",
        description="The split whose turns are answered and scored ('train': a check that the "
        "model learned its own examples).",
    )
    eval_tasks: list[Task] = Field(
        default_factory=lambda: list(TASKS), description="Tasks to predict and score."
    )
    max_eval_samples: int | None = Field(
        None, ge=1, description="At most this many test turns per task (for trials)."
    )
    per_device_eval_batch_size: int = Field(8, ge=1)
    max_new_tokens: dict[Task, int] = Field(
        default_factory=dict,
        description="New tokens per task; a task not named gets its longest answer in the "
        "dataset, under the model's tokenizer, plus a quarter (at least 16).",
    )

    @field_validator("max_new_tokens", mode="after")
    @classmethod
    def _check_new_tokens(cls, value: dict[str, int]) -> dict[str, int]:
        low = sorted(task for task, n in value.items() if n < 1)
        if low:
            raise ValueError(f"give each task at least 1 new token ({', '.join(low)})")
        return value

    @field_validator("box_format", mode="before")
    @classmethod
    def _older_box_name(cls, value: object) -> object:
        return "qwen2.5-absolute" if value == "qwen2.5-vl" else value

    @model_validator(mode="before")
    @classmethod
    def _learning_rate_of_mode(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("learning_rate") is None:
            mode = data.get("finetune", "lora")
            data = {**data, "learning_rate": LEARNING_RATES.get(mode, LEARNING_RATES["lora"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if not (self.train_vision_tower or self.train_merger or self.train_language_model):
            raise ValueError(
                "nothing would train: set train_language_model, train_merger or "
                "train_vision_tower to true"
            )
        if self.finetune == "lora" and not self.train_language_model:
            raise ValueError(
                "finetune = 'lora' adapts the language model: set train_language_model = true, "
                "or use finetune = 'full'"
            )
        if self.finetune == "lora" and not self.lora_target_modules:
            raise ValueError("lora_target_modules is empty: name the layers LoRA adapts")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        if not self.eval_tasks and self.predict:
            raise ValueError("eval_tasks is empty: name a task, or set predict = false")
        return self

    def resolved(self, base: Path) -> FinetuneConfig:
        """The config with ``dataset`` and ``output_dir`` (and a local base model given as a
        relative path that exists) made absolute against ``base``."""
        changes = {
            "dataset": str((base / Path(self.dataset).expanduser()).absolute()),
            "output_dir": str((base / Path(self.output_dir).expanduser()).absolute()),
        }
        given = Path(self.model_name_or_path).expanduser()
        model = base / given
        if given.is_absolute() or model.exists() or self.model_name_or_path.startswith(("~", ".")):
            changes["model_name_or_path"] = str(model.absolute())
        return self.model_copy(update=changes)
