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

Box formats, the ways a model reads and writes a region's box (:data:`BOX_FORMATS`). All are
written from the dataset's regions, never by rewriting numbers in the text
(:func:`medgrit.core.exports.model_box_text`), and every answer is read back into Qwen-VL text
in the 0-999 frame (:func:`qwen_vl_text_of`), the frame ``medgrit evaluate`` and BiRD's scripts
score in. A pixel box ``[x0, y0, x1, y1)`` of the image becomes, in each format:

- ``qwen-vl``: the dataset's own text, ``<ref>liver</ref><box>(200,150),(550,450)</box>``, with
  ``bbox_1000`` values: ``floor(1000 * v / size)`` clamped to 999, as BiRD trained Qwen-VL.
- ``qwen2-tokens``: Qwen2's box tokens in Qwen2-VL's own frame, the same ``bbox_1000`` values:
  ``<|object_ref_start|>liver<|object_ref_end|><|box_start|>(200,150),(550,450)<|box_end|>``.
  Read back with each value clamped to 0-999 (Qwen2-VL may write 1000).
- ``qwen2.5-absolute``: the same tokens with absolute pixel coordinates of the image *as the
  model sees it*, after :func:`smart_resize` (:func:`resized_size`: sides rounded to multiples
  of 28, at least 56 * 56 and by default at most 1280 * 28 * 28 pixels, as ``medgrit finetune``
  and ``medgrit export`` resize): the box scaled by the resize factors and rounded
  (:func:`scale_box`), as Qwen2.5-VL grounds. Read back as ``floor(1000 * v / resized_size)``
  clamped to 0-999.
- ``qwen2.5-json``: those resized pixels as the JSON Qwen2.5-VL writes its grounding answers in,
  ``{"bbox_2d": [112, 84, 308, 252], "label": "liver"}`` (no ``label`` for a box that names
  nothing). Read back from each such object, alone or in a JSON list or a fenced ``json``
  block; a list or block of nothing but such objects becomes one line, their Qwen-VL texts
  joined by ``, ``. Anything else is left as it is.

:data:`BOX_FRAME` says which of the two frames a format writes (:func:`written_box` computes it),
and :func:`box_format_of_model` which format a model family speaks natively.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Box = tuple[int, int, int, int]

BOX_FORMATS: tuple[str, ...] = ("qwen-vl", "qwen2-tokens", "qwen2.5-absolute", "qwen2.5-json")
# The frame of the boxes each format writes: the dataset's 0-999 values, or pixels of the image
# after the model's resize.
THOUSAND_FRAME, RESIZED_PIXEL_FRAME = "bbox_1000", "resized_pixels"
BOX_FRAME: Mapping[str, str] = {
    "qwen-vl": THOUSAND_FRAME,
    "qwen2-tokens": THOUSAND_FRAME,
    "qwen2.5-absolute": RESIZED_PIXEL_FRAME,
    "qwen2.5-json": RESIZED_PIXEL_FRAME,
}
# The resize of Qwen2-VL-family image processors (:func:`resized_size`): 14-pixel patches merged
# 2x2, so both sides are multiples of 28; at least 56 * 56 pixels (the processors' and
# Qwen2.5-VL's own ``min_pixels``); at most ``medgrit finetune``'s default ``max_pixels``, 1280
# merged patches (Qwen2.5-VL's own allows 12845056).
RESIZE_FACTOR = 28
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
# The native box format of each transformers ``model_type``.
MODEL_BOX_FORMATS: Mapping[str, str] = {
    "qwen2_vl": "qwen2-tokens",
    "qwen2_5_vl": "qwen2.5-absolute",
}
DEFAULT_SYSTEM = "You are a helpful assistant."

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


def resized_size(
    width: int,
    height: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_pixels: int = DEFAULT_MIN_PIXELS,
) -> tuple[int, int]:
    """(width, height) of an image of ``width`` x ``height`` as a Qwen2-VL-family model sees it
    (:func:`smart_resize` with factor 28): by default as ``medgrit finetune`` resizes it, whose
    absolute boxes are pixels of this size.

    Raises:
        ValueError: for an empty image or an aspect ratio above 200.
    """
    h, w = smart_resize(height, width, RESIZE_FACTOR, min_pixels, max_pixels)
    return w, h


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
        # clamped into the image first: the same values, and no float overflow for huge ones
        return min(999, max(0, math.floor(1000 * min(max(v, 0), n) / n)))

    x0, y0, x1, y1 = box
    return (norm(x0, w), norm(y0, h), norm(x1, w), norm(y1, h))


def box_format_of_model(model_type: str) -> str:
    """The box format a model family reads and writes natively, by transformers' ``model_type``
    (``config.json``): ``qwen2_vl`` -> ``qwen2-tokens``, ``qwen2_5_vl`` -> ``qwen2.5-absolute``.

    Raises:
        ValueError: for any other model type.
    """
    try:
        return MODEL_BOX_FORMATS[model_type]
    except KeyError:
        known = ", ".join(MODEL_BOX_FORMATS)
        raise ValueError(
            f"no box format known for model type {model_type!r}; known: {known}"
        ) from None


def written_box(box_format: str, bbox: Box, size: tuple[int, int], resized: tuple[int, int]) -> Box:
    """The box a format writes for the pixel box ``bbox`` of an image of ``size`` (width,
    height) that the model sees resized to ``resized`` (width, height): its ``bbox_1000`` or its
    pixels in the resized image (see :data:`BOX_FRAME`).

    Raises:
        ValueError: for an unknown box format.
    """
    frame = BOX_FRAME.get(box_format)
    if frame is None:
        raise ValueError(f"unknown box format {box_format!r}; expected one of {BOX_FORMATS}")
    return box_1000(bbox, size) if frame == THOUSAND_FRAME else scale_box(bbox, size, resized)


# at most 32 digits: longer numbers are no box (and int() refuses some of them)
_QWEN2_BOX = re.compile(
    re.escape(BOX_START)
    + r"\s*\(\s*(-?\d{1,32})\s*,\s*(-?\d{1,32})\s*\)\s*,\s*\(\s*(-?\d{1,32})\s*,\s*(-?\d{1,32})"
    + r"\s*\)\s*"
    + re.escape(BOX_END)
)
_QWEN2_REF = re.compile(re.escape(REF_START) + r"(.*?)" + re.escape(REF_END), re.S)


def _tokens_back(text: str, to_thousand: Callable[[Box], Box]) -> str:
    def box(match: re.Match) -> str:
        x0, y0, x1, y1 = to_thousand(tuple(int(g) for g in match.groups()))
        return f"<box>({x0},{y0}),({x1},{y1})</box>"

    return _QWEN2_REF.sub(lambda m: f"<ref>{m[1]}</ref>", _QWEN2_BOX.sub(box, text))


def _clamped_1000(box: Box) -> Box:
    x0, y0, x1, y1 = (min(999, max(0, v)) for v in box)
    return (x0, y0, x1, y1)


def qwen_vl_text_of_absolute(text: str, resized: tuple[int, int]) -> str:
    """A Qwen2.5-VL answer (box tokens, absolute pixels of the resized image, ``resized`` =
    (width, height)) as Qwen-VL text in the 0-999 frame; anything else is left as it is."""
    return _tokens_back(text, lambda box: box_1000(box, resized))


def _json_box(value: object, resized: tuple[int, int]) -> str | None:
    """Qwen-VL text of one JSON grounding object, None when ``value`` is none."""
    if not isinstance(value, dict):
        return None
    coords = value.get("bbox_2d")
    if not isinstance(coords, list) or len(coords) != 4:
        return None
    numbers = (isinstance(v, int | float) and not isinstance(v, bool) for v in coords)
    if not all(numbers) or not all(isinstance(v, int) or math.isfinite(v) for v in coords):
        return None
    x0, y0, x1, y1 = box_1000(tuple(round(v) for v in coords), resized)  # type: ignore[arg-type]
    box = f"<box>({x0},{y0}),({x1},{y1})</box>"
    label = value.get("label")
    return f"<ref>{label}</ref>{box}" if isinstance(label, str) else box


_MARK = "\ue000{}\ue001"  # a private-use stand-in for a converted object
_MARKED = re.compile("\ue000(\\d+)\ue001")
_LIST = re.compile(r"\[([^\[\]]*)\]")
_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)(?:```|\Z)", re.S)


def _only_marks(content: str) -> bool:
    return bool(_MARKED.search(content)) and not _MARKED.sub("", content).strip(" \t\r\n,[]")


def _json_back(text: str, resized: tuple[int, int]) -> str:
    """Every JSON grounding object as Qwen-VL text; a list or fenced block holding nothing but
    such objects becomes their texts joined by ``, ``."""
    decoder, found, pieces = json.JSONDecoder(), [], []  # pieces: text, or the index of a box
    i = last = 0
    while (i := text.find("{", i)) >= 0:
        try:
            value, end = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            value, end = None, i
        box = _json_box(value, resized)
        if box is None:
            i += 1
            continue
        pieces += [text[last:i], len(found)]
        found.append(box)
        i = last = end
    pieces.append(text[last:])
    if not found:
        return text
    if "\ue000" in text or "\ue001" in text:  # the marks would be ambiguous: no joining
        return "".join(p if isinstance(p, str) else found[p] for p in pieces)

    def join(match: re.Match) -> str:
        if not _only_marks(match[1]):
            return match[0]
        return ", ".join(m[0] for m in _MARKED.finditer(match[1]))

    marked = "".join(p if isinstance(p, str) else _MARK.format(p) for p in pieces)
    marked = _FENCE.sub(join, _LIST.sub(join, marked))
    return _MARKED.sub(lambda m: found[int(m[1])], marked)


def qwen_vl_text_of(text: str, box_format: str, resized: tuple[int, int]) -> str:
    """A model's answer in ``box_format`` as Qwen-VL text in the 0-999 frame (see the module
    docstring), ``resized`` being the (width, height) the model saw the image at. Anything that
    is no box of the format is left as it is; no model output makes this raise.

    Raises:
        ValueError: for an unknown box format (the caller's mistake, not the model's).
    """
    if box_format == "qwen-vl":
        return text
    if box_format == "qwen2-tokens":
        return _tokens_back(text, _clamped_1000)
    if box_format == "qwen2.5-absolute":
        return qwen_vl_text_of_absolute(text, resized)
    if box_format == "qwen2.5-json":
        return _json_back(text, resized)
    raise ValueError(f"unknown box format {box_format!r}; expected one of {BOX_FORMATS}")


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
