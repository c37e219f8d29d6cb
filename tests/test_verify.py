"""Reason codes of ``verify_qa``: which turns pass and which become reject rows, and why."""

from __future__ import annotations

import pytest

from medgrit.core.generation import QA, RegionFacts
from medgrit.core.text import format_box, format_ref
from medgrit.core.verify import TextRules, verify_qa

IMAGE = "3f2a9c01d4e5b6a7-a0042"


def region(row: int, label: str, label_id: int, bbox_1000, instance: int = 0) -> RegionFacts:
    return RegionFacts(
        region_id=f"{IMAGE}-r{row:03d}",
        label=label,
        label_id=label_id,
        instance=instance,
        bbox_1000=bbox_1000,
        area=400,
        position="center",
        size="small",
    )


LIVER = region(0, "liver", 1, (100, 200, 450, 600))
LEFT_KIDNEY = region(1, "left kidney", 2, (600, 500, 750, 700))
RIGHT_KIDNEY = region(2, "right kidney", 3, (250, 500, 400, 700))
REGIONS = {r.region_id: r for r in (LIVER, LEFT_KIDNEY, RIGHT_KIDNEY)}


def box(r: RegionFacts) -> str:
    return format_box(r.bbox_1000)


def qa(task: str, question: str, answer: str, *refs: RegionFacts) -> QA:
    return QA(task, question, answer, tuple(r.region_id for r in refs))


@pytest.mark.parametrize(
    "turn",
    [
        qa("VG", "Where is the liver?", f"{format_ref('liver')}{box(LIVER)}", LIVER),
        qa("ROC", f"What is the structure in {box(LIVER)}?", "It is the liver.", LIVER),
        qa(
            "ROC",
            f"What is in {box(LEFT_KIDNEY)}?",
            "The region shows the Left Kidney.",
            LEFT_KIDNEY,
        ),
        qa(
            "RC",
            f"Describe the region {box(LEFT_KIDNEY)}.",
            "This small region is the left kidney, on the patient's left side, "
            "in the middle right part of this axial CT image.",
            LEFT_KIDNEY,
        ),
        qa(
            "MIA",
            "Describe this medical image.",
            f"This is an axial CT image. Visible structures: the large <ref>liver</ref>{box(LIVER)}"
            f"; the small <ref>left kidney</ref>{box(LEFT_KIDNEY)}"
            f"; the small <ref>right kidney</ref>{box(RIGHT_KIDNEY)}.",
            LIVER,
            LEFT_KIDNEY,
            RIGHT_KIDNEY,
        ),
    ],
    ids=["VG", "ROC", "ROC-case", "RC-lateral", "MIA-both-kidneys"],
)
def test_correct_turns_pass(turn):
    assert verify_qa(turn, REGIONS) is None


def test_box_not_in_the_image_is_unknown_box():
    turn = qa("VG", "Where is the liver?", "<ref>liver</ref><box>(101,200),(450,600)</box>", LIVER)

    assert verify_qa(turn, REGIONS) == "unknown_box"


def test_invented_box_in_the_question_is_unknown_box():
    turn = qa("ROC", "What is in <box>(0,0),(10,10)</box>?", "It is the liver.", LIVER)

    assert verify_qa(turn, REGIONS) == "unknown_box"


def test_box_of_another_region_of_the_same_image_is_accepted():
    # Boxes are checked against the image, not the referenced regions only.
    turn = qa(
        "VG", "Where is the liver?", f"<ref>liver</ref>{box(LIVER)}{box(RIGHT_KIDNEY)}", LIVER
    )

    assert verify_qa(turn, REGIONS) is None


@pytest.mark.parametrize(
    "answer",
    [
        "<ref>liver</ref><box>(100, 200),(450, 600)</box>",
        "<ref>liver</ref><box>(100,200)</box>",
        "<ref>liver</ref><box>100,200,450,600</box>",
    ],
)
def test_malformed_box_is_malformed_box(answer):
    assert verify_qa(qa("VG", "Where is the liver?", answer, LIVER), REGIONS) == "malformed_box"


def test_answer_cut_off_inside_a_box_is_malformed_box():
    turn = qa("VG", "Where is the liver?", "<ref>liver</ref><box>(100,200),(450,", LIVER)

    assert verify_qa(turn, REGIONS) == "malformed_box"


def test_roc_answer_without_the_label_is_roc_label_missing():
    turn = qa("ROC", f"What is the structure in {box(LIVER)}?", "It is the spleen.", LIVER)

    assert verify_qa(turn, REGIONS) == "roc_label_missing"


def test_roc_answer_naming_only_the_base_of_a_lateral_label_is_roc_label_missing():
    turn = qa("ROC", f"What is in {box(LEFT_KIDNEY)}?", "It is a kidney.", LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "roc_label_missing"


def test_wrong_side_for_a_lateral_region_is_laterality_mismatch():
    turn = qa(
        "RC",
        f"Describe the region {box(LEFT_KIDNEY)}.",
        "This small region is the right kidney.",
        LEFT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) == "laterality_mismatch"


def test_wrong_side_in_the_question_is_laterality_mismatch():
    turn = qa(
        "VG", "Where is the right kidney?", f"<ref>left kidney</ref>{box(LEFT_KIDNEY)}", LEFT_KIDNEY
    )

    assert verify_qa(turn, REGIONS) == "laterality_mismatch"


def test_mia_naming_a_side_not_referenced_is_laterality_mismatch():
    turn = qa(
        "MIA",
        "Describe this medical image.",
        f"It shows the <ref>liver</ref>{box(LIVER)} "
        f"and the <ref>right kidney</ref>{box(LEFT_KIDNEY)}.",
        LIVER,
        LEFT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) == "laterality_mismatch"


def test_image_side_words_of_a_lateral_region_are_not_a_mismatch():
    # "right" as an image position word is not followed by the structure's name.
    turn = qa(
        "RC",
        f"Describe the region {box(LEFT_KIDNEY)}.",
        "The left kidney lies in the middle right of the image.",
        LEFT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) is None


def test_unknown_region_id_is_rejected():
    turn = QA("VG", "Where is the liver?", f"<ref>liver</ref>{box(LIVER)}", (f"{IMAGE}-r999",))

    assert verify_qa(turn, REGIONS) == "unknown_region_id"


def test_region_of_another_image_is_unknown_region_id():
    other = {r.region_id: r for r in [region(0, "liver", 1, (100, 200, 450, 600))]}
    turn = qa("VG", "Where is the liver?", f"<ref>liver</ref>{box(LIVER)}", LIVER, LEFT_KIDNEY)

    assert verify_qa(turn, other) == "unknown_region_id"


def test_turn_without_regions_is_no_region():
    turn = QA("MIA", "Describe this medical image.", "An axial CT image.", ())

    assert verify_qa(turn, REGIONS) == "no_region"


@pytest.mark.parametrize(("question", "answer"), [("", "It is the liver."), ("What?", "  \n")])
def test_empty_question_or_answer_is_empty_text(question, answer):
    assert verify_qa(qa("ROC", question, answer, LIVER), REGIONS) == "empty_text"


@pytest.mark.parametrize("task", ["REG", "vg", ""])
def test_unknown_task_is_rejected(task):
    turn = qa(task, "Where is the liver?", f"<ref>liver</ref>{box(LIVER)}", LIVER)

    assert verify_qa(turn, REGIONS) == "unknown_task"


def test_text_rules_bound_lengths_and_catch_copied_instructions() -> None:
    instructions = (
        "You write instruction data for a medical vision-language model that can refer to "
        "and ground image regions."
    )
    rules = TextRules.for_instructions(instructions)
    region = RegionFacts("r", "liver", 1, 0, (10, 10, 50, 50), 100, "center", "small")
    good = QA("ROC", "What is in <box>(10,10),(50,50)</box>?", "It is the liver.", ("r",))
    assert verify_qa(good, {"r": region}, rules) is None
    copied = QA(
        "ROC",
        good.question,
        "The liver. I write instruction data for a medical vision-language model.",
        ("r",),
    )
    assert verify_qa(copied, {"r": region}, rules) == "copied_instructions"
    long_answer = QA("ROC", good.question, "The liver " + "x" * 3000, ("r",))
    assert verify_qa(long_answer, {"r": region}, rules) == "answer_too_long"
    assert verify_qa(long_answer, {"r": region}) is None  # templates: no text rules
