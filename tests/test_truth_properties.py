"""Hypothesis properties of the verifier: honest turns about random regions always pass, and one
corrupted fact (a box, a label, a position, size or side word, an extra structure) is always
caught."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.lexicon import Lexicon, words_of
from medgrit.core.regions import to_bbox_1000
from medgrit.core.text import format_box, position_word, size_word
from medgrit.core.verify import verify_qa

LABELS = (
    "liver", "spleen", "left kidney", "right kidney", "lungs", "pancreas", "liver tumour",
    "optic disc", "polyp", "vertebrae", "left lung", "right lung", "gallbladder", "aorta",
    "left femur", "urinary bladder",
)  # fmt: skip
VIEWS = (("ct", "axial"), ("mr", "coronal"), ("pet", "sagittal"), ("xray", "2d"), ("fundus", "2d"))
POSITIONS = tuple(
    f"{r} {c}" if (r, c) != ("middle", "center") else "center"
    for r in ("upper", "middle", "lower")
    for c in ("left", "center", "right")
)
SIZES = ("tiny", "small", "medium", "large")
SIZE = 512
LEXICON = Lexicon(LABELS)

Box = tuple[int, int, int, int]


def image_of(
    view: tuple[str, str], regions: list[tuple[str, Box, int]]
) -> tuple[ImageFacts, list[RegionFacts]]:
    """An image of ``view`` with a region per (label, pixel box, area) and its true words; a box
    that comes out as one already given in the 0-1000 frame is left out."""
    modality, plane = view
    image = ImageFacts("img-a0001", modality, plane, SIZE, SIZE)
    facts, seen = [], set()
    for i, (label, bbox, area) in enumerate(regions):
        box_1000 = tuple(to_bbox_1000(bbox, SIZE, SIZE).tolist())
        if box_1000 in seen:
            continue
        seen.add(box_1000)
        facts.append(
            RegionFacts(
                f"img-a0001-r{i:03d}",
                label,
                i + 1,
                0,
                box_1000,  # type: ignore[arg-type]
                area,
                position_word(bbox, SIZE, SIZE),
                size_word(area, SIZE, SIZE),
            )
        )
    return image, facts


@st.composite
def images(draw) -> tuple[ImageFacts, list[RegionFacts]]:
    """An image with 1-5 labelled regions, each with its own box and its true words."""
    view = draw(st.sampled_from(VIEWS))
    labels = draw(st.lists(st.sampled_from(LABELS), min_size=1, max_size=5, unique=True))
    regions = []
    for label in labels:
        x0 = draw(st.integers(0, SIZE - 8))
        y0 = draw(st.integers(0, SIZE - 8))
        x1 = draw(st.integers(x0 + 4, SIZE))
        y1 = draw(st.integers(y0 + 4, SIZE))
        area = draw(st.integers(1, (x1 - x0) * (y1 - y0)))
        regions.append((label, (x0, y0, x1, y1), area))
    return image_of(view, regions)


# Images every property is checked on before the random ones: the cases where a word or a box
# is easiest to get wrong.
ADVERSARIAL: list[tuple[tuple[str, str], list[tuple[str, Box, int]]]] = [
    # a pair of sides and the word for both ("lungs" names a left lung)
    (
        ("xray", "2d"),
        [
            ("lungs", (40, 60, 470, 400), 90_000),
            ("left lung", (260, 60, 470, 400), 45_000),
            ("right lung", (40, 60, 250, 400), 45_000),
        ],
    ),
    # mirrored kidneys: only the side word tells them apart
    (
        ("mr", "coronal"),
        [
            ("left kidney", (300, 200, 400, 330), 9_000),
            ("right kidney", (112, 200, 212, 330), 9_000),
        ],
    ),
    # a label inside another label's name, its box inside the other's box
    (
        ("ct", "axial"),
        [("liver", (60, 100, 300, 330), 40_000), ("liver tumour", (150, 150, 170, 172), 300)],
    ),
    # boxes on the far corners, one pixel of area, the smallest box allowed
    (
        ("fundus", "2d"),
        [("optic disc", (504, 504, 512, 512), 1), ("polyp", (0, 0, 4, 4), 16)],
    ),
    # five regions, one the whole image
    (
        ("pet", "sagittal"),
        [
            ("vertebrae", (0, 0, 512, 512), 512 * 512),
            ("aorta", (240, 100, 270, 420), 7_000),
            ("spleen", (330, 120, 420, 220), 6_000),
            ("pancreas", (200, 230, 330, 280), 4_000),
            ("urinary bladder", (200, 430, 300, 500), 5_000),
        ],
    ),
]


def adversarial(test):
    """``test`` on each :data:`ADVERSARIAL` image, with two build seeds, before random ones."""
    for view, regions in ADVERSARIAL:
        for seed in (0, 7_919):
            test = example(image_of(view, regions), seed)(test)
    return test


def honest_turns(image: ImageFacts, regions: list[RegionFacts], seed: int) -> list[QA]:
    return TemplateGenerator(seed=seed, max_region_turns=5).generate(image, regions)


def passes(turn: QA, image: ImageFacts, regions: list[RegionFacts]) -> str | None:
    return verify_qa(turn, {r.region_id: r for r in regions}, image=image, vocabulary=LABELS)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(images(), st.integers(0, 10_000))
@adversarial
def test_honest_turns_about_random_regions_always_pass(image_regions, seed) -> None:
    image, regions = image_regions
    for turn in honest_turns(image, regions, seed):
        assert passes(turn, image, regions) is None, turn


def _corruptions(turn: QA, regions: list[RegionFacts], image: ImageFacts) -> list[tuple[str, QA]]:
    """Every single-field corruption of an honest turn that makes it untrue."""
    by_id = {r.region_id: r for r in regions}
    asked = by_id[turn.region_ids[0]]
    others = [r for r in regions if r.label != asked.label and r.bbox_1000 != asked.bbox_1000]
    absent = [label for label in LABELS if all(label != r.label for r in regions)]

    def base_words(label: str) -> set[str]:
        found = LEXICON.canonical(words_of(label))
        return set(found[0]) if found else set()

    present = set().union(*(base_words(r.label) for r in regions))
    absent = [a for a in absent if not base_words(a) & present]  # "lungs" names a left lung
    out: list[tuple[str, QA]] = []
    own_box = format_box(asked.bbox_1000)
    for other in others[:1]:
        swapped = format_box(other.bbox_1000)
        if own_box in turn.answer:
            out.append(("box", replace(turn, answer=turn.answer.replace(own_box, swapped))))
        if turn.task in ("ROC", "RC") and own_box in turn.question:
            out.append(
                ("question box", replace(turn, question=turn.question.replace(own_box, swapped)))
            )
        if turn.task == "ROC":
            out.append(
                ("label", replace(turn, answer=turn.answer.replace(asked.label, other.label)))
            )
        if turn.task in ("ROC", "RC"):
            extra = f"{turn.answer} It lies next to the {other.label}."
            out.append(("extra structure", replace(turn, answer=extra)))
    if absent:
        out.append(("invented", replace(turn, answer=f"{turn.answer} A {absent[0]} is seen.")))
    if turn.task == "RC":
        words = f" {asked.position} "
        if words in f" {turn.answer} ":
            new = next(p for p in POSITIONS if p != asked.position and asked.position not in p)
            out.append(("position", replace(turn, answer=turn.answer.replace(asked.position, new))))
        size = f" {asked.size} "
        if size in f" {turn.answer} ":
            new = next(s for s in SIZES if s != asked.size)
            out.append(("size", replace(turn, answer=turn.answer.replace(size, f" {new} "))))
        side = "left" if asked.label.startswith("left ") else "right"
        other_side = "right" if side == "left" else "left"
        if f"patient's {side}" in turn.answer:
            flipped = turn.answer.replace(f"patient's {side}", f"patient's {other_side}")
            out.append(("side", replace(turn, answer=flipped)))
    return out


@SETTINGS
@given(images(), st.integers(0, 10_000))
@adversarial
def test_a_single_corrupted_fact_is_always_caught(image_regions, seed) -> None:
    image, regions = image_regions
    for turn in honest_turns(image, regions, seed):
        for kind, corrupted in _corruptions(turn, regions, image):
            assert passes(corrupted, image, regions) is not None, (kind, corrupted)


@SETTINGS
@given(images(), st.integers(0, 10_000))
@adversarial
def test_another_modality_or_plane_word_is_always_caught(image_regions, seed) -> None:
    image, regions = image_regions
    for turn in honest_turns(image, regions, seed):
        if turn.task != "MIA":
            continue
        wrong = "MRI" if image.modality != "mr" else "CT"
        lie = replace(turn, answer=f"{turn.answer} It is {wrong_article(wrong)} {wrong} image.")
        assert passes(lie, image, regions) == "wrong_modality"
        plane = "coronal" if image.plane != "coronal" else "axial"
        lie = replace(turn, answer=f"{turn.answer} The {plane} plane is shown.")
        assert passes(lie, image, regions) == "wrong_plane"


def wrong_article(word: str) -> str:
    return "an" if word in ("MRI",) else "a"
