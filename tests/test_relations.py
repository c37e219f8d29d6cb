"""Relations between regions (``medgrit.core.relations``): computed from label maps, stored in
the regions table (schema version 2, version 1 still read), stated by the RC templates and given
to the LLM as facts."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import build_demo_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medgrit.adapters.llm.generator import LLMGenerator
from medgrit.adapters.store.parquet import read_parquet
from medgrit.adapters.store.validate import read_table, validate_dataset
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core import pipeline
from medgrit.core.generation import ImageFacts, RegionFacts, TurnPlan
from medgrit.core.pipeline import describe_regions
from medgrit.core.relations import (
    RELATIONS,
    box_relations,
    image_side,
    mask_relations,
    prompt_relations,
    relation_holds,
    relation_phrase,
    relations_between,
)
from medgrit.core.rows import region_facts, region_row
from medgrit.core.text import format_box
from medgrit.schemas.config import BuildConfig, LLMConfig
from medgrit.schemas.tables import SCHEMA_VERSION, TABLES, schema_for

SETTINGS = BuildConfig(out="unused", min_area=1)
NAMES = {1: "liver", 2: "lesion", 3: "spleen", 4: "right kidney", 5: "stomach"}
IMAGE_ID = "3f2a9c01d4e5b6a7-a0001"


def describe(label_map: np.ndarray, names: dict[int, str] = NAMES) -> list[RegionFacts]:
    """The regions of a label map as the build describes them."""
    return list(describe_regions(label_map, names, SETTINGS, IMAGE_ID).facts)


def one(regions: list[RegionFacts], label: str, instance: int = 0) -> RegionFacts:
    return next(r for r in regions if r.label == label and r.instance == instance)


def facts(rid: str, label_id: int, box: tuple[int, int, int, int], area: int) -> RegionFacts:
    """Facts of a region given by its box and area alone (box relations read only these)."""
    return RegionFacts(
        rid, NAMES.get(label_id, "lesion"), label_id, 0, box, area, "center", "small"
    )


def liver_with_lesion(lesion_rows: slice, lesion_cols: slice) -> np.ndarray:
    m = np.zeros((100, 100), np.uint8)
    m[10:70, 10:70] = 1
    m[lesion_rows, lesion_cols] = 2
    return m


# --- mask relations from label maps ------------------------------------------------------------


def test_a_lesion_in_a_hole_of_the_liver_lies_within_it():
    regions = describe(liver_with_lesion(slice(30, 40), slice(30, 40)))
    liver, lesion = one(regions, "liver"), one(regions, "lesion")

    assert lesion.relations == (("inside", liver.region_id),)
    assert liver.relations == (("contains", lesion.region_id),)
    assert relation_holds("inside", lesion, liver)
    assert relation_holds("contains", liver, lesion)
    assert not relation_holds("adjacent", lesion, liver)
    # The lesion's centre lies in the liver's box: no direction is stated between them.
    assert relations_between(lesion, liver) == {"inside", "smaller"}
    assert relations_between(liver, lesion) == {"contains", "larger"}


def test_a_lesion_on_the_edge_of_the_liver_is_adjacent_not_within():
    regions = describe(liver_with_lesion(slice(30, 40), slice(65, 75)))
    liver, lesion = one(regions, "liver"), one(regions, "lesion")

    assert lesion.relations == (("adjacent", liver.region_id),)
    assert liver.relations == (("adjacent", lesion.region_id),)
    assert not relation_holds("inside", lesion, liver)


@pytest.mark.parametrize(("outside", "merged"), [(3, "inside"), (4, "adjacent")])
def test_a_region_is_within_another_when_90_percent_of_it_is(outside, merged):
    # 100 lesion pixels in a hole of the liver and a second, far part of 9 or 16 pixels: 92%
    # or 86% of the lesion lies within the liver.
    m = liver_with_lesion(slice(30, 40), slice(30, 40))
    m[85 : 85 + outside, 85 : 85 + outside] = 2
    regions = describe(m)
    liver = one(regions, "liver")
    lesion, in_liver, far = (one(regions, "lesion", i) for i in range(3))

    assert (lesion.area, in_liver.area, far.area) == (100 + outside**2, 100, outside**2)
    assert lesion.relations == ((merged, liver.region_id),)
    assert in_liver.relations == (("inside", liver.region_id),)
    assert far.relations == ()
    assert ("contains", in_liver.region_id) in liver.relations
    # Regions of one label have no relations with each other, nor with their merged region.
    assert relations_between(in_liver, far) == relations_between(lesion, far) == frozenset()


def test_touching_organs_are_adjacent_and_a_gap_of_one_pixel_is_not():
    m = np.zeros((100, 100), np.uint8)
    m[10:50, 10:40] = 1  # liver
    m[10:50, 40:70] = 3  # spleen, sharing the liver's right edge
    m[50:60, 70:80] = 4  # right kidney, touching the spleen at one corner only
    m[10:20, 71:90] = 5  # stomach, one column of background from the spleen
    regions = describe(m)
    liver, spleen = one(regions, "liver"), one(regions, "spleen")
    kidney, stomach = one(regions, "right kidney"), one(regions, "stomach")

    assert liver.relations == (("adjacent", spleen.region_id),)
    assert spleen.relations == (("adjacent", liver.region_id), ("adjacent", kidney.region_id))
    assert kidney.relations == (("adjacent", spleen.region_id),)
    assert stomach.relations == ()
    assert relation_holds("adjacent", kidney, spleen)
    assert not relation_holds("adjacent", stomach, spleen)


def test_separated_regions_have_only_their_box_relations():
    m = np.zeros((100, 100), np.uint8)
    m[5:25, 5:45] = 1  # liver: upper left, the largest
    m[70:80, 60:80] = 4  # right kidney: lower right
    m[5:25, 70:80] = 3  # spleen: upper right, beside the liver, as large as the kidney
    regions = describe(m)
    liver, kidney, spleen = (one(regions, n) for n in ("liver", "right kidney", "spleen"))

    assert all(r.relations == () for r in regions)
    assert relations_between(liver, kidney) == {"above", "left_of", "larger"}
    assert relations_between(kidney, liver) == {"below", "right_of", "smaller"}
    assert relations_between(liver, spleen) == {"left_of", "larger"}
    # The spleen's centre is right of the kidney's, whose centre lies on the spleen's left edge.
    assert relations_between(spleen, kidney) == {"above", "right_of"}


def test_no_direction_holds_when_a_box_holds_the_other_centre():
    wide = facts("r0", 1, (0, 400, 1000, 600), 1000)
    reaching = facts("r1", 2, (450, 100, 550, 520), 1000)  # holds the wide box's centre
    higher = facts("r2", 3, (0, 100, 1000, 300), 1000)  # holds neither centre

    assert box_relations(reaching, wide) == frozenset()
    assert box_relations(wide, reaching) == frozenset()
    assert box_relations(higher, wide) == {"above"}
    assert box_relations(wide, higher) == {"below"}


def test_larger_and_smaller_take_a_ratio_of_one_and_a_half():
    a = facts("r0", 1, (0, 0, 10, 10), 150)
    b = facts("r1", 2, (0, 0, 10, 10), 100)
    c = facts("r2", 3, (0, 0, 10, 10), 101)

    assert relations_between(a, b) == {"larger"}
    assert relations_between(b, a) == {"smaller"}
    assert relations_between(a, c) == frozenset()


def test_an_instance_region_is_its_own_component_not_its_label_in_its_box():
    # A C-shaped part of the liver, a second part in its bay, and the stomach touching only
    # the second part: the stomach is adjacent to that part and to the liver as a whole.
    m = np.zeros((100, 100), np.uint8)
    m[10:90, 10:20] = 1
    m[10:20, 10:80] = 1
    m[80:90, 10:80] = 1
    m[40:60, 30:50] = 1
    m[45:55, 50:60] = 5
    regions = describe(m)
    liver, c_part, bay_part = (one(regions, "liver", i) for i in range(3))
    stomach = one(regions, "stomach")

    assert (c_part.area, bay_part.area) == (80 * 10 + 2 * 60 * 10, 400)
    assert bay_part.relations == (("adjacent", stomach.region_id),)
    assert c_part.relations == ()
    assert liver.relations == (("adjacent", stomach.region_id),)
    assert stomach.relations == (
        ("adjacent", liver.region_id),
        ("adjacent", bay_part.region_id),
    )


def reference_relations(label_map: np.ndarray, regions: list[RegionFacts], bboxes) -> list:
    """The mask relations by their definition, on whole images with scipy alone."""
    eight = np.ones((3, 3), dtype=bool)

    def mask(i: int) -> np.ndarray:
        region, (x0, y0, x1, y1) = regions[i], bboxes[i]
        in_box = np.zeros(label_map.shape, dtype=bool)
        in_box[y0:y1, x0:x1] = True
        own = (label_map == region.label_id) & in_box
        if region.instance == 0:
            return own
        parts, _ = ndimage.label(own, eight)
        for number, found in enumerate(ndimage.find_objects(parts), 1):
            if (found[1].start, found[0].start, found[1].stop, found[0].stop) == (x0, y0, x1, y1):
                return parts == number
        raise AssertionError("no component fills the box")

    def inside(a: int, b: int) -> bool:
        share = np.count_nonzero(mask(a) & ndimage.binary_fill_holes(mask(b)))
        return regions[a].area < regions[b].area and share >= 0.9 * np.count_nonzero(mask(a))

    found: list[list[tuple[str, str]]] = [[] for _ in regions]
    for a in range(len(regions)):
        for b in range(len(regions)):
            if a == b or regions[a].label_id == regions[b].label_id:
                continue
            other = regions[b].region_id
            if inside(a, b):
                found[a].append(("inside", other))
            elif inside(b, a):
                found[a].append(("contains", other))
            elif np.any(ndimage.binary_dilation(mask(a), eight) & mask(b)):
                found[a].append(("adjacent", other))
    return [tuple(f) for f in found]


@st.composite
def painted_maps(draw: st.DrawFn) -> np.ndarray:
    """Label maps of painted rectangles and rings (rings hold what is painted inside them)."""
    height, width = draw(st.integers(4, 20)), draw(st.integers(4, 20))
    m = np.zeros((height, width), np.uint8)
    for _ in range(draw(st.integers(1, 6))):
        label = draw(st.integers(1, 3))
        x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        x1, y1 = draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))
        if draw(st.booleans()):
            m[y0:y1, x0:x1] = label
        else:
            m[y0:y1, x0] = m[y0:y1, x1 - 1] = m[y0, x0:x1] = m[y1 - 1, x0:x1] = label
    return m


RANDOM_MAPS = arrays(
    np.uint8, st.tuples(st.integers(3, 14), st.integers(3, 14)), elements=st.integers(0, 3)
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(painted_maps(), RANDOM_MAPS))
def test_mask_relations_follow_their_definition(label_map):
    described = describe_regions(label_map, {1: "a", 2: "b", 3: "c"}, SETTINGS, IMAGE_ID)
    regions, bboxes = list(described.facts), list(described.bboxes)

    found = mask_relations(label_map, regions, bboxes)
    assert list(found) == reference_relations(label_map, regions, bboxes)
    assert found == tuple(r.relations for r in regions)


# --- words ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x0", "x1", "side"),
    [(0, 958, "left"), (0, 960, "midline"), (40, 1000, "midline"), (42, 1000, "right")],
)
def test_image_side_is_the_half_holding_the_box_centre(x0, x1, side):
    assert image_side(facts("r0", 1, (x0, 0, x1, 10), 10)) == side


def test_each_relation_has_its_phrase():
    assert [relation_phrase(r, "liver") for r in RELATIONS] == [
        "above the liver",
        "below the liver",
        "to the left of the liver in the image",
        "to the right of the liver in the image",
        "within the liver",
        "contains the liver",
        "adjacent to the liver",
        "larger than the liver",
        "smaller than the liver",
    ]


def test_an_unknown_relation_is_refused():
    a, b = facts("r0", 1, (0, 0, 10, 10), 10), facts("r1", 2, (20, 0, 30, 10), 10)

    with pytest.raises(ValueError, match="unknown relation 'beside'"):
        relation_holds("beside", a, b)
    with pytest.raises(ValueError, match="unknown relation"):
        relation_phrase("near", "liver")


def test_prompt_relations_come_by_priority_then_region_order_and_name_shown_regions():
    m = liver_with_lesion(slice(30, 40), slice(30, 40))
    m[10:70, 70:90] = 3  # spleen beside the liver
    m[80:95, 10:30] = 4  # right kidney below the liver
    regions = describe(m)
    liver, lesion, kidney = (one(regions, n) for n in ("liver", "lesion", "right kidney"))
    ids = {r.region_id: f"r{i}" for i, r in enumerate(regions)}

    assert prompt_relations(liver, regions, ids) == [
        "contains the lesion (r1)",
        "adjacent to the spleen (r2)",
        "above the right kidney (r3)",
        "to the left of the spleen in the image (r2)",
    ]
    assert prompt_relations(liver, regions, ids, limit=2) == [
        "contains the lesion (r1)",
        "adjacent to the spleen (r2)",
    ]
    shown = {k: v for k, v in ids.items() if k != lesion.region_id}
    assert prompt_relations(liver, regions, shown, limit=1) == ["adjacent to the spleen (r2)"]
    assert prompt_relations(kidney, regions, ids)[:3] == [
        "below the liver (r0)",
        "below the lesion (r1)",
        "below the spleen (r2)",
    ]


# --- the regions table ----------------------------------------------------------------------------


def written_regions(tmp_path: Path, version: int) -> tuple[list[RegionFacts], Path]:
    """A lesion within the liver, written as a regions part of schema ``version``."""
    m = liver_with_lesion(slice(30, 40), slice(30, 40))
    described = describe_regions(m, NAMES, SETTINGS, IMAGE_ID)
    schema = schema_for("regions", version)
    rows = [
        {k: v for k, v in region_row(f, IMAGE_ID, b, None, f.label).items() if k in schema.names}
        for f, b in zip(described.facts, described.bboxes, strict=True)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "part-00000.parquet")
    return list(described.facts), tmp_path / "part-00000.parquet"


def test_relations_round_trip_through_the_regions_table(tmp_path: Path):
    regions, path = written_regions(tmp_path, SCHEMA_VERSION)

    table = read_parquet(path, schema=TABLES["regions"])
    assert table.column("relations").to_pylist() == [
        [{"relation": "contains", "region_id": regions[1].region_id}],
        [{"relation": "inside", "region_id": regions[0].region_id}],
    ]
    assert [region_facts(r) for r in table.to_pylist()] == regions
    assert not TABLES["regions"].field("relations").nullable


def test_a_version_1_regions_table_reads_as_regions_without_relations(tmp_path: Path):
    regions, path = written_regions(tmp_path, 1)

    assert "relations" not in pq.read_schema(path).names
    read = read_parquet(path, schema=TABLES["regions"]).to_pylist()
    assert [r["relations"] for r in read] == [None, None]
    assert [region_facts(r) for r in read] == [replace(f, relations=()) for f in regions]


@pytest.fixture(scope="module")
def demo_build(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("relations") / "ds", demo_dir, 6)


@pytest.fixture(scope="module")
def version_1_build(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build as schema version 1 wrote it: no mask relations (so no turn states one) and
    regions parts without the column, in a manifest of version 1."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "mask_relations", lambda _m, regions, _b: ((),) * len(regions))
        out = build_demo_dataset(tmp_path_factory.mktemp("v1") / "ds", demo_dir, 6)
    _rewrite_regions(out, _as_version_1)
    _rewrite_regions(out, _images_as_version_1, table="images")
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["schema_version"] = 1
    (out / "dataset.json").write_text(json.dumps(manifest))
    return out


def _rewrite_regions(out: Path, change, table: str = "regions") -> None:
    """Rewrite every part of ``table`` through ``change(rows) -> (rows, schema)`` and record
    it."""
    manifest = json.loads((out / "dataset.json").read_text())
    for shard in manifest["shards"]:
        rel = f"{table}/part-{shard['id']}.parquet"
        rows, schema = change(pq.read_table(out / rel).to_pylist())
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / rel)
        shard["files"][rel] = hashlib.sha256((out / rel).read_bytes()).hexdigest()
    (out / "dataset.json").write_text(json.dumps(manifest))


def _as_version_1(rows: list[dict], table: str = "regions") -> tuple[list[dict], pa.Schema]:
    v1 = schema_for(table, 1)
    return [{k: v for k, v in r.items() if k in v1.names} for r in rows], v1


def _images_as_version_1(rows: list[dict]) -> tuple[list[dict], pa.Schema]:
    return _as_version_1(rows, "images")


def test_a_build_stores_relations_and_validates(demo_build: Path):
    regions = read_table(demo_build, "regions")

    assert json.loads((demo_build / "dataset.json").read_text())["schema_version"] == 3
    assert any(r["relations"] for r in regions)
    assert validate_dataset(demo_build) == []


def test_validate_accepts_a_version_1_dataset_and_refuses_mixed_versions(
    version_1_build: Path, tmp_path: Path
):
    mixed = tmp_path / "mixed"
    shutil.copytree(version_1_build, mixed)
    manifest = json.loads((mixed / "dataset.json").read_text())
    manifest["schema_version"] = SCHEMA_VERSION
    (mixed / "dataset.json").write_text(json.dumps(manifest))

    assert validate_dataset(version_1_build) == []
    assert all(r["relations"] is None for r in read_table(version_1_build, "regions"))
    problems = validate_dataset(mixed)
    assert problems and all("regions/part-" in p or "images/part-" in p for p in problems)
    assert any("schema differs from the contract" in p for p in problems)


def test_validate_names_a_relation_to_no_region_of_the_image(demo_build: Path, tmp_path: Path):
    out = tmp_path / "ds"
    shutil.copytree(demo_build, out)

    def dangling(rows: list[dict]) -> tuple[list[dict], pa.Schema]:
        rows[0]["relations"] = [{"relation": "adjacent", "region_id": "nowhere-r000"}]
        return rows, TABLES["regions"]

    _rewrite_regions(out, dangling)

    problems = validate_dataset(out)
    assert any("relation 'adjacent' to nowhere-r000" in p for p in problems), problems


# --- templates and LLM facts ---------------------------------------------------------------------


def test_the_relation_phrasing_states_the_region_first_relation():
    m = liver_with_lesion(slice(30, 40), slice(30, 40))
    m[80:95, 10:30] = 4
    regions = describe(m)
    by_id = {r.region_id: r for r in regions}
    image = ImageFacts(IMAGE_ID, "ct", "axial", 100, 100)
    lesion, kidney = one(regions, "lesion"), one(regions, "right kidney")

    def rc(region: RegionFacts) -> str:
        plan = TurnPlan("RC", (region.region_id,), 0, 2)
        # A seed whose draw states the relation (one RC turn in RELATION_SHARE does).
        generator = next(
            g for g in map(TemplateGenerator, range(100)) if g._states_relation(image, plan)
        )
        return generator.render_turn(image, plan, by_id).answer

    assert TemplateGenerator().variants["RC"] == (3, 3)
    assert rc(lesion) == (
        f"The lesion in {format_box(lesion.bbox_1000)}, in the center of this axial CT image, "
        "lies within the liver."
    )
    assert rc(kidney) == (
        f"The right kidney in {format_box(kidney.bbox_1000)}, on the patient's right side, "
        "in the lower left of this axial CT image, lies below the liver."
    )


def test_template_conversations_draw_the_relation_phrasing():
    m = liver_with_lesion(slice(30, 40), slice(30, 40))
    regions = describe(m)
    image_ids = [f"3f2a9c01d4e5b6a7-a{i:04d}" for i in range(40)]
    answers = [
        turn.answer
        for image_id in image_ids
        for turn in TemplateGenerator(seed=0).generate(
            ImageFacts(image_id, "ct", "axial", 100, 100), regions
        )
        if turn.task == "RC"
    ]

    assert any(a.endswith((" lies within the liver.", " contains the lesion.")) for a in answers)


def test_the_llm_facts_give_each_region_its_image_side_and_relations(tmp_path: Path):
    m = liver_with_lesion(slice(30, 40), slice(30, 40))
    m[10:70, 70:90] = 3
    regions = describe(m)
    config = LLMConfig(model="m", base_url="http://127.0.0.1:9", response_format="json_schema")
    generator = LLMGenerator(config, "k", tmp_path)
    item = generator._item(ImageFacts(IMAGE_ID, "ct", "axial", 100, 100), regions)

    shown = json.loads(item.facts_json)["regions"]
    assert [(r["id"], r["label"], r["image_side"]) for r in shown] == [
        ("r0", "liver", "left"),
        ("r1", "lesion", "left"),
        ("r2", "spleen", "right"),
    ]
    assert shown[0]["relations"] == [
        "contains the lesion (r1)",
        "adjacent to the spleen (r2)",
        "to the left of the spleen in the image (r2)",
        "larger than the lesion (r1)",
    ]
    assert shown[1]["relations"][0] == "within the liver (r0)"
    user = generator.request_for(item, 0).messages[1]["content"]
    assert "adjacent to the liver (r0)" in user
