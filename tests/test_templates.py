"""Golden renders of the Jinja templates in ``prompts/`` and the template generator's turns."""

from __future__ import annotations

from importlib import resources

import jinja2
import numpy as np
import pytest

from medgrit.adapters.text.templates import (
    TEMPLATE_FILES,
    TemplateGenerator,
    is_plural,
    make_environment,
    number_word,
    render_phrasings,
    render_relation_answers,
    view_variables,
    with_article,
)
from medgrit.core.generation import QA, ImageFacts, RegionFacts, TurnPlan
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
        env, "VG", label="liver", boxes=[LIVER_BOX], **view_variables("ct", "axial")
    )

    assert questions == [
        "Where is the liver in this image?",
        "Locate the liver in this CT image.",
        "Please give the bounding box of the liver.",
        "Can you find the liver in this axial CT slice?",
        "Output the position of the liver as a bounding box.",
    ]
    assert answers == [
        "<ref>liver</ref><box>(100,200),(450,600)</box>",
        "The <ref>liver</ref> is at <box>(100,200),(450,600)</box>.",
        "It is located at <ref>liver</ref><box>(100,200),(450,600)</box>.",
    ]


def test_vg_golden_render_of_several_instances_counts_them(env):
    questions, answers = render_phrasings(
        env,
        "VG",
        label="lesion",
        boxes=[LIVER_BOX, SECOND_BOX, KIDNEY_BOX],
        **view_variables("ct", "axial"),
    )

    assert questions[0] == "Where is the lesion in this image?"
    assert questions[2] == "Please give the bounding box of each lesion."
    assert questions[4] == "Output the position of each lesion as a bounding box."
    boxes = LIVER_BOX + SECOND_BOX + KIDNEY_BOX
    assert answers == [
        f"<ref>lesion</ref>{boxes}",
        f"The <ref>lesion</ref> appears in three places: {boxes}.",
        f"It is located in three places: <ref>lesion</ref>{boxes}.",
    ]


def test_vg_golden_render_of_a_plural_label(env):
    questions, answers = render_phrasings(
        env, "VG", label="lungs", boxes=[LIVER_BOX], **view_variables("ct", "coronal")
    )

    assert questions[0] == "Where are the lungs in this image?"
    assert questions[2] == "Please give the bounding box of the lungs."
    assert answers[1:] == [
        "The <ref>lungs</ref> are at <box>(100,200),(450,600)</box>.",
        "They are located at <ref>lungs</ref><box>(100,200),(450,600)</box>.",
    ]


def test_vg_golden_render_of_a_plural_label_in_several_places(env):
    questions, answers = render_phrasings(
        env, "VG", label="lungs", boxes=[LIVER_BOX, SECOND_BOX], **view_variables("ct", "axial")
    )

    assert questions[0] == "Where are the lungs in this image?"
    assert questions[2] == "Please give the bounding boxes of the lungs."
    assert questions[4] == "Output the positions of the lungs as bounding boxes."
    assert answers[1:] == [
        f"The <ref>lungs</ref> appear in two places: {LIVER_BOX}{SECOND_BOX}.",
        f"They are located in two places: <ref>lungs</ref>{LIVER_BOX}{SECOND_BOX}.",
    ]


@pytest.mark.parametrize("label", ["pancreas", "pelvis", "uterus"])
def test_vg_singular_labels_ending_in_s_keep_singular_verbs(env, label):
    questions, answers = render_phrasings(
        env, "VG", label=label, boxes=[LIVER_BOX], **view_variables("mr", "axial")
    )

    assert questions[0] == f"Where is the {label} in this image?"
    assert answers[1] == f"The <ref>{label}</ref> is at {LIVER_BOX}."
    assert answers[2] == f"It is located at <ref>{label}</ref>{LIVER_BOX}."


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


@pytest.mark.parametrize(
    ("label", "answer"),
    [("kidneys", "They are the kidneys."), ("vertebrae", "They are the vertebrae.")],
)
def test_roc_golden_render_of_a_plural_label(env, label, answer):
    _, answers = render_phrasings(
        env, "ROC", label=label, box=LIVER_BOX, **view_variables("ct", "axial")
    )

    assert answers == [f"<ref>{label}</ref>{LIVER_BOX}", answer, f"The region shows the {label}."]


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
        relation="below the liver",
    )

    assert questions == [
        "Describe the region <box>(600,500),(750,700)</box>.",
        "Please give a short caption of the area in <box>(600,500),(750,700)</box>.",
        "What can you tell me about <box>(600,500),(750,700)</box> in this image?",
    ]
    assert answers == [
        "This small region is the left kidney, on the patient's left side, "
        "in the middle right of this axial CT image.",
        "In this axial CT slice, <box>(600,500),(750,700)</box> contains the left kidney, "
        "on the patient's left side; it is small in size and lies in the middle right "
        "of the image.",
        "The left kidney, on the patient's left side: a small structure in the middle right "
        "of the CT image in the axial plane.",
    ]


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
        relation=None,
    )

    assert answers == [
        "This large region is the liver, in the upper left of this coronal MRI image.",
        "In this coronal MRI slice, <box>(100,200),(450,600)</box> contains the liver; "
        "it is large in size and lies in the upper left of the image.",
        "The liver: a large structure in the upper left of the MRI image in the coronal plane.",
    ]


def test_rc_golden_render_of_a_plural_label(env):
    _, answers = render_phrasings(
        env,
        "RC",
        label="lungs",
        box=LIVER_BOX,
        **view_variables("ct", "axial"),
        position="center",
        size="large",
        side=None,
        relation="contains the nodule",
    )

    assert answers == [
        "This large region shows the lungs, in the center of this axial CT image.",
        "In this axial CT slice, <box>(100,200),(450,600)</box> contains the lungs; "
        "they are large in size and lie in the center of the image.",
        "The lungs: a large region in the center of the CT image in the axial plane.",
    ]


@pytest.mark.parametrize(
    ("label", "side", "relation", "expected"),
    [
        ("left kidney", "left", "below the liver",
         "The left kidney in <box>(100,200),(450,600)</box>, on the patient's left side, in the "
         "center of this axial CT image, lies below the liver."),
        ("lungs", None, "contains the nodule",
         "The lungs in <box>(100,200),(450,600)</box>, in the center of this axial CT image, "
         "form a region that contains the nodule."),
        ("liver", None, "larger than the spleen",
         "The liver in <box>(100,200),(450,600)</box>, in the center of this axial CT image, "
         "is larger than the spleen."),
    ],
)  # fmt: skip
def test_rc_relation_golden_render(env, label, side, relation, expected):
    variables = {**view_variables("ct", "axial"), "position": "center", "size": "large"}
    said = render_relation_answers(
        env, label=label, box=LIVER_BOX, side=side, relation=relation, **variables
    )
    none = render_relation_answers(
        env, label=label, box=LIVER_BOX, side=side, relation=None, **variables
    )

    assert said == [expected]
    assert none == []


def test_mia_golden_render(env):
    regions = [
        {"label": "liver", "box": LIVER_BOX, "position": "middle left", "size": "large"},
        {"label": "left kidney", "box": KIDNEY_BOX, "position": "middle right", "size": "small"},
    ]

    questions, answers = render_phrasings(
        env, "MIA", **view_variables("ct", "axial"), regions=regions
    )

    listing = (
        "the <ref>liver</ref><box>(100,200),(450,600)</box> (large, middle left); "
        "the <ref>left kidney</ref><box>(600,500),(750,700)</box> (small, middle right)"
    )
    assert questions == [
        "Describe this medical image.",
        "What does this image show?",
        "Please analyse this image and list the structures you can see with their locations.",
        "Give a brief report of this image.",
    ]
    assert answers == [
        f"This is an axial CT image. Visible structures: {listing}.",
        f"A CT image in the axial plane showing {listing}.",
        f"This axial CT slice shows {listing}.",
    ]


def test_mia_golden_render_of_one_region(env):
    regions = [{"label": "liver", "box": LIVER_BOX, "position": "center", "size": "large"}]

    _, answers = render_phrasings(env, "MIA", **view_variables("mr", "coronal"), regions=regions)

    item = "the <ref>liver</ref><box>(100,200),(450,600)</box> (large, center)"
    assert answers == [
        f"This is a coronal MRI image. Visible structure: {item}.",
        f"An MRI image in the coronal plane showing {item}.",
        f"This coronal MRI slice shows {item}.",
    ]


def test_mia_one_plural_label_is_listed_as_structures(env):
    regions = [{"label": "lungs", "box": LIVER_BOX, "position": "center", "size": "large"}]

    _, answers = render_phrasings(env, "MIA", **view_variables("ct", "axial"), regions=regions)

    assert answers[0] == (
        "This is an axial CT image. Visible structures: "
        "the <ref>lungs</ref><box>(100,200),(450,600)</box> (large, center)."
    )


def test_mia_article_follows_the_modality(env):
    _, answers = render_phrasings(env, "MIA", **view_variables("mr", "sagittal"), regions=[])

    assert answers[0].startswith("This is a sagittal MRI image.")
    assert answers[1].startswith("An MRI image in the sagittal plane")


@pytest.mark.parametrize(
    ("modality", "first", "second"),
    [
        ("xray", "This is an X-ray image.", "An X-ray image showing"),
        ("ultrasound", "This is an ultrasound image.", "An ultrasound image showing"),
        ("endoscopy", "This is an endoscopy image.", "An endoscopy image showing"),
        ("fundus", "This is a fundus image.", "A fundus image showing"),
        ("dermoscopy", "This is a dermoscopy image.", "A dermoscopy image showing"),
    ],
)
def test_mia_articles_of_2d_modalities(env, modality, first, second):
    regions = [{"label": "polyp", "box": LIVER_BOX, "position": "center", "size": "small"}]

    _, answers = render_phrasings(env, "MIA", **view_variables(modality, "2d"), regions=regions)

    assert answers[0].startswith(first)
    assert answers[1].startswith(second)


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
        ("large", "a large"),
        ("axial CT slice", "an axial CT slice"),
        ("upper left", "an upper left"),
        ("endoscopy", "an endoscopy"),
        ("fundus", "a fundus"),
        ("uterus", "a uterus"),
        ("urinary bladder", "a urinary bladder"),
        ("MR", "an MR"),
        ("SPECT", "a SPECT"),
    ],
)
def test_with_article(phrase, expected):
    assert with_article(phrase) == expected


@pytest.mark.parametrize(
    "label",
    [
        "lungs",
        "kidneys",
        "vertebrae",
        "teeth",
        "bronchi",
        "lymph nodes",
        "left lungs",
        "ribs 1-12",
        "lumbar vertebrae L1-L5",
        "islets of langerhans",
        "heart and lungs",
        "lungs and heart",
    ],
)
def test_plural_labels(label):
    assert is_plural(label)


@pytest.mark.parametrize(
    "label",
    [
        "liver",
        "pancreas",
        "pelvis",
        "uterus",
        "iris",
        "abscess",
        "psoas",
        "os",
        "pons",
        "lens",
        "biceps",
        "ascites",
        "left kidney",
        "head of pancreas",
        "tail of pancreas",
        "pouch of douglas",
        "vertebra L1",
        "erector spinae",
        "levator ani",
    ],
)
def test_singular_labels(label):
    assert not is_plural(label)


@pytest.mark.parametrize(("count", "word"), [(2, "two"), (3, "three"), (9, "nine"), (12, "12")])
def test_number_word(count, word):
    assert number_word(count) == word


@pytest.mark.parametrize("task", sorted(TEMPLATE_FILES))
@pytest.mark.parametrize(("label", "boxes"), [("liver", 1), ("lungs", 1), ("lesion", 3)])
def test_phrasing_counts_do_not_depend_on_the_label(env, task, label, boxes):
    # A turn's planned variants index into these lists, so their lengths must not change.
    box_list = [LIVER_BOX, SECOND_BOX, KIDNEY_BOX][:boxes]
    region = {"label": label, "box": LIVER_BOX, "position": "center", "size": "small"}
    questions, answers = render_phrasings(
        env,
        task,
        label=label,
        boxes=box_list,
        box=LIVER_BOX,
        **view_variables("ct", "axial"),
        position="center",
        size="small",
        side=None,
        relation=None,
        regions=[region] * boxes,
    )

    assert (len(questions), len(answers)) == TemplateGenerator().variants[task]


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


# Plural labels, singular labels ending in "s", and a finding in three places.
MANY_NAMES = {
    1: "lungs",
    2: "vertebrae",
    3: "pancreas",
    4: "lesion",
    5: "right kidney",
    6: "uterus",
}


def many_label_map() -> np.ndarray:
    m = np.zeros((HEIGHT, WIDTH), np.uint8)
    m[4:30, 4:24] = 1  # the lungs, two blobs
    m[4:30, 40:60] = 1
    m[50:62, 28:36] = 2
    m[34:40, 20:44] = 3
    m[44:46, 4:6] = 4  # three small lesions
    m[44:46, 10:12] = 4
    m[56:58, 50:52] = 4
    m[34:44, 6:14] = 5
    m[42:48, 40:48] = 6
    return m


def region_facts(
    image_id: str, label_map: np.ndarray, names: dict[int, str] = NAMES
) -> list[RegionFacts]:
    """Regions of a label map as the build pipeline describes them."""
    table = extract_regions(label_map).regions
    boxes_1000 = to_bbox_1000(table.bbox, WIDTH, HEIGHT)
    return [
        RegionFacts(
            region_id=f"{image_id}-r{row:03d}",
            label=names[int(table.label_id[row])],
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
        image = ImageFacts(image_id, "ct", "axial", WIDTH, HEIGHT)
        for turn in turns:
            assert verify_qa(turn, by_id, image=image, vocabulary=NAMES.values()) is None, turn


VIEWS = [
    ("ct", "axial"),
    ("mr", "coronal"),
    ("mr", "sagittal"),
    ("pet", "axial"),
    ("xray", "2d"),
    ("ultrasound", "2d"),
    ("endoscopy", "2d"),
    ("fundus", "2d"),
    ("dermoscopy", "2d"),
]


def every_planned_turn(regions: list[RegionFacts]) -> list[TurnPlan]:
    """Every turn the planner may draw for these regions, in every phrasing."""
    variants = TemplateGenerator().variants
    merged = [r for r in regions if r.instance == 0]
    region_sets = [("MIA", (r.region_id,)) for r in merged]
    region_sets.append(("MIA", tuple(r.region_id for r in merged)))
    for label_id in sorted({r.label_id for r in regions}):
        rows = [r for r in regions if r.label_id == label_id]
        instances = [r for r in rows if r.instance > 0]
        region_sets.append(("VG", tuple(r.region_id for r in instances or rows)))
        for r in instances or rows:
            region_sets += [("ROC", (r.region_id,)), ("RC", (r.region_id,))]
    return [
        TurnPlan(task, ids, q, a)
        for task, ids in region_sets
        for q in range(variants[task][0])
        for a in range(variants[task][1])
    ]


@pytest.mark.parametrize(("modality", "plane"), VIEWS)
@pytest.mark.parametrize(
    ("label_map", "names"),
    [(small_label_map, NAMES), (many_label_map, MANY_NAMES)],
    ids=["sided", "plural-and-instances"],
)
def test_every_phrasing_of_every_template_passes_verification(modality, plane, label_map, names):
    image = ImageFacts(IMAGE_IDS[0], modality, plane, WIDTH, HEIGHT)
    regions = region_facts(image.image_id, label_map(), names)
    by_id = {r.region_id: r for r in regions}
    generator = TemplateGenerator()
    failures = []
    for plan in every_planned_turn(regions):
        turn = generator.render_turn(image, plan, by_id)
        reason = verify_qa(turn, by_id, image=image, vocabulary=names.values())
        if reason is not None:
            failures.append((reason, turn))

    assert failures == []


def test_conversations_with_plural_labels_and_instances_read_naturally():
    image = ImageFacts(IMAGE_IDS[0], "ct", "axial", WIDTH, HEIGHT)
    regions = region_facts(image.image_id, many_label_map(), MANY_NAMES)
    by_id = {r.region_id: r for r in regions}
    lesions = tuple(r.region_id for r in regions if r.label == "lesion" and r.instance > 0)
    lungs = tuple(r.region_id for r in regions if r.label == "lungs" and r.instance > 0)
    pancreas = next(r.region_id for r in regions if r.label == "pancreas")
    generator = TemplateGenerator()

    def render(task: str, ids: tuple[str, ...], q: int, a: int) -> QA:
        return generator.render_turn(image, TurnPlan(task, ids, q, a), by_id)

    lesion_boxes = "".join(format_box(by_id[rid].bbox_1000) for rid in lesions)
    assert len(lesions) == 3
    assert render("VG", lesions, 2, 1) == QA(
        "VG",
        "Please give the bounding box of each lesion.",
        f"The <ref>lesion</ref> appears in three places: {lesion_boxes}.",
        lesions,
    )
    lung_turn = render("VG", lungs, 0, 2)
    assert lung_turn.question == "Where are the lungs in this image?"
    assert lung_turn.answer.startswith("They are located in two places: <ref>lungs</ref><box>")
    assert render("ROC", lungs[:1], 0, 1).answer == "They are the lungs."
    assert render("ROC", (pancreas,), 0, 1).answer == "It is the pancreas."
    assert render("VG", (pancreas,), 0, 1).question == "Where is the pancreas in this image?"


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
        "This is an endoscopy image. Visible structure: "
        "the <ref>polyp</ref><box>(100,200),(450,600)</box> (small, upper right)."
    )
    assert answers[2].startswith("This endoscopy image shows the <ref>polyp</ref>")
    questions, answers = render_phrasings(
        env,
        "RC",
        label="left lung",
        box=LIVER_BOX,
        **view_variables("xray", "2d"),
        position="middle right",
        size="large",
        side="left",
        relation=None,
    )
    assert answers[2] == (
        "The left lung, on the patient's left side: a large structure in the middle right of "
        "the X-ray image."
    )
    assert not any("2d" in text or "slice" in text for text in questions + answers)
