"""The four box formats a fine-tuned model reads and writes, and their way back to Qwen-VL text.

Dataset text is written in each format from the regions' own boxes (``model_box_text``) and the
model's answer is read back into the 0-999 frame ``medgrit evaluate`` scores
(``qwen_vl_text_of``): exactly for the formats in that frame, within the resize's rounding for
those in pixels of the resized image.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from medgrit.core.exports import TextRegion, model_box_text, qwen2vl_text
from medgrit.core.metrics import clean_response, predicted_boxes
from medgrit.core.regions import to_bbox_1000
from medgrit.core.vlm import (
    BOX_FORMATS,
    BOX_FRAME,
    RESIZED_PIXEL_FRAME,
    THOUSAND_FRAME,
    box_1000,
    box_format_of_model,
    qwen_vl_text_of,
    scale_box,
    smart_resize,
    written_box,
)

LABELS = (
    "liver",
    'the "left" kidney',
    "lobe, upper",
    "肝臓 (ライト)",
    "Ångström's {bracket} [mass]",
    "back\\slash",
)
QWEN_VL_BOX = re.compile(r"<box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")


def _text_of(box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return f"<box>({x0},{y0}),({x1},{y1})</box>"


def _random_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
    y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
    return (x0, y0, x1, y1)


def test_each_model_family_has_its_native_box_format() -> None:
    assert box_format_of_model("qwen2_vl") == "qwen2-tokens"
    assert box_format_of_model("qwen2_5_vl") == "qwen2.5-absolute"
    for other in ("qwen3_vl", "llava", "Qwen2_5_VL", ""):
        with pytest.raises(ValueError, match="no box format"):
            box_format_of_model(other)
    assert set(BOX_FORMATS) == set(BOX_FRAME)
    assert [f for f in BOX_FORMATS if BOX_FRAME[f] == THOUSAND_FRAME] == [
        "qwen-vl",
        "qwen2-tokens",
    ]
    assert [f for f in BOX_FORMATS if BOX_FRAME[f] == RESIZED_PIXEL_FRAME] == [
        "qwen2.5-absolute",
        "qwen2.5-json",
    ]


def test_written_boxes_are_in_each_formats_frame() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(1, 3000, 2))
        resized = (int(rng.integers(28, 2000)), int(rng.integers(28, 2000)))
        box = _random_box(rng, w, h)
        # the dataset's bbox_1000, so a written box is found by the value the text carries
        thousand = tuple(to_bbox_1000(np.array(box), w, h).tolist())
        assert box_1000(box, (w, h)) == thousand
        assert written_box("qwen-vl", box, (w, h), resized) == thousand
        assert written_box("qwen2-tokens", box, (w, h), resized) == thousand
        pixels = scale_box(box, (w, h), resized)
        assert written_box("qwen2.5-absolute", box, (w, h), resized) == pixels
        assert written_box("qwen2.5-json", box, (w, h), resized) == pixels
    with pytest.raises(ValueError, match="unknown box format"):
        written_box("qwen2.5-vl", (0, 0, 1, 1), (2, 2), (28, 28))


def _sample(rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int], list, list]:
    """An image size, its resized size (width, height) and its regions as (label, pixel box)."""
    w, h = (int(v) for v in rng.integers(20, 2500, 2))
    rh, rw = smart_resize(h, w, 28, 56 * 56, 1280 * 28 * 28)
    labels = [str(v) for v in rng.choice(LABELS, size=3, replace=False)]
    return (w, h), (rw, rh), labels, [_random_box(rng, w, h) for _ in labels]


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_dataset_text_comes_back_from_every_format(box_format: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        size, resized, labels, boxes = _sample(rng)
        thousand = [box_1000(b, size) for b in boxes]
        regions = [
            TextRegion(label, t, written_box(box_format, b, size, resized))
            for label, t, b in zip(labels, thousand, boxes, strict=True)
        ]
        answer = (
            f"The <ref>{labels[0]}</ref>{_text_of(thousand[0])} lies beside "
            f"<ref>{labels[1]}</ref>{_text_of(thousand[1])}, over {_text_of(thousand[2])}."
        )
        written = model_box_text(answer, regions, box_format)
        back = qwen_vl_text_of(written, box_format, resized)
        if BOX_FRAME[box_format] == THOUSAND_FRAME:
            assert back == answer
            continue
        # the same words and names; each box within the rounding of the resize
        assert QWEN_VL_BOX.sub("<box/>", back) == QWEN_VL_BOX.sub("<box/>", answer)
        rw, rh = resized
        tolerance = (500 / rw + 1, 500 / rh + 1) * 2
        found = [tuple(int(v) for v in m) for m in QWEN_VL_BOX.findall(back)]
        assert len(found) == 3
        for got, want in zip(found, thousand, strict=True):
            assert all(abs(a - b) <= t for a, b, t in zip(got, want, tolerance, strict=True))


def test_tokens_formats_write_qwen2_box_tokens() -> None:
    regions = [TextRegion("liver", (200, 150, 550, 450), (112, 84, 308, 252))]
    text = "Is <ref>liver</ref> in <box>(200,150),(550,450)</box>?"
    for box_format in ("qwen2-tokens", "qwen2.5-absolute"):
        assert model_box_text(text, regions, box_format) == qwen2vl_text(text, regions)
    assert model_box_text(text, regions, "qwen-vl") == text


def test_json_format_writes_qwen25_grounding_objects() -> None:
    regions = [
        TextRegion('the "left" kidney', (200, 150, 550, 450), (112, 84, 308, 252)),
        TextRegion("肝臓", (0, 0, 999, 999), (0, 0, 448, 336)),
    ]
    question = "Where is <ref>肝臓</ref>? What is in <box>(200,150),(550,450)</box>?"
    assert model_box_text(question, regions, "qwen2.5-json") == (
        'Where is 肝臓? What is in {"bbox_2d": [112, 84, 308, 252]}?'
    )
    answer = '<ref>the "left" kidney</ref><box>(200,150),(550,450)</box>'
    assert model_box_text(answer, regions, "qwen2.5-json") == (
        '{"bbox_2d": [112, 84, 308, 252], "label": "the \\"left\\" kidney"}'
    )
    with pytest.raises(ValueError, match="no box of the turn's regions"):
        model_box_text("<ref>spleen</ref><box>(200,150),(550,450)</box>", regions, "qwen2.5-json")
    with pytest.raises(ValueError, match="no box of the turn's regions"):
        model_box_text("<box>(1,2),(3,4)</box>", regions, "qwen2.5-json")


def test_qwen25_grounding_answers_are_read_back_and_scored() -> None:
    resized = (448, 336)
    fenced = (
        "```json\n[\n"
        '\t{"bbox_2d": [112, 84, 308, 252], "label": "liver"},\n'
        '\t{"bbox_2d": [10.6, 20.4, 30, 40.7], "label": "spleen, \\"upper\\" pole"}\n'
        "]\n```"
    )
    expected = (
        "<ref>liver</ref><box>(250,250),(687,750)</box>, "
        '<ref>spleen, "upper" pole</ref><box>(24,59),(66,122)</box>'
    )
    assert qwen_vl_text_of(fenced, "qwen2.5-json", resized) == expected
    # one line again, so the scorer's cleaning keeps both boxes
    scored = predicted_boxes(clean_response(qwen_vl_text_of(fenced, "qwen2.5-json", resized)))
    assert scored.tolist() == [[250, 250, 687, 750], [24, 59, 66, 122]]
    listed = '[{"bbox_2d":[112,84,308,252],"label":"liver"}, {"bbox_2d": [0, 0, 448, 336]}]'
    assert qwen_vl_text_of(listed, "qwen2.5-json", resized) == (
        "<ref>liver</ref><box>(250,250),(687,750)</box>, <box>(0,0),(999,999)</box>"
    )
    inline = 'The liver is {"bbox_2d" :[ 112 ,84,308,252 ], "label": "liver"}.'
    assert qwen_vl_text_of(inline, "qwen2.5-json", resized) == (
        "The liver is <ref>liver</ref><box>(250,250),(687,750)</box>."
    )
    # a box past the image is clamped into the frame
    outside = '{"bbox_2d": [-5, -1e30, 900, 12345678901234567890123], "label": "x"}'
    assert qwen_vl_text_of(outside, "qwen2.5-json", resized) == (
        "<ref>x</ref><box>(0,0),(999,999)</box>"
    )


def test_qwen2_tokens_are_read_back_clamped_to_the_thousand_frame() -> None:
    raw = (
        "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(0,1000),(-3, 500)<|box_end|>"
        " and <|box_start|>(12,13),(999,998)<|box_end|>"
    )
    assert qwen_vl_text_of(raw, "qwen2-tokens", (28, 28)) == (
        "<ref>liver</ref><box>(0,999),(0,500)</box> and <box>(12,13),(999,998)</box>"
    )
    assert qwen_vl_text_of(raw, "qwen2.5-absolute", (1000, 2000)) == (
        "<ref>liver</ref><box>(0,500),(0,250)</box> and <box>(12,6),(999,499)</box>"
    )


GARBAGE = (
    "",
    "No structure is visible.",
    "{",
    "[{]",
    '{"bbox_2d": [1, 2, 3]}',
    '{"bbox_2d": [1, 2, 3, "4"], "label": "liver"}',
    '{"bbox_2d": [true, 2, 3, 4]}',
    '{"bbox_2d": [NaN, 1, 2, 3]}',
    '{"bbox_2d": [1e999, 1, 2, 3]}',
    '{"bbox_2d": [' + "9" * 5000 + ", 1, 2, 3]}",
    '{"label": "liver", "bbox": [1, 2, 3, 4]}',
    "```json\n[1, 2, 3, 4]\n```",
    "```json\n[\n" + '{"a": ' * 1000,
    "[" * 5000 + "{" * 5000,
    "<|box_start|>(1,2),(3<|box_end|>",
    "<|box_start|>(" + "9" * 40 + ",1),(2,3)<|box_end|>",
    "<box>(1,2),(3,4)</box> \ue000 0 \ue001",
)


@pytest.mark.parametrize("box_format", BOX_FORMATS)
def test_what_is_no_box_comes_back_unchanged(box_format: str) -> None:
    for text in GARBAGE:
        assert qwen_vl_text_of(text, box_format, (448, 336)) == text, text[:60]


def test_a_private_mark_in_the_answer_does_not_confuse_the_boxes() -> None:
    raw = '\ue0000\ue001 [{"bbox_2d": [0, 0, 448, 336]}]'
    assert qwen_vl_text_of(raw, "qwen2.5-json", (448, 336)) == (
        "\ue0000\ue001 [<box>(0,0),(999,999)</box>]"
    )


def test_unknown_box_formats_are_refused() -> None:
    regions = [TextRegion("liver", (1, 2, 3, 4), (1, 2, 3, 4))]
    with pytest.raises(ValueError, match="unknown box format"):
        qwen_vl_text_of("text", "qwen2.5-vl", (28, 28))
    with pytest.raises(ValueError, match="unknown box format"):
        model_box_text("<box>(1,2),(3,4)</box>", regions, "pixels")
