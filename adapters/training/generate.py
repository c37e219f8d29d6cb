"""Greedy answers of a fine-tuned model to the test turns, in BiRD's inference format.

Prompts (:func:`.examples.iter_prompts`) are answered in batches of one task (new tokens per
task: :func:`.examples.new_token_limits`), left-padded, without sampling. Each line is
``{"id", "image", "question", "annotation", "response", "task"}`` as ``predict-baseline`` writes
it, in the order of the ``bird`` export's test files; ``response`` is the answer up to the
model's end of turn in Qwen-VL text (boxes of the other formats turned back into the 0-999
frame, see :func:`medgrit.core.vlm.qwen_vl_text_of`), ``raw_response`` is what the model wrote
when that differs, and ``"cut": true`` marks an answer that ran out of new tokens before its end
of turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from medgrit.adapters.training.examples import Prompt
from medgrit.adapters.training.processor import VisionChatProcessor, collate
from medgrit.core.vlm import IM_END, cut_answer, qwen_vl_text_of


def answer_batch(
    model: Any,
    processor: VisionChatProcessor,
    prompts: list[tuple[Prompt, bytes]],
    max_new_tokens: int,
    box_format: str,
) -> list[dict]:
    """Prediction lines (as dicts) of one batch of prompts."""
    import torch
    from transformers import GenerationConfig

    batch = collate(
        processor, [p.input_ids for p, _ in prompts], None, [png for _, png in prompts], True
    )
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(dtype)
    with torch.inference_mode():
        # BiRD's decoding: greedy, nothing of the base model's sampling or repetition penalty
        greedy = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            repetition_penalty=1.0,
            pad_token_id=processor.pad_token_id,
            eos_token_id=processor.tokenizer.convert_tokens_to_ids(IM_END),
        )
        out = model.generate(**batch, generation_config=greedy)
    new = out[:, batch["input_ids"].shape[1] :]
    lines = []
    for (prompt, _), ids in zip(prompts, new.tolist(), strict=True):
        text = processor.tokenizer.decode(ids, skip_special_tokens=False)
        raw = cut_answer(text)
        response = qwen_vl_text_of(raw, box_format, prompt.resized)
        line = {
            "id": prompt.name,
            "image": f"{prompt.name}.png",
            "question": prompt.question,
            "annotation": prompt.annotation,
            "response": response,
            "task": prompt.task,
        }
        if response != raw:
            line["raw_response"] = raw
        if IM_END not in text and "<|endoftext|>" not in text:
            line["cut"] = True
        lines.append(line)
    return lines


def predict_lines(
    model: Any,
    processor: VisionChatProcessor,
    prompts: Iterable[tuple[Prompt, bytes]],
    batch_size: int,
    max_new_tokens: Mapping[str, int],
    box_format: str,
) -> list[str]:
    """Every prompt's prediction line (JSON text), in test order."""
    model.eval()
    pending: dict[str, list[tuple[Prompt, bytes]]] = {}
    done: list[tuple[int, dict]] = []

    def flush(task: str) -> None:
        group = pending.pop(task, [])
        if group:
            lines = answer_batch(model, processor, group, max_new_tokens[task], box_format)
            done.extend((p.index, line) for (p, _), line in zip(group, lines, strict=True))

    for prompt, png in prompts:
        pending.setdefault(prompt.task, []).append((prompt, png))
        if len(pending[prompt.task]) >= batch_size:
            flush(prompt.task)
    for task in list(pending):
        flush(task)
    done.sort(key=lambda pair: pair[0])
    return [json.dumps(line, ensure_ascii=False) for _, line in done]
