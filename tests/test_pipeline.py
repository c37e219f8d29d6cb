"""The pure shard pipeline on arrays alone: every reject reason it writes, with no file read.

Cases are held in memory; the loader, the PNG encoder and the generator are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from medgrit.adapters.store.png import decode_png, encode_png
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.cases import Case, LoadedCase, PlanarImage, UnreadableImage, Volume
from medgrit.core.generation import QA, Generated
from medgrit.core.pipeline import CaseTask, ShardIO, build_shard_rows
from medgrit.core.rows import qa_of, qa_row, region_facts, region_row
from medgrit.schemas.config import BuildConfig


@dataclass(frozen=True, kw_only=True)
class MemoryCase(Case):
    """A case whose loaded form is given up front (or the exception its reader raises)."""

    format: ClassVar[str] = "memory"

    loaded: LoadedCase | None = None
    error: Exception | None = None


def _load(case: Case) -> LoadedCase:
    assert isinstance(case, MemoryCase)
    if case.error is not None:
        raise case.error
    assert case.loaded is not None
    return case.loaded


IO = ShardIO(load=_load, encode_png=encode_png)
CONFIG = BuildConfig(out="unused", min_area=4)
LABELS = ((1, "liver"), (2, "spleen"))


def _case(name: str, loaded: LoadedCase | None = None, error: Exception | None = None):
    case = MemoryCase(
        source="memory:",
        dataset="D",
        case=name,
        modality="ct",
        labels=LABELS,
        loaded=loaded,
        error=error,
    )
    return CaseTask(case, f"id-{name}", "train")


def _volume(image: np.ndarray, labels: np.ndarray) -> LoadedCase:
    affine = np.eye(4)
    return LoadedCase(
        "ct",
        "hu",
        volume=Volume(image.astype(np.float32), (1.0, 1.0, 1.0), affine),
        label_volume=Volume(labels.astype(np.uint8), (1.0, 1.0, 1.0), affine),
    )


def _ct(labels: np.ndarray) -> LoadedCase:
    rng = np.random.default_rng(0)
    return _volume(rng.uniform(-200, 200, labels.shape), labels)


def _planar(pixels: np.ndarray, labels: np.ndarray) -> LoadedCase:
    image = PlanarImage(0, pixels.astype(np.uint8), labels.astype(np.uint8))
    return LoadedCase("xray", "display", images=(image,))


def _liver(shape=(24, 24, 6)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[4:14, 6:16, 2:4] = 1
    return labels


def _reasons(rows) -> set[str]:
    return {r["reason"] for r in rows.rejects}


def test_a_good_volume_gives_images_regions_and_one_conversation_each() -> None:
    rows = build_shard_rows([_case("a", _ct(_liver()))], CONFIG, TemplateGenerator(), IO)
    assert len(rows.images) == 2 and not rows.rejects
    assert {r["label"] for r in rows.regions} == {"liver"}
    assert len(rows.conversations) == 2
    pixels = decode_png(rows.images[0]["image"]["bytes"])
    assert pixels.shape == (rows.images[0]["height"], rows.images[0]["width"])


@pytest.mark.parametrize(
    ("loaded", "error", "reason"),
    [
        (None, UnreadableImage("nifti_unreadable", "broken"), "nifti_unreadable"),
        (None, ValueError("what a reader never should"), "unexpected_error"),
        (_volume(np.zeros((4, 4, 4)), np.zeros((4, 4, 5))), None, "shape_mismatch"),
        (_ct(np.zeros((8, 8, 4))), None, "empty_label_map"),
    ],
)
def test_a_case_that_cannot_be_used_is_one_reject(loaded, error, reason) -> None:
    good = _case("good", _ct(_liver()))
    rows = build_shard_rows([_case("bad", loaded, error), good], CONFIG, TemplateGenerator(), IO)
    assert [r["reason"] for r in rows.rejects] == [reason]
    assert rows.rejects[0]["source"] == "D/bad" and rows.rejects[0]["case_id"] == "id-bad"
    assert {r["case_id"] for r in rows.images} == {"id-good"}


def test_image_level_reasons() -> None:
    tiny = np.zeros((24, 24, 6), dtype=np.uint8)
    tiny[5, 5, 2] = 1  # one voxel: no slice holds min_area labelled pixels
    unknown = _liver()
    unknown[18:22, 18:22, 2:4] = 7  # a value the source names not
    small = _liver()
    small[20, 20, 2:4] = 2  # a spleen of one pixel
    only_unknown = np.zeros((24, 24, 6), dtype=np.uint8)
    only_unknown[4:14, 6:16, 2] = 9
    blank = _volume(np.full((24, 24, 6), 50.0), _liver())
    cases = [
        _case("tiny", _ct(tiny)),
        _case("unknown", _ct(unknown)),
        _case("small", _ct(small)),
        _case("only-unknown", _ct(only_unknown)),
        _case("blank", blank),
    ]
    rows = build_shard_rows(cases, CONFIG, TemplateGenerator(), IO)
    by_case = {}
    for r in rows.rejects:
        by_case.setdefault(r["case_id"], set()).add(r["reason"])
    assert by_case == {
        "id-tiny": {"no_regions"},
        "id-unknown": {"unknown_label"},
        "id-small": {"below_min_area"},
        "id-only-unknown": {"unknown_label", "no_regions"},
        "id-blank": {"blank_image"},
    }
    assert {r["case_id"] for r in rows.images} == {"id-unknown", "id-small"}
    assert all("#slice=" in r["source"] for r in rows.rejects if r["case_id"] != "id-tiny")


def test_planar_masks_without_foreground_are_rejected() -> None:
    pixels = np.arange(32 * 32).reshape(32, 32) % 200
    rows = build_shard_rows(
        [_case("x", _planar(pixels, np.zeros((32, 32))))], CONFIG, TemplateGenerator(), IO
    )
    assert _reasons(rows) == {"empty_label_map"} and not rows.images


class LyingGenerator:
    """Answers with one true turn and one false one (or raises)."""

    name = "lying"
    template_hash = "h"
    text_rules = None

    def __init__(self, honest: bool = True, fail: Exception | None = None) -> None:
        self.honest, self.fail = honest, fail

    def generate_all(self, items):
        if self.fail is not None:
            raise self.fail
        out = []
        for _image, regions in items:
            region = regions[0]
            true_box = "({},{}),({},{})".format(*region.bbox_1000)
            turns = [
                QA(
                    "VG",
                    "where is the liver?",
                    "<ref>liver</ref><box>(1,1),(2,2)</box>",  # no region has this box
                    (region.region_id,),
                )
            ]
            if self.honest:
                turns.append(
                    QA(
                        "VG",
                        f"where is the {region.label}?",
                        f"<ref>{region.label}</ref><box>{true_box}</box>",
                        (region.region_id,),
                    )
                )
            out.append(Generated(tuple(turns), rejects=(("llm_invalid_answer", "bad json"),)))
        return out


def test_false_turns_are_dropped_and_the_honest_ones_kept() -> None:
    rows = build_shard_rows([_case("a", _ct(_liver()))], CONFIG, LyingGenerator(), IO)
    assert len(rows.conversations) == 2
    assert all(len(c["qa"]) == 1 and "liver" in c["qa"][0]["answer"] for c in rows.conversations)
    reasons = [r["reason"] for r in rows.rejects]
    assert reasons.count("llm_invalid_answer") == 2 and len(reasons) == 4
    assert {r["stage"] for r in rows.rejects} == {"generate", "verify"}


def test_an_image_with_no_true_turn_is_dropped_with_its_regions() -> None:
    rows = build_shard_rows([_case("a", _ct(_liver()))], CONFIG, LyingGenerator(False), IO)
    assert not rows.images and not rows.regions and not rows.conversations
    assert "empty_conversation" in _reasons(rows)


def test_a_generator_that_raises_costs_its_images_not_the_shard() -> None:
    rows = build_shard_rows(
        [_case("a", _ct(_liver()))], CONFIG, LyingGenerator(fail=RuntimeError("boom")), IO
    )
    assert not rows.images and {r["stage"] for r in rows.rejects} == {"generate"}
    assert _reasons(rows) == {"unexpected_error"}


def test_an_infrastructure_failure_fails_the_shard() -> None:
    with pytest.raises(OSError):
        build_shard_rows(
            [_case("a", error=OSError(5, "Input/output error"))], CONFIG, TemplateGenerator(), IO
        )


def test_rows_map_back_to_the_facts_they_were_made_of() -> None:
    rows = build_shard_rows([_case("a", _ct(_liver()))], CONFIG, TemplateGenerator(), IO)
    for row in rows.regions:
        fact = region_facts(row)
        box, side = tuple(row["bbox"]), row["laterality"]
        assert region_row(fact, row["image_id"], box, side, row["source_label"]) == row
    for turn in rows.conversations[0]["qa"]:
        assert qa_row(qa_of(turn)) == turn
