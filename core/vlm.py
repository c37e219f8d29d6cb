"""Text and geometry rules of fine-tuning a Qwen-family vision-language model. Pure: no I/O.

Conversations are written in ChatML, the chat format of both Qwen-VL-Chat (BiRD's base) and
Qwen2.5-VL::

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n
    ...

The image sits at the start of the first user turn only. Only assistant answers and their
closing ``<|im_end|>`` are trained (labels elsewhere are ignored). N, the number of image
tokens, is the image's patch grid over the merge window: ``(h/14)*(w/14)/4`` for Qwen2.5-VL
after :func:`smart_resize`.

Box conventions (both converted from the dataset's regions, never by rewriting numbers):
- ``qwen-vl``: the dataset's own text, ``<ref>X</ref><box>(x1,y1),(x2,y2)</box>`` with
  ``bbox_1000`` values (0-999), as BiRD trained Qwen-VL.
- ``qwen2.5-vl``: Qwen2's box tokens with absolute pixel coordinates of the image *as the model
  sees it* (after :func:`smart_resize`):
  ``<|object_ref_start|>X<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, a pixel
  box ``[x0, y0, x1, y1)`` scaled by the resize factors and rounded. Predictions in this form are
  turned back into Qwen-VL text with ``bbox_1000 = floor(1000 * v / resized_size)`` (clamped to
  999), the frame ``medgrit evaluate`` and BiRD's scripts score in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from medgrit.core.vocab import Task

Box = tuple[int, int, int, int]

BOX_FORMATS: tuple[str, ...] = ("qwen2.5-vl", "qwen-vl")
DEFAULT_SYSTEM = "You are a helpful assistant."
# BiRD's generation lengths (new tokens) per task.
MAX_NEW_TOKENS: Mapping[Task, int] = {"VG": 80, "ROC": 80, "RC": 80, "MIA": 100}

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
REF_START, REF_END = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_START, BOX_END = "<|box_start|>", "<|box_end|>"
# The tokens a Qwen2.5-VL tokenizer must know (special) for this module's text.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    IM_START,
    IM_END,
    REF_START,
    REF_END,
    BOX_START,
    BOX_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    "<|video_pad|>",
)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 1 << 40
) -> tuple[int, int]:
    """The (height, width) Qwen2-VL's image processor resizes an image to: both multiples of
    ``factor`` (patch size times merge size), the pixel count within ``[min_pixels,
    max_pixels]``, the aspect ratio kept as closely as that allows.

    Raises:
        ValueError: for an empty image or an aspect ratio above 200 (the processor refuses it).
    """
    if height < 1 or width < 1:
        raise ValueError(f"an image of {width}x{height} pixels cannot be resized")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"an aspect ratio of {max(height, width) / min(height, width):.0f} > 200")
    h = round(height / factor) * factor  # may be 0 for a thin image: min_pixels then scales up
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def image_token_count(
    height: int, width: int, patch_size: int = 14, merge_size: int = 2, **limits: int
) -> int:
    """How many ``<|image_pad|>`` tokens an image of this size becomes (one per merged patch)."""
    h, w = smart_resize(height, width, factor=patch_size * merge_size, **limits)
    return (h // patch_size) * (w // patch_size) // (merge_size * merge_size)


def scale_box(box: Box, size: tuple[int, int], resized: tuple[int, int]) -> Box:
    """A half-open pixel box of an image of ``size`` (width, height) in the pixel frame of the
    same image resized to ``resized`` (width, height), rounded to whole pixels."""
    (w, h), (rw, rh) = size, resized
    x0, y0, x1, y1 = box
    return (round(x0 * rw / w), round(y0 * rh / h), round(x1 * rw / w), round(y1 * rh / h))


def box_1000(box: Box, size: tuple[int, int]) -> Box:
    """A pixel box of an image of ``size`` (width, height) in Qwen-VL's 0-999 frame."""
    w, h = size

    def norm(v: int, n: int) -> int:
        return min(999, max(0, math.floor(1000 * v / n)))

    x0, y0, x1, y1 = box
    return (norm(x0, w), norm(y0, h), norm(x1, w), norm(y1, h))


_QWEN2_BOX = re.compile(
    re.escape(BOX_START)
    + r"\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)\s*,\s*\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)\s*"
    + re.escape(BOX_END)
)
_QWEN2_REF = re.compile(re.escape(REF_START) + r"(.*?)" + re.escape(REF_END), re.S)


def qwen_vl_text_of_absolute(text: str, resized: tuple[int, int]) -> str:
    """A Qwen2.5-VL answer (box tokens, absolute pixels of the resized image, ``resized`` =
    (width, height)) as Qwen-VL text in the 0-999 frame; anything else is left as it is."""

    def box(match: re.Match) -> str:
        x0, y0, x1, y1 = box_1000(tuple(int(g) for g in match.groups()), resized)  # type: ignore[arg-type]
        return f"<box>({x0},{y0}),({x1},{y1})</box>"

    return _QWEN2_REF.sub(lambda m: f"<ref>{m[1]}</ref>", _QWEN2_BOX.sub(box, text))


@dataclass(frozen=True)
class Piece:
    """A run of a conversation's text: ``trained`` runs get labels; ``image`` marks where the
    image's tokens go (its ``text`` is empty)."""

    text: str
    trained: bool = False
    image: bool = False


def chat_pieces(
    turns: Sequence[tuple[str, str | None]], system: str = DEFAULT_SYSTEM
) -> list[Piece]:
    """A conversation in ChatML as pieces (see the module docstring). The last turn's answer may
    be ``None``: the pieces then end with the assistant's header, a generation prompt.

    Raises:
        ValueError: for no turns, or a missing answer before the last turn.
    """
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    pieces = [Piece(f"{IM_START}system\n{system}{IM_END}\n")]
    for i, (question, answer) in enumerate(turns):
        pieces.append(Piece(f"{IM_START}user\n"))
        if i == 0:
            pieces += [Piece(VISION_START), Piece("", image=True), Piece(VISION_END)]
        pieces.append(Piece(f"{question}{IM_END}\n{IM_START}assistant\n"))
        if answer is None:
            if i != len(turns) - 1:
                raise ValueError(f"turn {i} has no answer but is not the last")
            break
        pieces += [Piece(f"{answer}{IM_END}", trained=True), Piece("\n")]
    return pieces


def cut_answer(text: str) -> str:
    """A generated continuation up to (not including) the model's end of turn."""
    for stop in (IM_END, "<|endoftext|>"):
        at = text.find(stop)
        if at >= 0:
            text = text[:at]
    return text.strip()
