"""Golden renders of the Jinja templates in ``prompts/`` and the template generator's turns."""

from __future__ import annotations

from importlib import resources

import jinja2
import numpy as np
import pytest

from medgrit.adapters.text.templates import (
    TEMPLATE_FILES,
    TemplateGenerator,
    make_environment,
    render_phrasings,
    view_variables,
    with_article,
)
from medgrit.core.generation import ImageFacts, RegionFacts
from medgrit.core.regions import extract_regions, to_bbox_1000
from medgrit.core.text import format_box, position_word, size_word
from medgrit.core.verify import verify_qa

LIVER_BOX = "<box>(100,200),(450,600)</box>"
KIDNEY_BOX = "<box>(600,500),(750,700)</box>"
SECOND_BOX = "<box>(500,200),(600,400)</box>"


@pytest.fixture(scope="module")
def env() -> jinja2.Environment:
    return make_environment()


# --- golden renders -------------------------------------------------------------------------------


def test_vg_golden_render(env):
    questions, answers = render_phrasings(
        env, "VG", label="liver", boxes=[LIVER_BOX, SECOND_BOX], **view_variables("ct", "axial")
    )

    assert len(questions) == 5
    assert questions[0] == "Where is the liver in this image?"
    assert questions[3] == "Can you find the liver in this axial CT slice?"
    assert answers == [
        "<ref>liver</ref><box>(100,200),(450,600)</box><box>(500,200),(600,400)</box>",
        "The <ref>liver</ref> is here: "
        "<box>(100,200),(450,600)</box><box>(500,200),(600,400)</box>.",
        "It is located at <ref>liver</ref>"
        "<box>(100,200),(450,600)</box><box>(500,200),(600,400)</box>.",
    ]


def test_roc_golden_render(env):
    questions, answers = render_phrasings(
        env, "ROC", label="spleen", box=LIVER_BOX, **view_variables("mr", "coronal")
    )

    assert questions == [
        "What is the structure in <box>(100,200),(450,600)</box>?",
        "Which organ or tissue does the region <box>(100,200),(450,600)</box> show?",
        "Identify the object inside <box>(100,200),(450,600)</box> in this MRI image.",
        "What is shown at <box>(100,200),(450,600)</box> in this coronal MRI slice?",
    ]
    assert answers == [
        "<ref>spleen</ref><box>(100,200),(450,600)</box>",
        "It is the spleen.",
        "The region shows the spleen.",
    ]


def test_rc_golden_render_with_patient_side(env):
    questions, answers = render_phrasings(
        env,
        "RC",
        label="left kidney",
        box=KIDNEY_BOX,
        **view_variables("ct", "axial"),
        position="middle right",
        size="small",
        side="left",
    )

    assert questions[0] == "Describe the region <box>(600,500),(750,700)</box>."
    assert answers[0] == (
        "This small region is the left kidney, on the patient's left side, "
        "in the middle right part of this axial CT image."
    )
    assert answers[2] == (
        "The left kidney, on the patient's left side: a small structure in the middle right "
        "of the CT image in the axial plane."
    )


def test_rc_golden_render_without_side(env):
    _, answers = render_phrasings(
        env,
        "RC",
        label="liver",
        box=LIVER_BOX,
        **view_variables("mr", "coronal"),
        position="upper left",
        size="large",
        side=None,
    )

    assert answers == [
        "This large region is the liver, in the upper left part of this coronal MRI image.",
        "In this coronal MRI slice, <box>(100,200),(450,600)</box> contains the liver; "
        "it is large in size and lies in the upper left of the image.",
        "The liver: a large structure in the upper left of the MRI image in the coronal plane.",
    ]


def test_mia_golden_render(env):
    regions = [
        {"label": "liver", "box": LIVER_BOX, "position": "middle left", "size": "large"},
        {"label": "left kidney", "box": KIDNEY_BOX, "position": "middle right", "size": "small"},
    ]

    questions, answers = render_phrasings(
        env, "MIA", **view_variables("ct", "axial"), regions=regions
    )

    assert questions[0] == "Describe this medical image."
    assert answers[0] == (
        "This is an axial CT image. Visible structures: "
        "the <ref>liver</ref><box>(100,200),(450,600)</box> (large, middle left); "
        "the <ref>left kidney</ref><box>(600,500),(750,700)</box> (small, middle right)."
    )
    assert answers[1] == (
        "A CT image in the axial plane showing "
        "the <ref>liver</ref><box>(100,200),(450,600)</box> (large, middle left); "
        "the <ref>left kidney</ref><box>(600,500),(750,700)</box> (small, middle right)."
    )


def test_mia_article_follows_the_modality(env):
    _, answers = render_phrasings(env, "MIA", **view_variables("mr", "sagittal"), regions=[])

    assert answers[0].startswith("This is a sagittal MRI image.")
    assert answers[1].startswith("An MRI image in the sagittal plane")


# --- template files -------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", sorted(TEMPLATE_FILES.values()))
def test_template_starts_with_a_comment_naming_its_variables(file_name):
    source = resources.files("medgrit.prompts").joinpath(file_name).read_text(encoding="utf-8")

    assert source.startswith("{#-")
    header = source[: source.index("#}")]
    assert "Variables:" in header
    assert "questions" in header and "answers" in header


@pytest.mark.parametrize(
    ("task", "variables"),
    [
        ("VG", {"label": "liver", "modality": "CT", "plane": "axial"}),  # no boxes
        ("ROC", {"label": "liver", "box": LIVER_BOX, "plane": "axial"}),  # no modality
        ("RC", {"label": "liver", "box": LIVER_BOX, "modality": "CT", "plane": "axial"}),
        ("MIA", {"modality": "CT", "plane": "axial"}),  # no regions
    ],
)
def test_missing_variable_raises(env, task, variables):
    with pytest.raises(jinja2.UndefinedError):
        render_phrasings(env, task, **variables)


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("MRI", "an MRI"),
        ("CT", "a CT"),
        ("X-ray", "an X-ray"),
        ("axial CT", "an axial CT"),
        ("coronal MRI", "a coronal MRI"),
        ("sagittal CT", "a sagittal CT"),
        ("ultrasound", "an ultrasound"),
        ("PET", "a PET"),
        ("small", "a small"),
    ],
)
def test_with_article(phrase, expected):
    assert with_article(phrase) == expected


# --- generator ------------------------------------------------------------------------------------

WIDTH = HEIGHT = 64
NAMES = {1: "liver", 2: "left kidney", 3: "right kidney", 4: "lung"}


def small_label_map() -> np.ndarray:
    m = np.zeros((HEIGHT, WIDTH), np.uint8)
    m[10:40, 5:30] = 1
    m[30:45, 45:55] = 2  # the patient's left lies on the image's right
    m[30:45, 33:40] = 3
    m[2:6, 10:20] = 4  # two blobs: a merged row and two instance rows
    m[2:6, 40:50] = 4
    return m


def region_facts(image_id: str, label_map: np.ndarray) -> list[RegionFacts]:
    """Regions of a label map as the build pipeline describes them."""
    table = extract_regions(label_map).regions
    boxes_1000 = to_bbox_1000(table.bbox, WIDTH, HEIGHT)
    return [
        RegionFacts(
            region_id=f"{image_id}-r{row:03d}",
            label=NAMES[int(table.label_id[row])],
            label_id=int(table.label_id[row]),
            instance=int(table.instance[row]),
            bbox_1000=tuple(int(v) for v in boxes_1000[row]),
            area=int(table.area[row]),
            position=position_word(tuple(int(v) for v in table.bbox[row]), WIDTH, HEIGHT),
            size=size_word(int(table.area[row]), WIDTH, HEIGHT),
        )
        for row in range(len(table))
    ]


def conversation(generator: TemplateGenerator, image_id: str):
    image = ImageFacts(image_id, "ct", "axial", WIDTH, HEIGHT)
    regions = region_facts(image_id, small_label_map())
    return generator.generate(image, regions), regions


IMAGE_IDS = [f"3f2a9c01d4e5b6a7-a{i:04d}" for i in range(12)]


def test_generation_is_deterministic():
    first, _ = conversation(TemplateGenerator(seed=0), IMAGE_IDS[0])
    again, _ = conversation(TemplateGenerator(seed=0), IMAGE_IDS[0])

    assert first == again


def test_seed_changes_the_conversations():
    seed0 = [conversation(TemplateGenerator(seed=0), i)[0] for i in IMAGE_IDS[:4]]
    seed1 = [conversation(TemplateGenerator(seed=1), i)[0] for i in IMAGE_IDS[:4]]

    assert seed0 != seed1


def test_first_turn_is_mia_over_the_merged_regions():
    turns, regions = conversation(TemplateGenerator(seed=0), IMAGE_IDS[0])

    merged_ids = tuple(r.region_id for r in regions if r.instance == 0)
    assert turns[0].task == "MIA"
    assert turns[0].region_ids == merged_ids
    for r in regions:
        if r.instance == 0:
            assert f"<ref>{r.label}</ref>{format_box(r.bbox_1000)}" in turns[0].answer


def test_conversation_has_mia_then_region_turns():
    turns, _ = conversation(TemplateGenerator(seed=0, max_region_turns=2), IMAGE_IDS[0])

    assert len(turns) == 3
    assert turns[0].task == "MIA"
    assert {t.task for t in turns[1:]} <= {"VG", "ROC", "RC"}


def test_image_without_regions_gets_no_conversation():
    image = ImageFacts(IMAGE_IDS[0], "ct", "axial", WIDTH, HEIGHT)

    assert TemplateGenerator(seed=0).generate(image, []) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_generated_turn_passes_verification(seed):
    generator = TemplateGenerator(seed=seed)
    for image_id in IMAGE_IDS:
        turns, regions = conversation(generator, image_id)
        by_id = {r.region_id: r for r in regions}
        for turn in turns:
            assert verify_qa(turn, by_id) is None, turn


def test_vg_answer_for_a_multi_instance_label_has_every_instance_box():
    generator = TemplateGenerator(seed=0)
    vg_lung_turns = []
    for image_id in IMAGE_IDS:
        turns, regions = conversation(generator, image_id)
        lung_instances = [r for r in regions if r.label == "lung" and r.instance > 0]
        for turn in turns:
            if turn.task == "VG" and "lung" in turn.question:
                vg_lung_turns.append(turn)
                assert turn.region_ids == tuple(r.region_id for r in lung_instances)
                for r in lung_instances:
                    assert format_box(r.bbox_1000) in turn.answer

    assert vg_lung_turns, "no VG turn about the lung was drawn; pick other image ids"


def test_generator_counts_the_phrasings_of_each_template():
    assert TemplateGenerator().variants == {
        "VG": (5, 3),
        "ROC": (4, 3),
        "RC": (3, 3),
        "MIA": (4, 3),
    }


def test_template_hash_is_stable_and_covers_every_template():
    a, b = TemplateGenerator(seed=0), TemplateGenerator(seed=5)

    assert a.template_hash == b.template_hash
    assert len(a.template_hash) == 64
    assert sorted(a.template_hashes) == sorted(TEMPLATE_FILES.values())


def test_2d_images_are_described_without_plane_words() -> None:
    env = make_environment()
    regions = [{"label": "polyp", "box": LIVER_BOX, "position": "upper right", "size": "small"}]
    _, answers = render_phrasings(env, "MIA", **view_variables("endoscopy", "2d"), regions=regions)
    assert answers[0] == (
        "This is an endoscopy image. Visible structures: "
        "the <ref>polyp</ref><box>(100,200),(450,600)</box> (small, upper right)."
    )
    assert answers[2].startswith("The image is an endoscopy image.")
    questions, answers = render_phrasings(
        env,
        "RC",
        label="left lung",
        box=LIVER_BOX,
        **view_variables("xray", "2d"),
        position="middle right",
        size="large",
        side="left",
    )
    assert answers[2] == (
        "The left lung, on the patient's left side: a large structure in the middle right of "
        "the X-ray image."
    )
    assert not any("2d" in text or "slice" in text for text in questions + answers)
