"""Reason codes of ``verify_qa``: which turns pass and which become reject rows, and why."""

from __future__ import annotations

import pytest

from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.text import format_box, format_ref
from medgrit.core.verify import Failure, ImageTruth, TextRules, check_turn, verify_qa

IMAGE = "3f2a9c01d4e5b6a7-a0042"


def region(
    row: int,
    label: str,
    label_id: int,
    bbox_1000,
    instance: int = 0,
    position: str = "center",
    size: str = "small",
) -> RegionFacts:
    return RegionFacts(
        region_id=f"{IMAGE}-r{row:03d}",
        label=label,
        label_id=label_id,
        instance=instance,
        bbox_1000=bbox_1000,
        area=400,
        position=position,
        size=size,
    )


LIVER = region(0, "liver", 1, (100, 200, 450, 600), position="middle left", size="large")
LEFT_KIDNEY = region(1, "left kidney", 2, (600, 500, 750, 700), position="middle right")
RIGHT_KIDNEY = region(2, "right kidney", 3, (250, 500, 400, 700), position="middle left")
REGIONS = {r.region_id: r for r in (LIVER, LEFT_KIDNEY, RIGHT_KIDNEY)}
CT_AXIAL = ImageFacts(IMAGE, "ct", "axial", 512, 512)


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


def test_box_of_another_region_after_a_ref_is_ref_box_mismatch():
    # Each box after <ref>X</ref> must be a box of X, not of any region of the image.
    turn = qa(
        "VG", "Where is the liver?", f"<ref>liver</ref>{box(LIVER)}{box(RIGHT_KIDNEY)}", LIVER
    )

    assert verify_qa(turn, REGIONS) == "ref_box_mismatch"


def test_box_after_a_plain_name_is_bound_to_that_name():
    answer = f"The liver is at {box(LEFT_KIDNEY)}."

    assert verify_qa(qa("VG", "Where is the liver?", answer, LIVER), REGIONS) == "ref_box_mismatch"


def test_boxes_of_each_instance_are_the_boxes_of_their_label():
    a = region(10, "lesion", 7, (100, 100, 200, 200))
    b = region(11, "lesion", 7, (400, 400, 500, 500), instance=1)
    c = region(12, "lesion", 7, (100, 100, 200, 200), instance=2)
    merged = region(13, "lesion", 7, (100, 100, 500, 500))
    regions = {r.region_id: r for r in (a, b, c, merged)}
    turn = qa(
        "VG", "Where is the lesion?", f"The <ref>lesion</ref> is here: {box(b)}{box(c)}", b, c
    )

    assert verify_qa(turn, regions) is None


def test_roc_answer_naming_another_label_of_the_image_is_roc_label_missing():
    turn = qa("ROC", f"What is the structure in {box(LIVER)}?", "It is the left kidney.", LIVER)

    assert verify_qa(turn, REGIONS) == "roc_label_missing"


def test_roc_answer_naming_a_structure_the_image_lacks_is_invented_structure():
    turn = qa("ROC", f"What is the structure in {box(LIVER)}?", "It is the spleen.", LIVER)

    assert verify_qa(turn, REGIONS) == "invented_structure"


@pytest.mark.parametrize("word", ["tumour", "tumor", "nodules", "a small cyst", "haemorrhage"])
def test_a_finding_the_image_has_no_region_of_is_invented_structure(word):
    answer = f"This small region is the left kidney, with {word} nearby."
    turn = qa("RC", f"Describe {box(LEFT_KIDNEY)}.", answer, LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "invented_structure"


def test_a_finding_word_names_a_region_whose_label_holds_it():
    tumour = region(20, "liver tumour", 9, (150, 250, 250, 350), position="middle left")
    regions = {LIVER.region_id: LIVER, tumour.region_id: tumour}
    turn = qa(
        "MIA", "Describe this image.", f"A tumor {box(tumour)} lies in the liver.", LIVER, tumour
    )

    assert verify_qa(turn, regions) is None
    wrong = qa(
        "MIA", "Describe this image.", f"A cyst {box(tumour)} lies in the liver.", LIVER, tumour
    )
    assert verify_qa(wrong, regions) == "invented_structure"


def test_ref_naming_nothing_of_the_image_is_invented_structure():
    turn = qa("VG", "Where is the bright area?", f"<ref>bright area</ref>{box(LIVER)}", LIVER)

    assert verify_qa(turn, REGIONS) == "invented_structure"


def test_a_label_of_the_build_the_image_lacks_is_invented_structure():
    answer = f"It shows the <ref>liver</ref>{box(LIVER)} and the falciform crest."
    turn = qa("MIA", "Describe this image.", answer, LIVER)

    assert verify_qa(turn, REGIONS) is None  # not a structure name of this build
    assert verify_qa(turn, REGIONS, vocabulary=["falciform crest"]) == "invented_structure"


def test_roc_answer_naming_only_the_base_of_a_lateral_label_is_roc_label_missing():
    turn = qa("ROC", f"What is in {box(LEFT_KIDNEY)}?", "It is a kidney.", LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "roc_label_missing"


def test_roc_answer_naming_the_label_and_another_structure_is_other_structure_named():
    answer = "It is the liver, near the right kidney."
    turn = qa("ROC", f"What is in {box(LIVER)}?", answer, LIVER)

    assert verify_qa(turn, REGIONS) == "other_structure_named"


def test_rc_answer_naming_another_structure_is_other_structure_named():
    answer = "The small left kidney, near the liver."
    turn = qa("RC", f"Describe {box(LEFT_KIDNEY)}.", answer, LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "other_structure_named"


def test_rc_answer_may_name_another_structure_in_a_true_relation():
    below = qa(
        "RC",
        f"Describe {box(LEFT_KIDNEY)}.",
        "The small left kidney, below the liver.",
        LEFT_KIDNEY,
    )
    above = qa(
        "RC",
        f"Describe {box(LEFT_KIDNEY)}.",
        "The small left kidney, above the liver.",
        LEFT_KIDNEY,
    )

    assert verify_qa(below, REGIONS) is None
    assert verify_qa(above, REGIONS) == "wrong_relation"


def test_rc_answer_without_the_region_is_rc_label_missing():
    turn = qa("RC", f"Describe {box(LEFT_KIDNEY)}.", "A small structure.", LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "rc_label_missing"


def test_rc_answer_may_give_the_region_by_its_box():
    answer = f"{box(LEFT_KIDNEY)} is small and lies in the middle right of the image."
    turn = qa("RC", f"Describe {box(LEFT_KIDNEY)}.", answer, LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) is None


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("The left kidney: a large structure.", "wrong_size"),
        ("The left kidney lies in the upper right of the image.", "wrong_position"),
        ("The left kidney lies in the lower part of the image.", "wrong_position"),
        ("The left kidney lies in the center of the image.", "wrong_position"),
        ("The left kidney lies on the left side of the image.", "wrong_position"),
        ("The left kidney, on the patient's right side.", "wrong_side"),
        ("The left kidney is on the left.", "ambiguous_side"),
        ("The left kidney in this coronal CT slice.", "wrong_plane"),
        ("The left kidney in this axial MRI slice.", "wrong_modality"),
    ],
)
def test_rc_attribute_words_must_be_the_regions_own(answer, reason):
    turn = qa("RC", f"Describe {box(LEFT_KIDNEY)}.", answer, LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS, image=CT_AXIAL) == reason


def test_a_side_claim_about_an_unsided_region_is_wrong_side():
    answer = "The liver, on the patient's right side."
    turn = qa("RC", f"Describe {box(LIVER)}.", answer, LIVER)

    assert verify_qa(turn, REGIONS) == "wrong_side"


def test_mia_attribute_words_belong_to_the_structure_they_stand_by():
    good = (
        f"The <ref>liver</ref>{box(LIVER)} (large, middle left), "
        f"the small <ref>left kidney</ref>{box(LEFT_KIDNEY)} (middle right)."
    )
    turn = qa("MIA", "Describe this image.", good, LIVER, LEFT_KIDNEY)
    assert verify_qa(turn, REGIONS) is None
    swapped = good.replace("(large, middle left)", "(small, middle left)")
    assert verify_qa(qa("MIA", "Describe.", swapped, LIVER, LEFT_KIDNEY), REGIONS) == "wrong_size"


def test_a_2d_image_has_no_plane_words():
    xray = ImageFacts(IMAGE, "xray", "2d", 512, 512)
    turn = qa("ROC", f"What is in {box(LIVER)} in this axial X-ray?", "It is the liver.", LIVER)

    assert verify_qa(turn, REGIONS, image=xray) == "wrong_plane"
    plain = qa("ROC", f"What is in {box(LIVER)} in this X-ray?", "It is the liver.", LIVER)
    assert verify_qa(plain, REGIONS, image=xray) is None


def test_wrong_side_for_a_lateral_region_is_laterality_mismatch():
    turn = qa(
        "RC",
        f"Describe the region {box(LEFT_KIDNEY)}.",
        "This small region is the right kidney.",
        LEFT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) == "laterality_mismatch"


def test_a_side_the_image_does_not_have_is_laterality_mismatch():
    regions = {LEFT_KIDNEY.region_id: LEFT_KIDNEY}
    turn = qa(
        "VG", "Where is the right kidney?", f"<ref>left kidney</ref>{box(LEFT_KIDNEY)}", LEFT_KIDNEY
    )

    assert verify_qa(turn, regions) == "laterality_mismatch"


def test_vg_answer_about_another_structure_than_asked_is_vg_wrong_structure():
    turn = qa(
        "VG", "Where is the right kidney?", f"<ref>left kidney</ref>{box(LEFT_KIDNEY)}", LEFT_KIDNEY
    )

    assert verify_qa(turn, REGIONS) == "vg_wrong_structure"


def test_vg_answer_without_a_box_is_vg_box_missing():
    turn = qa("VG", "Where is the liver?", "The <ref>liver</ref> is on the image.", LIVER)

    assert verify_qa(turn, REGIONS) == "vg_box_missing"


def test_mia_pairing_a_name_with_another_regions_box_is_ref_box_mismatch():
    turn = qa(
        "MIA",
        "Describe this medical image.",
        f"It shows the <ref>liver</ref>{box(LIVER)} "
        f"and the <ref>right kidney</ref>{box(LEFT_KIDNEY)}.",
        LIVER,
        LEFT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) == "ref_box_mismatch"


def test_image_side_words_of_a_lateral_region_are_not_a_mismatch():
    # "right" as an image position word is not followed by the structure's name.
    turn = qa(
        "RC",
        f"Describe the region {box(LEFT_KIDNEY)}.",
        "The left kidney lies in the middle right of the image.",
        LEFT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) is None


def test_question_box_of_another_region_is_question_box_mismatch():
    turn = qa("ROC", f"What is in {box(LEFT_KIDNEY)}?", "It is the liver.", LIVER)

    assert verify_qa(turn, REGIONS) == "question_box_mismatch"


def test_roc_question_without_a_box_is_question_box_missing():
    turn = qa("ROC", "What is the large structure?", "It is the liver.", LIVER)

    assert verify_qa(turn, REGIONS) == "question_box_missing"


@pytest.mark.parametrize(
    ("answer", "refs"),
    [
        # a named structure that region_ids leave out
        (f"It shows the <ref>liver</ref>{box(LIVER)} and the left kidney.", (LIVER,)),
        # a region id the text never refers to
        (f"It shows the <ref>liver</ref>{box(LIVER)}.", (LIVER, RIGHT_KIDNEY)),
    ],
)
def test_region_ids_must_be_exactly_what_the_text_refers_to(answer, refs):
    assert verify_qa(qa("MIA", "Describe this image.", answer, *refs), REGIONS) == (
        "region_ids_mismatch"
    )


def test_british_and_american_spellings_and_plurals_name_the_same_structure():
    lungs = region(30, "lungs", 4, (100, 100, 900, 700), position="center", size="large")
    tumour = region(31, "tumour", 5, (200, 200, 300, 300), position="upper left", size="tiny")
    regions = {r.region_id: r for r in (lungs, tumour)}
    answer = f"The <ref>lung</ref>{box(lungs)} is large; the tumor {box(tumour)} is tiny."

    assert verify_qa(qa("MIA", "Describe.", answer, lungs, tumour), regions) is None


def test_failure_names_the_words_that_broke_the_rule():
    truth = ImageTruth(REGIONS.values(), CT_AXIAL)
    turn = qa(
        "RC", f"Describe {box(LEFT_KIDNEY)}.", "The left kidney, a huge structure.", LEFT_KIDNEY
    )

    assert check_turn(turn, truth) == Failure("wrong_size", "huge")


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


def test_roc_answer_about_another_region_listed_in_region_ids_is_region_ids_mismatch():
    # The asked region is the question's box, whatever else region_ids list.
    turn = qa(
        "ROC",
        f"What is in {box(LEFT_KIDNEY)}?",
        "It is the right kidney.",
        LEFT_KIDNEY,
        RIGHT_KIDNEY,
    )

    assert verify_qa(turn, REGIONS) == "region_ids_mismatch"


@pytest.mark.parametrize(
    "answer",
    [
        f"The <ref>liver</ref> is here: {box(LEFT_KIDNEY)}",  # a colon does not end the clause
        f"{box(RIGHT_KIDNEY)} shows the liver.",  # a box before its name is the name's
    ],
)
def test_a_box_binds_to_the_name_of_its_clause_before_or_after_it(answer):
    turn = qa("MIA", "Describe this image.", answer, LIVER, LEFT_KIDNEY, RIGHT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "ref_box_mismatch"


def test_an_attribute_in_a_clause_naming_nothing_describes_the_name_before():
    answer = (
        f"It shows the <ref>liver</ref>{box(LIVER)} and the <ref>left kidney</ref>"
        f"{box(LEFT_KIDNEY)}. The liver is large. It lies in the middle right."
    )
    turn = qa("MIA", "Describe this image.", answer, LIVER, LEFT_KIDNEY)

    assert verify_qa(turn, REGIONS) == "wrong_position"
    honest = answer.replace("middle right", "middle left")
    assert verify_qa(qa("MIA", "Describe.", honest, LIVER, LEFT_KIDNEY), REGIONS) is None


@pytest.mark.parametrize("words", ["a small mass", "a neoplasm", "a tumour"])
def test_finding_words_name_the_regions_of_their_kin(words):
    tumour = region(40, "liver tumor", 9, (150, 250, 250, 350), position="middle left")
    regions = {LIVER.region_id: LIVER, tumour.region_id: tumour}
    answer = f"In the liver, {words} is at {box(tumour)}."

    assert verify_qa(qa("MIA", "Describe.", answer, LIVER, tumour), regions) is None
    # Another finding, or a word for any finding said to be one more: not this tumour.
    for other in ("a cyst", "another lesion", "a second tumour"):
        text = answer.replace(words, other)
        assert (
            verify_qa(qa("MIA", "Describe.", text, LIVER, tumour), regions) == "invented_structure"
        )
    lesion = answer.replace(words, "a lesion")  # a word for any finding names this one
    assert verify_qa(qa("MIA", "Describe.", lesion, LIVER, tumour), regions) is None


def test_words_of_the_text_and_the_image_kind_are_never_structure_names():
    fundus = ImageFacts(IMAGE, "fundus", "2d", 512, 512)
    turn = qa(
        "ROC",
        f"What is this region {box(LIVER)} in this fundus photograph?",
        "It is the liver.",
        LIVER,
    )

    assert verify_qa(turn, REGIONS, image=fundus, vocabulary=["region", "fundus", "center"]) is None


@pytest.mark.parametrize(
    "answer",
    [
        "<ref>liver</ref><box>(" + "9" * 5000 + ",200),(450,600)</box>",
        "<ref>liver</ref><box>(\uff1100,200),(450,600)</box>",
    ],
    ids=["huge-number", "full-width-digits"],
)
def test_box_numbers_that_are_not_short_ascii_integers_are_malformed_box(answer):
    assert verify_qa(qa("VG", "Where is the liver?", answer, LIVER), REGIONS) == "malformed_box"


def test_an_empty_ref_is_malformed_ref():
    turn = qa("VG", "Where is the liver?", f"<ref></ref>{box(LIVER)}", LIVER)

    assert verify_qa(turn, REGIONS) == "malformed_ref"


def test_anatomy_that_holds_a_plane_word_is_a_structure_not_a_plane():
    colon = region(41, "transverse colon", 12, (300, 100, 700, 250), position="upper center")
    regions = {colon.region_id: colon}
    turn = qa(
        "VG", "Where is the transverse colon?", f"<ref>transverse colon</ref>{box(colon)}", colon
    )

    assert verify_qa(turn, regions, image=ImageFacts(IMAGE, "ct", "coronal", 512, 512)) is None
