"""Turns written in free clinical prose: the honest ones pass, the subtle lies do not.

Each image here is a small scene of regions with boxes, areas and mask relations, as the
pipeline describes them; the texts are the kinds of sentences a capable LLM writes.
"""

from __future__ import annotations

import pytest

from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.lexicon import lexicon_for
from medgrit.core.text import format_box
from medgrit.core.verify import ImageTruth, check_turn


def region(
    image: str,
    row: int,
    label: str,
    box: tuple[int, int, int, int],
    area: int,
    position: str,
    size: str,
    relations: tuple[tuple[str, str], ...] = (),
) -> RegionFacts:
    return RegionFacts(
        f"{image}-r{row:03d}", label, row + 1, 0, box, area, position, size, relations
    )


def rid(image: str, row: int) -> str:
    return f"{image}-r{row:03d}"


# An axial CT slice of the upper abdomen: liver (image left), a tumour inside it, the spleen
# (image right), both kidneys below them and the spine at the bottom.
CT = "ct0000000000000a-a0040"
CT_REGIONS = [
    region(CT, 0, "liver", (150, 250, 480, 560), 30000, "middle left", "large",
           ((("contains", rid(CT, 1))),)),
    region(CT, 1, "liver tumour", (250, 350, 330, 430), 900, "middle left", "tiny",
           ((("inside", rid(CT, 0))),)),
    region(CT, 2, "spleen", (620, 260, 820, 480), 6000, "middle right", "medium"),
    region(CT, 3, "right kidney", (300, 580, 420, 720), 2500, "lower left", "small"),
    region(CT, 4, "left kidney", (560, 590, 680, 720), 2400, "lower center", "small"),
    region(CT, 5, "spine", (450, 760, 560, 880), 2000, "lower center", "small"),
]  # fmt: skip
# A brain MR slice: grey and white matter of each hemisphere.
MR = "mr0000000000000b-a0080"
MR_REGIONS = [
    region(MR, 0, "left grey matter", (505, 200, 820, 800), 40000, "center", "large"),
    region(MR, 1, "right grey matter", (180, 200, 495, 800), 40000, "center", "large"),
    region(MR, 2, "left white matter", (540, 260, 760, 720), 15000, "center", "medium"),
    region(MR, 3, "right white matter", (240, 260, 460, 720), 15000, "center", "medium"),
]
# A PET slice through the pelvis: only the bladder.
PET = "pet000000000000c-a0100"
PET_REGIONS = [region(PET, 0, "bladder", (430, 600, 580, 720), 1800, "lower center", "small")]
# A fundus photograph: the optic disc and the macula.
FUNDUS = "fundus0000000000-a0000"
FUNDUS_REGIONS = [
    region(FUNDUS, 0, "optic disc", (180, 420, 330, 580), 2200, "middle left", "small"),
    region(FUNDUS, 1, "macula", (520, 410, 680, 570), 2600, "middle center", "small"),
]
# Other 2D images: a polyp, a skin lesion, a chest X-ray.
ENDO = "endo000000000000-a0000"
ENDO_REGIONS = [region(ENDO, 0, "polyp", (560, 300, 780, 520), 4000, "middle right", "medium")]
DERM = "derm000000000000-a0000"
DERM_REGIONS = [region(DERM, 0, "skin lesion", (300, 280, 720, 760), 16000, "center", "large")]
XRAY = "xray000000000000-a0000"
XRAY_REGIONS = [
    region(XRAY, 0, "right lung", (200, 200, 440, 740), 20000, "middle left", "large"),
    region(XRAY, 1, "left lung", (570, 210, 790, 700), 18000, "middle right", "large"),
    region(XRAY, 2, "heart", (420, 470, 700, 730), 9000, "lower center", "medium"),
]
SCENES = {
    CT: ("ct", "axial", CT_REGIONS),
    MR: ("mr", "axial", MR_REGIONS),
    PET: ("pet", "axial", PET_REGIONS),
    FUNDUS: ("fundus", "2d", FUNDUS_REGIONS),
    ENDO: ("endoscopy", "2d", ENDO_REGIONS),
    DERM: ("dermoscopy", "2d", DERM_REGIONS),
    XRAY: ("xray", "2d", XRAY_REGIONS),
}
VOCABULARY = frozenset(r.label for _, _, regions in SCENES.values() for r in regions)


def check(image: str, task: str, question: str, answer: str, *rows: int) -> str | None:
    modality, plane, regions = SCENES[image]
    truth = ImageTruth(
        regions, ImageFacts(image, modality, plane, 512, 512), lexicon_for(VOCABULARY)
    )
    turn = QA(task, question, answer, tuple(rid(image, r) for r in rows))
    failure = check_turn(turn, truth)
    return failure.reason if failure else None


def box(image: str, row: int) -> str:
    return format_box(SCENES[image][2][row].bbox_1000)


HONEST = [
    # Synonyms and broader words.
    (ENDO, "ROC", f"What is in {box(ENDO, 0)}?", "It is a polypoid lesion.", 0),
    (PET, "RC", f"Describe {box(PET, 0)}.", "This is the urinary bladder, a small structure.", 0),
    (XRAY, "ROC", f"What is {box(XRAY, 2)}?", "The cardiac silhouette.", 2),
    (FUNDUS, "ROC", f"Identify {box(FUNDUS, 0)}.", "This is the optic nerve head.", 0),
    (FUNDUS, "RC", f"Describe {box(FUNDUS, 1)}.", "The macular region, small and central.", 1),
    (DERM, "ROC", f"What does {box(DERM, 0)} show?", "It shows the lesion.", 0),
    # Context anatomy every image implies.
    (MR, "MIA", "Describe the image.",
     f"An axial MRI slice of the brain: the left grey matter {box(MR, 0)} is large.", 0),
    (FUNDUS, "MIA", "What is shown?",
     f"A fundus photograph of the retina with the optic disc {box(FUNDUS, 0)}.", 0),
    (PET, "MIA", "Describe.",
     f"An axial PET image through the pelvis: the bladder {box(PET, 0)}.", 0),
    # Coordinated clauses.
    (CT, "MIA", "Describe.",
     f"The liver {box(CT, 0)} is large and the spleen {box(CT, 2)} is of medium size.", 0, 2),
    (CT, "MIA", "Describe.",
     f"The spleen {box(CT, 2)} lies in the right half of the image and the spine {box(CT, 5)} "
     "in the lower center.", 2, 5),
    (XRAY, "MIA", "Describe.",
     f"The right lung {box(XRAY, 0)} appears on the left side of the image and the left lung "
     f"{box(XRAY, 1)} on the right side.", 0, 1),
    (CT, "MIA", "Describe.",
     f"The right kidney {box(CT, 3)} and the left kidney {box(CT, 4)} are small.", 3, 4),
    # Side wording.
    (CT, "VG", "Where is the left kidney?", f"The patient's left kidney is at {box(CT, 4)}.", 4),
    (XRAY, "MIA", "Describe.",
     f"Both the left and right lungs are visible: {box(XRAY, 1)} and {box(XRAY, 0)}.", 1, 0),
    (MR, "RC", f"Describe {box(MR, 3)}.",
     "This is the white matter of the right hemisphere, medium in size.", 3),
    # Position and size modifiers; the box centre against the midline.
    (CT, "RC", f"Describe {box(CT, 4)}.",
     "The left kidney lies in the lower middle of the image, right of the midline.", 4),
    (CT, "RC", f"Describe {box(CT, 1)}.", "A very small liver tumour within the liver.", 1),
    (CT, "MIA", "Describe.", f"{box(CT, 3)} (right kidney) and {box(CT, 4)} (left kidney).", 3, 4),
    # Relations the boxes and masks bear out.
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney, below the liver.", 3),
    (CT, "RC", f"Describe {box(CT, 2)}.", "The spleen lies well to the right of the liver.", 2),
    (CT, "RC", f"Describe {box(CT, 4)}.", "The left kidney sits above the level of the spine.", 4),
    (CT, "ROC", f"What is {box(CT, 1)}?", "A liver tumour, inside the liver.", 1),
    (CT, "RC", f"Describe {box(CT, 0)}.", "The liver is larger than the spleen.", 0),
]  # fmt: skip

LIES = [
    # Appearance and findings the facts cannot carry.
    (ENDO, "RC", f"Describe {box(ENDO, 0)}.", "The polyp has an ulcerated surface.", 0,
     "unsupported_finding"),
    (DERM, "RC", f"Describe {box(DERM, 0)}.", "The skin lesion shows a blue-white veil.", 0,
     "unsupported_finding"),
    (DERM, "RC", f"Describe {box(DERM, 0)}.",
     "The skin lesion shows atypical dotted vessels.", 0, "invented_structure"),
    (DERM, "RC", f"Describe {box(DERM, 0)}.", "The skin lesion is pigmented.", 0,
     "unsupported_finding"),
    (CT, "RC", f"Describe {box(CT, 1)}.", "A hypodense liver tumour.", 1, "unsupported_finding"),
    (CT, "RC", f"Describe {box(CT, 0)}.", "The liver measures 15 cm.", 0, "unsupported_finding"),
    # Body regions and modality words the image contradicts.
    (PET, "MIA", "Describe.", f"An axial PET image through the chest: the bladder {box(PET, 0)}.",
     0, "wrong_body_region"),
    (MR, "MIA", "Describe.", f"An MRI of the knee: the left grey matter {box(MR, 0)}.", 0,
     "wrong_body_region"),
    (FUNDUS, "RC", f"Describe {box(FUNDUS, 0)}.", "The optic disc on an OCT scan.", 0,
     "wrong_modality"),
    (MR, "MIA", "Describe.", f"A T2-weighted slice with the left grey matter {box(MR, 0)}.", 0,
     "unknown_sequence"),
    # Synonyms naming the wrong region; broader words that fit two.
    (XRAY, "ROC", f"What is {box(XRAY, 0)}?", "The cardiac silhouette.", 0, "roc_label_missing"),
    (MR, "ROC", f"What is {box(MR, 2)}?", "The cerebral cortex.", 2, "roc_label_missing"),
    (XRAY, "RC", f"Describe {box(XRAY, 0)}.", "The right lung, near the cardiac silhouette.", 0,
     "other_structure_named"),
    (MR, "ROC", f"What is {box(MR, 2)}?", "This is brain tissue.", 2, "ambiguous_name"),
    # Relations, positions and sides that do not hold.
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney, above the liver.", 3,
     "wrong_relation"),
    (CT, "RC", f"Describe {box(CT, 2)}.", "The spleen lies within the liver.", 2,
     "wrong_relation"),
    (CT, "RC", f"Describe {box(CT, 2)}.", "The spleen is larger than the liver.", 2,
     "wrong_relation"),
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney, anterior to the spine.", 3,
     "wrong_relation"),
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney, near the liver.", 3,
     "other_structure_named"),
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney, next to the spine.", 3,
     "wrong_relation"),
    (CT, "MIA", "Describe.",
     f"The liver {box(CT, 0)} is small and the spleen {box(CT, 2)} is of medium size.", 0, 2,
     "wrong_size"),
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney, in the right half of the image.",
     3, "wrong_position"),
    (CT, "MIA", "Describe.",
     f"The kidney {box(CT, 4)} in the right half of the image is the patient's right kidney.",
     4, "wrong_relation"),
    (CT, "RC", f"Describe {box(CT, 3)}.", "The right kidney lies on the left.", 3,
     "ambiguous_side"),
    # Invented structures, in plain words or as "one more".
    (ENDO, "MIA", "Describe.", f"A polyp {box(ENDO, 0)}, with a second polyp beside it.", 0,
     "invented_structure"),
    (ENDO, "MIA", "Describe.", f"A polyp {box(ENDO, 0)}. A lesion is also visible.", 0,
     "invented_structure"),
    (CT, "MIA", "Describe.", f"The liver {box(CT, 0)} and the gallbladder.", 0,
     "invented_structure"),
]  # fmt: skip


@pytest.mark.parametrize("case", HONEST, ids=[f"{c[1]}: {c[3][:50]}" for c in HONEST])
def test_an_honest_natural_turn_is_kept(case):
    image, task, question, answer, *rows = case

    assert check(image, task, question, answer, *rows) is None


@pytest.mark.parametrize("case", LIES, ids=[f"{c[-1]}: {c[3][:50]}" for c in LIES])
def test_a_subtle_lie_is_rejected_with_its_reason(case):
    image, task, question, answer, *rows, reason = case

    assert check(image, task, question, answer, *rows) == reason


def test_a_user_synonym_names_its_label_and_a_packaged_one_joins_no_two_labels():
    truth = ImageTruth(
        ENDO_REGIONS,
        ImageFacts(ENDO, "endoscopy", "2d", 512, 512),
        lexicon_for(VOCABULARY, frozenset({("adenoma", "polyp")})),
    )
    said = QA("ROC", f"What is {box(ENDO, 0)}?", "It is an adenoma.", (rid(ENDO, 0),))
    assert check_turn(said, truth) is None
    # "tumor" and "mass" are synonyms, unless both are labels of the build.
    both = lexicon_for(frozenset({"tumor", "mass"}))
    assert both.canonical(("mass",)) != both.canonical(("tumor",))
    one = lexicon_for(frozenset({"tumor"}))
    assert one.canonical(("mass",)) == one.canonical(("tumor",))
