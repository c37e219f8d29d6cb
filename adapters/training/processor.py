"""Turning a conversation and its image into model inputs for a Qwen2-VL-family model.

:class:`VisionChatProcessor` is an images-only processor: the model's tokenizer and
transformers' PIL ``Qwen2VLImageProcessorPil`` (the packaged ``Qwen2_5_VLProcessor`` wants
torchvision for its video half). It writes the ChatML of :mod:`medgrit.core.vlm`, expands the one
``<|image_pad|>`` into as many tokens as the image has merged patches, and labels only the
assistant answers. Batches carry ``mm_token_type_ids`` (1 on image tokens): without it the model
silently falls back to 1D positions instead of its 3D rotary positions.

Shapes: ``input_ids``/``labels``/``attention_mask``/``mm_token_type_ids`` ``(batch, seq)``;
``pixel_values`` ``(patches of all images, 3 * temporal * patch * patch)``; ``image_grid_thw``
``(images, 3)``. Labels are -100 where no loss is taken.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from medgrit.core.vlm import DEFAULT_SYSTEM, IMAGE_PAD, SPECIAL_TOKENS, Piece, smart_resize

IGNORE = -100


class ProcessorError(ValueError):
    """A base model whose tokenizer or image processor medgrit cannot use (one line)."""


@dataclass(frozen=True)
class Encoded:
    """One tokenised conversation: ids, labels (-100 off the answers) and its image's size."""

    input_ids: list[int]
    labels: list[int]
    width: int
    height: int


class VisionChatProcessor:
    """Tokenizer and image processor of one model, with the ChatML rules of ``core.vlm``."""

    def __init__(self, tokenizer: Any, image_processor: Any, system: str = DEFAULT_SYSTEM) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ProcessorError(
                f"the tokenizer has no {', '.join(missing)}: not a Qwen2-VL-family model"
            )
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system = system
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.pad_token_id = (
            tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.convert_tokens_to_ids("<|endoftext|>")
        )
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_pretrained(
        cls, path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> VisionChatProcessor:
        """The processor of a model folder or hub id, with optional pixel limits."""
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        tokenizer = AutoTokenizer.from_pretrained(str(path))
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path))
        size = dict(image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        image_processor.size = size
        return cls(tokenizer, image_processor)

    def save_pretrained(self, folder: Path) -> None:
        """Write the tokenizer and the image processor (with its pixel limits) to ``folder``."""
        self.tokenizer.save_pretrained(str(folder))
        self.image_processor.save_pretrained(str(folder))

    @property
    def factor(self) -> int:
        return int(self.image_processor.patch_size) * int(self.image_processor.merge_size)

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of this size as the model sees it."""
        size = self.image_processor.size
        h, w = smart_resize(
            height,
            width,
            factor=self.factor,
            min_pixels=int(size["shortest_edge"]),
            max_pixels=int(size["longest_edge"]),
        )
        return w, h

    def image_tokens(self, width: int, height: int) -> int:
        """How many ``<|image_pad|>`` tokens the image becomes."""
        w, h = self.resized(width, height)
        patch, merge = int(self.image_processor.patch_size), int(self.image_processor.merge_size)
        return (w // patch) * (h // patch) // (merge * merge)

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(self._cache) < 4096:
                self._cache[text] = ids
        return ids

    def encode(self, pieces: Sequence[Piece], width: int, height: int) -> Encoded:
        """Token ids and labels of ChatML pieces for an image of ``width`` x ``height``."""
        ids: list[int] = []
        labels: list[int] = []
        for piece in pieces:
            if piece.image:
                run = [self.image_token_id] * self.image_tokens(width, height)
            else:
                run = self._ids(piece.text)
            ids += run
            labels += run if piece.trained else [IGNORE] * len(run)
        return Encoded(ids, labels, width, height)

    def pixels(self, pngs: Sequence[bytes | Image.Image]) -> dict[str, Any]:
        """``pixel_values`` and ``image_grid_thw`` of a batch of images (PNG bytes or PIL)."""
        images = [
            Image.open(io.BytesIO(p)).convert("RGB") if isinstance(p, bytes) else p.convert("RGB")
            for p in pngs
        ]
        return dict(self.image_processor(images=images, return_tensors="pt"))


def _padded(rows: Sequence[list[int]], value: int, length: int, left: bool) -> list[list[int]]:
    return [
        ([value] * (length - len(r)) + list(r)) if left else (list(r) + [value] * (length - len(r)))
        for r in rows
    ]


def collate(
    processor: VisionChatProcessor,
    ids: Sequence[list[int]],
    labels: Sequence[list[int]] | None,
    pngs: Sequence[bytes | Image.Image],
    left_pad: bool = False,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """A batch of tensors (see the module docstring); ``left_pad`` for generation.

    Raises:
        ProcessorError: when an image gives another patch grid than its tokens were counted for
            (an image processor whose limits changed after tokenising).
    """
    import torch

    vision = processor.pixels(pngs)
    merge = int(processor.image_processor.merge_size) ** 2
    grids = vision["image_grid_thw"]
    for row, grid in zip(ids, grids, strict=True):
        expected = int(grid.prod()) // merge
        found = sum(1 for t in row if t == processor.image_token_id)
        if expected != found:
            raise ProcessorError(
                f"an image of {expected} patches was tokenised as {found}: the image processor's "
                "pixel limits differ from those the examples were made with"
            )
    length = max(len(r) for r in ids)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.tensor(_padded(ids, processor.pad_token_id, length, left_pad))
    attention = torch.tensor(_padded([[1] * len(r) for r in ids], 0, length, left_pad))
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mm_token_type_ids": (input_ids == processor.image_token_id).to(torch.int32)
        * attention.to(torch.int32),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": grids,
    }
    if labels is not None:
        batch["labels"] = torch.tensor(_padded(labels, IGNORE, length, left_pad))
    return batch


class TrainCollator:
    """The trainer's collator over example rows (``input_ids``, ``labels``, ``png``)."""

    def __init__(self, processor: VisionChatProcessor, pad_to_multiple_of: int | None) -> None:
        self.processor = processor
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[dict]) -> dict[str, Any]:
        return collate(
            self.processor,
            [r["input_ids"] for r in rows],
            [r["labels"] for r in rows],
            [r["png"] for r in rows],
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
