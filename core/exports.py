"""Text rules of the export formats: sample names, BiRD's prompt prefix, Qwen2-VL box tokens, and
the rule-based baseline. Pure: no file or network I/O.

Sample names follow SA-Med2D-20M, whose names BiRD's code reads the modality from:
``{modality_sub}--{dataset}--{case}--{axis}_{slice}``, e.g.
``ct_00--SyntheticCTPhantom--3f2a..--z_0042``.

- ``modality_sub`` is ``{key}_00`` where ``key`` is BiRD's modality key (``ct``, ``mr``, ``x`` for
  medgrit's ``xray``, ``pet``, ``endoscopy``, ``dermoscopy``, ``fundus``, ``ultrasound``), so
  ``name.split("_")[0]`` is the key. ``00`` marks "no sub-modality recorded".
- ``dataset`` keeps ASCII letters, digits, ``.`` and single ``-``; every other run of characters
  (``_`` included) becomes one ``-``, so ``--`` only ever separates fields.
- ``case`` is the pseudonymous case id, never a source name.
- ``axis`` is SA-Med2D's letter of the slicing axis: ``x`` sagittal, ``y`` coronal, ``z`` axial;
  2D images (one plane, slice 0) are ``z``. ``slice`` is zero-padded to four digits.

Boxes: the dataset's text already uses Qwen-VL syntax ``<ref>X</ref><box>(x1,y1),(x2,y2)</box>``
with ``bbox_1000`` values (0-1000, Qwen-VL's own frame). Every other box format is written from
the regions' own boxes, found by value among the turn's regions, never by rewriting the numbers
(:func:`model_box_text`; the formats are described in :mod:`medgrit.core.vlm`):

- ``qwen-vl``: the dataset's text as it is;
- ``qwen2-tokens`` and ``qwen2.5-absolute``: Qwen2's box tokens (:func:`qwen2vl_text`),
  ``<|object_ref_start|>liver<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``, whose
  numbers are each region's ``written`` box (``bbox_1000`` or pixels of the resized image);
- ``qwen2.5-json``: Qwen2.5-VL's grounding JSON, ``{"bbox_2d": [x1, y1, x2, y2], "label":
  "liver"}`` for a named box, ``{"bbox_2d": [x1, y1, x2, y2]}`` for a bare one, and just the
  name for a ``<ref>`` without a box.

:func:`model_text` writes a turn's text in a box format from the image's regions: the one
function ``medgrit finetune`` and ``medgrit export`` both write text with, so an export's boxes
are the boxes a fine-tune trains on. :data:`EXPORT_BOX_FORMATS` says which box formats each
export format writes (its default first).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from medgrit.core.vlm import (
    BOX_FORMATS,
    BOX_FRAME,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    RESIZE_FACTOR,
    RESIZED_PIXEL_FRAME,
    written_box,
)
from medgrit.core.vocab import BIRD_MODALITY, TASKS, Task

Box = tuple[int, int, int, int]

MEDGRIT_MODALITY: Mapping[str, str] = {v: k for k, v in BIRD_MODALITY.items()}
PLANE_AXIS: Mapping[str, str] = {"sagittal": "x", "coronal": "y", "axial": "z", "2d": "z"}
# The box formats each export format writes, its default first: ``bird`` is BiRD's Qwen-VL data;
# ``qwen2vl`` speaks Qwen2-VL's tokens; ``trl`` matches ``medgrit finetune``'s default model
# (Qwen2.5-VL); ``llava`` and ``hf`` keep the dataset's own text.
EXPORT_BOX_FORMATS: Mapping[str, tuple[str, ...]] = {
    "bird": ("qwen-vl",),
    "llava": BOX_FORMATS,
    "trl": ("qwen2.5-absolute", *(f for f in BOX_FORMATS if f != "qwen2.5-absolute")),
    "qwen2vl": ("qwen2-tokens", *(f for f in BOX_FORMATS if f != "qwen2-tokens")),
    "hf": BOX_FORMATS,
}
# BiRD's test file of each task.
BIRD_TEST_FILES: Mapping[Task, str] = {
    "VG": "Test_VG.json",
    "ROC": "Test_RO.json",
    "RC": "Test_GC.json",
    "MIA": "Test_MII.json",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9.]+")
_NAME = re.compile(
    r"^(?P<key>[a-z]+)_00--(?P<dataset>[^_]+?)--(?P<case>[^_]+?)--(?P<axis>[xyz])_(?P<slice>\d+)$"
)


def safe_dataset_name(dataset: str) -> str:
    """A dataset name fit for a file name and free of ``_`` and ``--`` (the field separators)."""
    cleaned = _UNSAFE.sub("-", dataset).strip("-.")
    return cleaned or "dataset"


def sample_name(modality: str, dataset: str, case_id: str, plane: str, slice_index: int) -> str:
    """The SA-Med2D-style name of one image (see the module docstring).

    Raises:
        ValueError: for a modality or plane outside the data contract.
    """
    try:
        key, axis = BIRD_MODALITY[modality], PLANE_AXIS[plane]
    except KeyError as exc:
        raise ValueError(f"no sample name for modality/plane {exc.args[0]!r}") from None
    case = safe_dataset_name(case_id)
    return f"{key}_00--{safe_dataset_name(dataset)}--{case}--{axis}_{int(slice_index):04d}"


def modality_of_name(name: str) -> str:
    """medgrit's modality key of a sample name (what BiRD reads as ``name.split("_")[0]``).

    Raises:
        ValueError: when ``name`` is not a sample name.
    """
    match = _NAME.match(name)
    if match is None or match["key"] not in MEDGRIT_MODALITY:
        raise ValueError(f"{name!r} is not a sample name")
    return MEDGRIT_MODALITY[match["key"]]


def bird_question(name: str, question: str) -> str:
    """The first question of a conversation as BiRD's Qwen-VL code reads it (image tag first)."""
    return f"Picture 1: <img>{name}.png</img>\n{question}"


@dataclass(frozen=True)
class TextRegion:
    """A region a turn may show: its label, its Qwen-VL box and the box to write in its place."""

    label: str
    bbox_1000: Box
    written: Box


_REF_BOX = re.compile(
    r"(?:<ref>(?P<ref>[^<]*)</ref>)?<box>\((?P<a>-?\d+),(?P<b>-?\d+)\),\((?P<c>-?\d+),(?P<d>-?\d+)\)</box>"
)
_REF = re.compile(r"<ref>(?P<ref>[^<]*)</ref>")


def _region_of(match: re.Match, regions: Sequence[TextRegion], text: str) -> TextRegion:
    """The region a matched Qwen-VL box stands for: its ``bbox_1000``, and its label when a
    ``<ref>`` names it."""
    box = tuple(int(match[k]) for k in "abcd")
    ref = match["ref"]
    for region in regions:
        if region.bbox_1000 == box and (ref is None or region.label == ref):
            return region
    raise ValueError(f"box {box} of {text!r} is no box of the turn's regions")


def qwen2vl_text(text: str, regions: Sequence[TextRegion]) -> str:
    """``text`` with Qwen-VL ``<ref>``/``<box>`` tags as Qwen2-VL's special tokens.

    Each box is looked up among ``regions`` (those of the turn) by its ``bbox_1000`` and, when a
    ``<ref>`` names it, by label; the region's ``written`` box is what appears. Qwen2-VL writes
    ``<|object_ref_start|>X<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``.

    Raises:
        ValueError: when a box is no box of the given regions (a dataset that breaks the contract).
    """

    def box_of(match: re.Match) -> str:
        x0, y0, x1, y1 = _region_of(match, regions, text).written
        tokens = f"<|box_start|>({x0},{y0}),({x1},{y1})<|box_end|>"
        ref = match["ref"]
        return tokens if ref is None else f"<|object_ref_start|>{ref}<|object_ref_end|>{tokens}"

    boxed = _REF_BOX.sub(box_of, text)
    return _REF.sub(lambda m: f"<|object_ref_start|>{m['ref']}<|object_ref_end|>", boxed)


def _json_text(text: str, regions: Sequence[TextRegion]) -> str:
    """``text`` with Qwen-VL boxes as Qwen2.5-VL's grounding JSON (see the module docstring)."""

    def box_of(match: re.Match) -> str:
        grounded: dict[str, object] = {"bbox_2d": list(_region_of(match, regions, text).written)}
        if match["ref"] is not None:
            grounded["label"] = match["ref"]
        return json.dumps(grounded, ensure_ascii=False)

    return _REF.sub(lambda m: m["ref"], _REF_BOX.sub(box_of, text))


def model_box_text(text: str, regions: Sequence[TextRegion], box_format: str) -> str:
    """``text`` (the dataset's, with Qwen-VL boxes) as a model of ``box_format`` reads and writes
    it. Boxes are looked up among ``regions`` as :func:`qwen2vl_text` does, and each region's
    ``written`` box, in the frame the format writes (:data:`medgrit.core.vlm.BOX_FRAME`), is what
    appears; ``qwen-vl`` keeps the text as it is.

    Raises:
        ValueError: for an unknown box format, or a box that is no box of the given regions.
    """
    if box_format == "qwen-vl":
        return text
    if box_format in ("qwen2-tokens", "qwen2.5-absolute"):
        return qwen2vl_text(text, regions)
    if box_format == "qwen2.5-json":
        return _json_text(text, regions)
    raise ValueError(f"unknown box format {box_format!r}; expected one of {BOX_FORMATS}")


class BoxedRegion(Protocol):
    """A region as :func:`model_text` reads it: its label, its half-open pixel box and its
    Qwen-VL box."""

    @property
    def label(self) -> str: ...

    @property
    def bbox(self) -> Box: ...

    @property
    def bbox_1000(self) -> Box: ...


def model_text(
    text: str,
    regions: Mapping[str, BoxedRegion],
    region_ids: Sequence[str],
    box_format: str,
    size: tuple[int, int],
    resized: tuple[int, int],
) -> str:
    """A turn's text (the dataset's, with Qwen-VL boxes) as a model of ``box_format`` reads and
    writes it, each box written from its region (:func:`model_box_text`,
    :func:`medgrit.core.vlm.written_box`).

    Args:
        text: a question or answer of the turn.
        regions: the image's regions by region id.
        region_ids: the turn's own regions, looked up first, so that a box two regions share is
            read as the turn's.
        box_format: one of :data:`medgrit.core.vlm.BOX_FORMATS`.
        size: the image's (width, height).
        resized: its (width, height) as the model sees it
            (:func:`medgrit.core.vlm.resized_size`); read only by the pixel formats.

    Raises:
        ValueError: for an unknown box format, or a box that is no box of the regions.
    """
    if box_format == "qwen-vl":
        return text
    own = [i for i in region_ids if i in regions]
    order = [*own, *(i for i in regions if i not in set(own))]
    boxed = [
        TextRegion(r.label, r.bbox_1000, written_box(box_format, r.bbox, size, resized))
        for r in (regions[i] for i in order)
    ]
    return model_box_text(text, boxed, box_format)


def export_box_format(export_format: str, box_format: str | None) -> str:
    """The box format an export of ``export_format`` writes: ``box_format``, or the format's
    default (:data:`EXPORT_BOX_FORMATS`) when None.

    Raises:
        ValueError: one line, for an unknown export format or a box format it cannot carry.
    """
    allowed = EXPORT_BOX_FORMATS.get(export_format)
    if allowed is None:
        known = ", ".join(EXPORT_BOX_FORMATS)
        raise ValueError(f"unknown export format {export_format!r}; choose one of {known}")
    if box_format is None:
        return allowed[0]
    if box_format not in BOX_FORMATS:
        raise ValueError(f"unknown --boxes {box_format!r}; choose one of {', '.join(BOX_FORMATS)}")
    if box_format not in allowed:
        others = [f for f, boxes in EXPORT_BOX_FORMATS.items() if box_format in boxes]
        raise ValueError(
            f"--format {export_format} writes --boxes {' or '.join(allowed)} only (what its "
            f"training code reads); for {box_format} boxes use one of --format "
            f"{', '.join(others)}"
        )
    return box_format


def box_format_note(box_format: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """One Markdown sentence on how an export's text writes boxes (for a dataset card).

    Raises:
        ValueError: for an unknown box format.
    """
    if box_format == "qwen-vl":
        return (
            "Boxes in text are Qwen-VL boxes `<ref>label</ref><box>(x1,y1),(x2,y2)</box>` in "
            "0-1000 coordinates (`bbox_1000`)."
        )
    if box_format == "qwen2-tokens":
        return (
            "Boxes in text are Qwen2-VL's box tokens `<|object_ref_start|>label<|object_ref_end|>"
            "<|box_start|>(x1,y1),(x2,y2)<|box_end|>` in 0-1000 coordinates (`bbox_1000`)."
        )
    if BOX_FRAME.get(box_format) != RESIZED_PIXEL_FRAME:
        raise ValueError(f"unknown box format {box_format!r}; expected one of {BOX_FORMATS}")
    syntax = (
        "Qwen2.5-VL's box tokens `<|object_ref_start|>label<|object_ref_end|><|box_start|>"
        "(x1,y1),(x2,y2)<|box_end|>`"
        if box_format == "qwen2.5-absolute"
        else 'Qwen2.5-VL\'s grounding JSON `{"bbox_2d": [x1, y1, x2, y2], "label": "label"}`'
    )
    return (
        f"Boxes in text are {syntax} in pixels of the image as the model sees it: resized to "
        f"sides that are multiples of {RESIZE_FACTOR}, at least {DEFAULT_MIN_PIXELS} and at most "
        f"{max_pixels} pixels (the image processor's `min_pixels` and `max_pixels`; train with "
        "the same)."
    )


def format_ref_box(label: str, box: Box) -> str:
    """Qwen-VL text of a named box, as BiRD's answers carry it."""
    x0, y0, x1, y1 = box
    return f"<ref>{label}</ref><box>({x0},{y0}),({x1},{y1})</box>"


@dataclass(frozen=True)
class BaselineModel:
    """What the rule-based baseline knows of the train split: label counts and mean boxes.

    ``mean_boxes`` is keyed by (modality, label) and ``global_boxes`` by label; ``label_counts``
    by modality, most frequent first (ties by name, so predictions are deterministic).
    """

    mean_boxes: Mapping[tuple[str, str], Box]
    global_boxes: Mapping[str, Box]
    label_counts: Mapping[str, tuple[tuple[str, int], ...]]
    global_counts: tuple[tuple[str, int], ...]


def _mean(boxes: list[Box]) -> Box:
    n = len(boxes)
    return tuple(round(sum(b[i] for b in boxes) / n) for i in range(4))  # type: ignore[return-value]


def _ranked(counter: Counter) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def fit_baseline(train_regions: Iterable[tuple[str, str, Box]]) -> BaselineModel:
    """The baseline of train regions given as (modality, label, bbox_1000)."""
    per: dict[tuple[str, str], list[Box]] = defaultdict(list)
    per_label: dict[str, list[Box]] = defaultdict(list)
    counts: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for modality, label, box in train_regions:
        per[(modality, label)].append(tuple(box))  # type: ignore[arg-type]
        per_label[label].append(tuple(box))  # type: ignore[arg-type]
        counts[modality][label] += 1
        overall[label] += 1
    return BaselineModel(
        mean_boxes={k: _mean(v) for k, v in per.items()},
        global_boxes={k: _mean(v) for k, v in per_label.items()},
        label_counts={m: _ranked(c) for m, c in counts.items()},
        global_counts=_ranked(overall),
    )


def _labels_of(model: BaselineModel, modality: str) -> tuple[tuple[str, int], ...]:
    return model.label_counts.get(modality) or model.global_counts


def _box_of(model: BaselineModel, modality: str, label: str) -> Box:
    box = model.mean_boxes.get((modality, label)) or model.global_boxes.get(label)
    return box if box is not None else (250, 250, 750, 750)  # a label never seen: the centre


MIA_LABELS = 3


def predict_baseline_answer(
    model: BaselineModel, task: str, modality: str, asked_label: str | None
) -> str:
    """The baseline's answer to one test turn: a floor any trained model should beat.

    VG: the asked label's mean train box (this modality's, else over all modalities); ROC: the
    modality's most frequent train label; RC: a template sentence naming that label; MIA: the
    modality's ``MIA_LABELS`` most frequent train labels with their mean boxes.

    Raises:
        ValueError: for an unknown task, or VG without the asked label.
    """
    ranked = _labels_of(model, modality)
    top = ranked[0][0] if ranked else "structure"
    if task == "VG":
        if asked_label is None:
            raise ValueError("a VG prediction needs the asked label")
        return format_ref_box(asked_label, _box_of(model, modality, asked_label))
    if task == "ROC":
        return f"The region shows the {top}."
    if task == "RC":
        return f"The region contains the {top}."
    if task == "MIA":
        parts = [
            f"the {format_ref_box(lab, _box_of(model, modality, lab))}"
            for lab, _ in ranked[:MIA_LABELS]
        ]
        return f"Visible structures: {'; '.join(parts)}." if parts else "No structure is visible."
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
