"""Words of the generated text: label names, patient side, image position, size and box syntax."""

from __future__ import annotations

import numpy as np
import pytest

from medgrit.core.text import (
    format_box,
    format_ref,
    laterality_of,
    parse_boxes,
    position_word,
    readable_label_name,
    size_word,
    strip_laterality,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("kidney_left", "left kidney"),
        ("kidney_right", "right kidney"),
        ("lung_right", "right lung"),
        ("adrenal_gland_left", "left adrenal gland"),
        ("Frontal_Sup_L", "left frontal superior"),
        ("Frontal_Inf_Oper_R", "right frontal inferior opercular"),
        ("R_hippocampus", "right hippocampus"),
        ("Left-Cerebral-White-Matter", "left cerebral white matter"),
        ("leftKidney", "left kidney"),
        ("rightLung", "right lung"),
        ("inferiorVenaCava", "inferior vena cava"),
        ("Caudate_Rt", "right caudate"),
        ("lung_upper_lobe_left", "left lung upper lobe"),
        ("liver", "liver"),
        ("spleen", "spleen"),
        ("gallbladder", "gallbladder"),
        ("  pancreas  ", "pancreas"),
        ("GM_left", "left grey matter"),
        ("Cingulum_Post_R", "right cingulum posterior"),
        # A name's first word is its own, and a hyphen in a name of words joins its word.
        ("post-op cavity", "post-op cavity"),
        ("Post_contrast_enhancement", "post contrast enhancement"),
        ("Mid-brain", "mid brain"),
        ("Right-Left shunt", "right-left shunt"),
        # TotalSegmentator's numbered bones, and names written in capitals.
        ("vertebrae_L1", "L1 vertebra"),
        ("vertebrae_T12", "T12 vertebra"),
        ("vertebrae_C1", "C1 vertebra"),
        ("rib_left_3", "left 3rd rib"),
        ("rib_right_12", "right 12th rib"),
        ("rib_left_1", "left 1st rib"),
        ("rib_right_2", "right 2nd rib"),
        ("Corticospinal_tract_L", "left corticospinal tract"),
        ("GTVp", "GTVp"),
        ("GTV", "GTV"),
        ("IVC_filter", "IVC filter"),
        ("LIVER", "liver"),
        ("SPINAL_CORD", "spinal cord"),
        ("EYE_L", "left eye"),
        ("L_KIDNEY", "left kidney"),
        ("CTV_HIGH", "CTV high"),
    ],
)
def test_readable_label_name(raw, expected):
    assert readable_label_name(raw) == expected


def test_a_lone_side_word_is_not_treated_as_laterality():
    assert readable_label_name("left") == "left"
    assert laterality_of(readable_label_name("left")) is None


def test_side_in_the_middle_of_a_name_is_not_moved():
    assert readable_label_name("heart_left_ventricle") == "heart left ventricle"


@pytest.mark.parametrize(
    ("name", "side", "base"),
    [
        ("left kidney", "left", "kidney"),
        ("right frontal superior", "right", "frontal superior"),
        ("liver", None, "liver"),
        ("left", None, "left"),
        ("leftover tissue", None, "leftover tissue"),
        ("inferior vena cava", None, "inferior vena cava"),
    ],
)
def test_laterality_of_and_strip_laterality(name, side, base):
    assert laterality_of(name) == side
    assert strip_laterality(name) == base


def test_laterality_round_trips_through_readable_name():
    name = readable_label_name("kidney_left")

    assert laterality_of(name) == "left"
    assert f"{laterality_of(name)} {strip_laterality(name)}" == name


# A 90 x 90 image: each 30 px cell of the 3x3 grid, with a 10 px box in its middle.
@pytest.mark.parametrize(
    ("row", "col", "word"),
    [
        (0, 0, "upper left"),
        (0, 1, "upper center"),
        (0, 2, "upper right"),
        (1, 0, "middle left"),
        (1, 1, "center"),
        (1, 2, "middle right"),
        (2, 0, "lower left"),
        (2, 1, "lower center"),
        (2, 2, "lower right"),
    ],
)
def test_position_word_on_the_3x3_grid(row, col, word):
    x0, y0 = 30 * col + 10, 30 * row + 10

    assert position_word((x0, y0, x0 + 10, y0 + 10), width=90, height=90) == word


def test_position_word_uses_the_box_centre_not_its_corner():
    # Starts in the left third but its centre (x = 45) lies in the middle third.
    assert position_word((0, 40, 90, 50), width=90, height=90) == "center"


def test_position_word_columns_follow_width_and_rows_follow_height():
    # Wide image: x = 150 of 300 is the centre column; y = 10 of 100 is the upper row.
    assert position_word((140, 5, 160, 15), width=300, height=100) == "upper center"


def test_position_word_for_full_image_box_is_center():
    assert position_word((0, 0, 64, 48), width=64, height=48) == "center"


def test_position_word_at_the_far_edge_stays_on_the_grid():
    assert position_word((89, 89, 90, 90), width=90, height=90) == "lower right"


@pytest.mark.parametrize(
    ("area", "word"),
    [
        (1, "tiny"),
        (49, "tiny"),  # 0.49 % of 100 x 100
        (50, "small"),  # 0.5 %
        (199, "small"),
        (200, "medium"),  # 2 %
        (999, "medium"),
        (1_000, "large"),  # 10 %
        (10_000, "large"),
    ],
)
def test_size_word_thresholds(area, word):
    assert size_word(area, width=100, height=100) == word


def test_size_word_is_relative_to_image_size():
    assert size_word(400, width=100, height=100) == "medium"
    assert size_word(400, width=1000, height=1000) == "tiny"


def test_format_box_and_ref_use_qwen_vl_syntax():
    assert format_box((12, 340, 567, 999)) == "<box>(12,340),(567,999)</box>"
    assert format_ref("left kidney") == "<ref>left kidney</ref>"


def test_format_box_writes_numpy_integers_as_plain_numbers():
    assert format_box(tuple(np.array([1, 2, 3, 4], dtype=np.int64))) == "<box>(1,2),(3,4)</box>"


def test_parse_boxes_reads_back_formatted_boxes_in_order():
    text = f"The <ref>liver</ref>{format_box((1, 2, 3, 4))} and {format_box((50, 60, 700, 999))}."

    assert parse_boxes(text) == ([(1, 2, 3, 4), (50, 60, 700, 999)], 0)


def test_parse_boxes_on_text_without_boxes():
    assert parse_boxes("It is the spleen.") == ([], 0)


@pytest.mark.parametrize(
    ("text", "n_boxes", "n_malformed"),
    [
        ("<box>(1,2),(3,4)</box><box>(1,2)</box>", 1, 1),
        ("<box>(1, 2),(3, 4)</box>", 0, 1),  # spaces are not Qwen-VL syntax
        ("<box>1,2,3,4</box>", 0, 1),
        ("<box>(a,b),(c,d)</box>", 0, 1),
        ("<box></box> and <box>(5,6),(7,8)</box>", 1, 1),
        ("<box>(1,2),\n(3,4)</box>", 0, 1),
    ],
)
def test_parse_boxes_counts_malformed_tags(text, n_boxes, n_malformed):
    boxes, malformed = parse_boxes(text)

    assert len(boxes) == n_boxes
    assert malformed == n_malformed


def test_parse_boxes_counts_an_unclosed_box_tag_as_malformed():
    assert parse_boxes("The <ref>liver</ref><box>(100,200),(300,") == ([], 1)
