"""Loading a Qwen2-VL-family model and choosing what trains.

The model's three parts, by module path: the vision tower ``model.visual`` (its patch embedding
and blocks), the vision-language merger ``model.visual.merger``, and the language model
``model.language_model`` with ``lm_head``. BiRD trained the merger (Qwen-VL's resampler) and the
language model, with the vision encoder frozen, which is the default here.

- ``full``: the chosen parts' own weights train; the rest is frozen.
- ``lora``: every weight is frozen; LoRA adapters go on the language model's linear layers
  (``lora_target_modules``), and on the vision tower's when ``train_vision_tower``; the merger,
  when trained, is trained whole (peft's ``modules_to_save``) and saved with the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medgrit.schemas.finetune import FinetuneConfig

# The vision blocks' linear layers (Qwen2.5-VL's gated MLP, Qwen2-VL's fc1/fc2).
VISION_LINEARS = (
    "qkv",
    "attn.proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "mlp.fc1",
    "mlp.fc2",
)


class ModelError(ValueError):
    """A base model medgrit cannot fine-tune (one line)."""


@dataclass(frozen=True)
class TrainableSummary:
    """How many parameters train, of how many."""

    trainable: int
    total: int


def dtype_of(config: FinetuneConfig) -> Any:
    import torch

    return torch.bfloat16 if config.bf16 else torch.float32


def settled(config: FinetuneConfig) -> FinetuneConfig:
    """The config with ``box_format = "auto"`` made the base model's own format (read from its
    ``config.json``: Qwen2-VL's 0-1000 box tokens, Qwen2.5-VL's absolute pixels).

    Raises:
        ModelError: when the model is of a family medgrit does not fine-tune.
    """
    if config.box_format != "auto":
        return config
    from transformers import AutoConfig

    from medgrit.core.vlm import box_format_of_model

    kind = getattr(AutoConfig.from_pretrained(config.model_name_or_path), "model_type", None)
    try:
        box_format = box_format_of_model(str(kind))
    except ValueError:
        raise ModelError(
            f"{config.model_name_or_path} is a {kind} model; medgrit fine-tunes Qwen2-VL and "
            "Qwen2.5-VL models"
        ) from None
    return config.model_copy(update={"box_format": box_format})


def load_base_model(path: str, config: FinetuneConfig) -> Any:
    """The base model in the training dtype.

    Raises:
        ModelError: when the model is no Qwen2-VL-family vision-language model.
    """
    import warnings

    from transformers import AutoModelForImageTextToText

    # transformers 5 renames gradient_checkpointing; the old names are what SFTConfig mirrors
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=dtype_of(config), attn_implementation=config.attn_implementation
    )
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("visual", "language_model")) or not hasattr(
        inner.visual, "merger"
    ):
        raise ModelError(
            f"{path} is a {type(model).__name__}; medgrit fine-tunes Qwen2-VL-family models "
            "(a vision tower with a merger, and a language model)"
        )
    return model


def _part(name: str) -> str:
    if ".visual.merger." in f".{name}":
        return "merger"
    if ".visual." in f".{name}":
        return "vision"
    return "language"


def prepare_model(model: Any, config: FinetuneConfig) -> tuple[Any, TrainableSummary]:
    """``model`` with only the chosen parts trainable (see the module docstring), those in fp32."""
    import torch

    for param in model.parameters():
        param.requires_grad_(False)
    if config.finetune == "full":
        train = {
            "vision": config.train_vision_tower,
            "merger": config.train_merger,
            "language": config.train_language_model,
        }
        for name, param in model.named_parameters():
            param.requires_grad_(train[_part(name)])
    else:
        from peft import LoraConfig, get_peft_model

        layers = "|".join(m.replace(".", r"\.") for m in config.lora_target_modules)
        pattern = rf".*language_model\..*\.({layers})"
        if config.train_vision_tower:
            vision = "|".join(m.replace(".", r"\.") for m in VISION_LINEARS)
            pattern = rf"({pattern}|.*visual\.blocks\..*\.({vision}))"
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=pattern,
            modules_to_save=["merger"] if config.train_merger else None,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:  # peft's NoMatchingPeftModuleError
            if "target" not in str(exc):
                raise
            raise ModelError(
                f"lora_target_modules: none of {', '.join(config.lora_target_modules)} is a "
                "linear layer of the language model (Qwen2's are q_proj, k_proj, v_proj, o_proj, "
                "gate_proj, up_proj, down_proj)"
            ) from None
    # Mixed precision: the weights that train stay fp32 (a bf16 weight loses an update of 2e-5
    # once it is above ~0.005); bf16 autocast does the matrix work. Frozen weights keep the
    # dtype they were loaded in.
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if not config.train_vision_tower:
        detach_frozen_tower(model)
    if config.gradient_checkpointing:
        model.config.use_cache = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return model, TrainableSummary(trainable, total)


def _detach_inputs(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    import torch

    def cut(value: Any) -> Any:
        return value.detach() if isinstance(value, torch.Tensor) else value

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def detach_frozen_tower(model: Any) -> None:
    """Stop backward at the merger's input: the frozen vision tower gets no backward pass.

    With gradient checkpointing, transformers (and TRL, for a PeftModel) make every sub-model's
    input embeddings require grad, the vision tower's patch embedding included, so autograd
    would run the backward of every vision block for gradients nothing uses. The merger (the
    module at ``visual.merger``, or peft's wrapper around it) keeps its own gradients.
    """
    mergers = [m for n, m in model.named_modules() if n.endswith("visual.merger")]
    if not mergers:
        raise ModelError("the model has no visual.merger: not a Qwen2-VL-family model")
    # the outermost: peft's wrapper when the merger trains whole
    mergers[0].register_forward_pre_hook(_detach_inputs, with_kwargs=True)


def load_trained_model(model_dir: str, config: FinetuneConfig) -> Any:
    """The fine-tuned model for generation: the base with its adapter, or the full model."""
    if config.finetune == "full":
        return load_base_model(model_dir, config)
    from peft import PeftModel

    base = load_base_model(config.model_name_or_path, config)
    return PeftModel.from_pretrained(base, model_dir)
