"""Model FLOPs of fine-tuning a Qwen2.5-VL model, for ``bench_finetune.py``'s MFU.

Counted per trained example of ``s`` tokens with its image's patches, with no recompute and no
backward through the frozen vision tower:

- language model ``k N s``: ``N`` its matmul weights (every layer's projections, the tied LM head
  once, no embedding lookup), ``k = 6`` full, ``k = 4`` LoRA (forward, activation gradients) plus
  ``6 A s`` for the adapters' weights ``A``. The head counts on every token, as the model defines
  it; TRL's fused head scores only the labelled ones (``labelled_share``);
- causal attention ``6 L d s (s + 1)``: ``4 d`` per query-key pair forward (QK^T, AV), three times
  that to train, ``s (s + 1) / 2`` pairs in each of ``L`` layers: half the usual ``12 L d s`` per
  token, which counts every pair; ``d`` the query width;
- frozen vision tower, forward only: ``2 V`` per patch (``V``: patch embedding and blocks; 4
  patches per image token), ``4 d_v`` per patch pair attended (every pair of an image in the
  full-attention blocks, those within each 8x8-patch window in the others);
- merger, trained: ``4 M`` per image token (forward and weight gradients).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Matmul weights per part of the model, and the sizes its attention FLOPs depend on."""

    language: int
    lora: int
    vision: int
    merger: int
    layers: int
    width: int
    vision_width: int
    vision_depth: int
    full_blocks: int
    window: int  # image tokens per side of a vision attention window
    merge: int  # patches per side of an image token


def model_shape(model_dir: str, lora_r: int, targets: list[str]) -> ModelShape:
    """Count the weights of the model in ``model_dir``, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    sizes = {"language": 0, "lora": 0, "vision": 0, "merger": 0}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
            where = f".{name}."
            part = "vision" if ".visual." in where else "language"
            sizes["merger" if ".visual.merger." in where else part] += module.weight.numel()
            if ".language_model." in where and name.rsplit(".", 1)[-1] in targets:
                sizes["lora"] += lora_r * (module.in_features + module.out_features)
    text, vision = config.text_config, config.vision_config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    merge = vision.spatial_merge_size
    sizes |= dict(layers=text.num_hidden_layers, width=text.num_attention_heads * head, merge=merge)
    sizes |= dict(vision_width=vision.hidden_size, vision_depth=vision.depth)
    sizes |= dict(window=vision.window_size // merge // vision.patch_size)
    return ModelShape(**sizes, full_blocks=len(vision.fullatt_block_indexes))


def vision_pairs(shape: ModelShape, grid: tuple[int, int, int]) -> int:
    """Query-key pairs of the vision tower's attention over one image, all blocks (windows as
    ``transformers.vision_utils.get_vision_window_index`` cuts them)."""
    t, h, w = grid
    rows, cols, win, m = h // shape.merge, w // shape.merge, shape.window, shape.merge
    windows = sum(
        (min(win, rows - i) * min(win, cols - j) * m * m) ** 2
        for i in range(0, rows, win)
        for j in range(0, cols, win)
    )
    return t * (
        shape.full_blocks * (h * w) ** 2 + (shape.vision_depth - shape.full_blocks) * windows
    )


def batch_flops(shape: ModelShape, mode: str, lengths: list[int], grids: list[tuple]) -> float:
    """Model FLOPs of training on examples of ``lengths`` tokens with images of ``grids``
    (``(t, h, w)`` patches; see the module docstring)."""
    per_token = 6 * shape.language if mode == "full" else 4 * shape.language + 6 * shape.lora
    flops = sum(per_token * s + 6 * shape.layers * shape.width * s * (s + 1) for s in lengths)
    for grid in grids:
        patches = grid[0] * grid[1] * grid[2]
        flops += 2 * shape.vision * patches + 4 * shape.vision_width * vision_pairs(shape, grid)
        flops += 4 * shape.merger * patches / shape.merge**2
    return float(flops)
