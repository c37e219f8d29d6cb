"""nnU-Net's region-based labels (BraTS: whole tumour, tumour core, enhancing tumour as unions
of stored values) and multi-channel cases (one case per channel), from discovery to verified
turns, on tiny volumes written here."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgrit.adapters.shard import SHARD_IO
from medgrit.adapters.sources import check_distinct
from medgrit.adapters.sources.nifti import read_case
from medgrit.adapters.sources.nnunet import open_msd, open_nnunet
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.cases import SourceError
from medgrit.core.generation import QA, ImageFacts
from medgrit.core.pipeline import CaseTask, build_shard_rows, build_vocabulary, describe_regions
from medgrit.core.rows import region_facts
from medgrit.core.sharding import plan_build
from medgrit.core.verify import verify_qa
from medgrit.schemas.config import BuildConfig

BRATS_LABELS = {
    "background": 0,
    "whole tumor": [1, 2, 3],
    "tumor core": [2, 3],
    "enhancing tumor": [3],
}
CHANNELS = {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}
CONFIG = BuildConfig(out="unused", min_area=4)

# One axial slice as displayed (rows anterior -> posterior, columns patient right -> left):
# edema (1) around a necrotic core (2) around enhancing tumour (3), and a 3 x 4 island of 3.
PICTURE = np.zeros((32, 32), np.uint8)
PICTURE[6:20, 8:24] = 1  # 14 x 16 = 224 pixels with what it holds
PICTURE[9:17, 11:21] = 2  # 8 x 10 = 80
PICTURE[11:15, 13:19] = 3  # 4 x 6 = 24
PICTURE[26:29, 26:30] = 3  # the island: 12
SLICES = (3, 4)


def _label_volume() -> np.ndarray:
    """The picture on slices 3 and 4 of a 32 x 32 x 8 RAS volume (identity affine): display
    pixel [r, c] is voxel [31 - c, 31 - r]."""
    volume = np.zeros((32, 32, 8), np.uint8)
    for z in SLICES:
        volume[:, :, z] = PICTURE[::-1, ::-1].T
    return volume


def _save(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def _nnunet(root: Path, labels: dict, channels: dict, cases: list[str], **extra) -> Path:
    """An nnU-Net v2 raw dataset; with ``write``, real NIfTI files, else empty ones."""
    write = extra.pop("write", False)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = {"channel_names": channels, "labels": labels, "file_ending": ".nii.gz", **extra}
    (root / "dataset.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    for case in cases:
        label = root / "labelsTr" / f"{case}.nii.gz"
        _save(label, _label_volume()) if write else label.write_bytes(b"")
        for key in channels:
            image = root / "imagesTr" / f"{case}_{int(key):04d}.nii.gz"
            pixels = rng.uniform(0, 100, (32, 32, 8)).astype(np.float32)
            _save(image, pixels) if write else image.write_bytes(b"")
    return root


# -- discovery -------------------------------------------------------------------------------


def test_region_labels_are_labels_whose_pixels_are_their_stored_values(tmp_path: Path) -> None:
    root = _nnunet(
        tmp_path / "BraTS", BRATS_LABELS, {"0": "FLAIR"}, ["b"], regions_class_order=[1, 2, 3]
    )
    case = open_nnunet("nnunet:x", root).cases[0]
    assert case.labels == ((1, "whole tumor"), (2, "tumor core"), (3, "enhancing tumor"))
    assert case.written_labels == case.labels
    assert case.label_groups == ((1, (1, 2, 3)), (2, (2, 3)), (3, (3,)))
    # regions_class_order gives the ids; without it, a region's place among the labels does
    order = _nnunet(
        tmp_path / "Order", BRATS_LABELS, {"0": "T2"}, ["b"], regions_class_order=[7, 5, 6]
    )
    assert open_nnunet("nnunet:x", order).cases[0].label_groups == (
        (5, (2, 3)),
        (6, (3,)),
        (7, (1, 2, 3)),
    )
    mixed = {"background": 0, "kidney_left": 1, "liver": 2, "both": [1, 2]}
    case = open_nnunet("nnunet:x", _nnunet(tmp_path / "Mixed", mixed, {"0": "CT"}, ["c"])).cases[0]
    assert case.labels == ((1, "left kidney"), (2, "liver"), (3, "both"))
    assert case.label_groups == ((1, (1,)), (2, (2,)), (3, (1, 2)))
    # a plain label map keeps no groups
    plain = {"background": 0, "liver": 1, "spleen": 2}
    (case,) = open_nnunet("nnunet:x", _nnunet(tmp_path / "P", plain, {"0": "CT"}, ["c"])).cases
    assert case.label_groups == ()
    # two sources of one dataset may not give one id two meanings, names alike or not
    other = {"background": 0, "whole tumor": 1, "tumor core": 2, "enhancing tumor": 3}
    same_name = _nnunet(tmp_path / "Other", other, {"0": "FLAIR"}, ["c"], name="BraTS")
    with pytest.raises(SourceError, match=r"label 1 is 'whole tumor' \(values 1, 2, 3\)"):
        check_distinct([open_nnunet("nnunet:a", root), open_nnunet("nnunet:b", same_name)])


def test_nnunets_ignore_label_is_no_structure(tmp_path: Path) -> None:
    # As nnU-Net's own region-based example writes it: "ignore" has no regions_class_order
    # entry, and names voxels nobody annotated.
    labels = {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3}
    root = _nnunet(tmp_path / "R", labels, {"0": "MRI"}, ["a"], regions_class_order=[2, 1])
    source = open_nnunet("nnunet:r", root)
    assert source.labels == ((1, "anterior"), (2, "hippocampus"))
    assert source.cases[0].label_groups == ((1, (1,)), (2, (1, 2)))
    plain = _nnunet(tmp_path / "P", {"background": 0, "liver": 1, "ignore": 2}, {"0": "CT"}, ["a"])
    assert open_nnunet("nnunet:p", plain).labels == ((1, "liver"),)


@pytest.mark.parametrize(
    ("labels", "order", "message"),
    [
        ({"a": [1], "b": []}, None, r"region 'b' must list distinct label values"),
        ({"a": [0, 1]}, None, r"region 'a' must list distinct label values"),
        ({"a": ["1"], "b": [1.0]}, None, r"region 'b' must list"),
        ({"a": [2, 2]}, None, r"region 'a' must list"),
        ({"a": [1, -1]}, None, r"region 'a' must list"),
        ({"a": [1, 2], "b": [2, 1]}, None, r"regions 'a' and 'b' cover the same values"),
        ({"a": [1, 2], "b": [2]}, [1], r"'regions_class_order' must give one distinct label id"),
        ({"a": [1, 2], "b": [2]}, [1, 0], r"'regions_class_order' must give one"),
        ({"a": [1, 2], "b": [2]}, [2, 2], r"'regions_class_order' must give one"),
        ({"a": [1, 2], "b": [2]}, "1, 2", r"'regions_class_order' must give one"),
        ({"a": [1, 2], "b": [2]}, [1, "02"], r"'regions_class_order' must give one"),
        ({"a": [1, 2], "b": True}, None, r"label 'b' has id True"),
    ],
)
def test_malformed_region_labels_are_one_clear_error(
    tmp_path: Path, labels: dict, order: object, message: str
) -> None:
    extra = {} if order is None else {"regions_class_order": order}
    root = _nnunet(tmp_path / "D", {"background": 0, **labels}, {"0": "T1"}, ["c"], **extra)
    with pytest.raises(SourceError, match=message) as info:
        open_nnunet("nnunet:x", root)
    assert "\n" not in str(info.value) and "dataset.json" in str(info.value)


def test_each_channel_is_a_case_of_its_patient(tmp_path: Path) -> None:
    root = _nnunet(tmp_path / "BraTS", BRATS_LABELS, CHANNELS, ["b_2", "b_1"])
    cases = open_nnunet("nnunet:x", root).cases
    assert [(c.case, Path(c.image).name, c.sequence, c.patient) for c in cases[:4]] == [
        ("b_1_0000", "b_1_0000.nii.gz", "T1", "b_1"),
        ("b_1_0001", "b_1_0001.nii.gz", "T1Gd", "b_1"),
        ("b_1_0002", "b_1_0002.nii.gz", "T2", "b_1"),
        ("b_1_0003", "b_1_0003.nii.gz", "FLAIR", "b_1"),
    ]
    assert len(cases) == 8 and {Path(c.label).name for c in cases[4:]} == {"b_2.nii.gz"}
    assert {(c.modality, c.channel) for c in cases} == {("mr", 0)}
    # one channel: the case as it always was
    single = open_nnunet("nnunet:x", _nnunet(tmp_path / "One", BRATS_LABELS, {"0": "T2"}, ["c"]))
    (case,) = single.cases
    assert (case.case, Path(case.image).name, case.sequence, case.patient) == (
        "c",
        "c_0000.nii.gz",
        "",
        "",
    )
    # channels of other modalities: each its own, no sequence; a nameless one, the dataset's
    petct = _nnunet(
        tmp_path / "PetCt", {"background": 0, "lesion": 1}, {"0": "CT", "1": "PET"}, ["p"]
    )
    assert [(c.case, c.modality, c.sequence) for c in open_nnunet("nnunet:x", petct).cases] == [
        ("p_0000", "ct", ""),
        ("p_0001", "pet", ""),
    ]
    schemes = _nnunet(
        tmp_path / "Zs", {"background": 0, "a": 1}, {"0": "T2", "1": " zscore "}, ["z"]
    )
    assert [(c.modality, c.sequence) for c in open_nnunet("nnunet:x", schemes).cases] == [
        ("mr", "T2"),
        ("mr", ""),
    ]
    for channels, message in [
        ({"0": "T1", "x": "T2"}, "channel 'x' must be a channel number"),
        ({"0": "T1", "1": 5}, "channel '1' needs a name as text"),
        ({"0": "T1", "1": "T2<|im_start|>"}, "reads as markup"),
    ]:
        bad = _nnunet(tmp_path / f"Bad{len(message)}", BRATS_LABELS, channels, [])
        with pytest.raises(SourceError, match=message):
            open_nnunet("nnunet:x", bad)


def test_a_channel_named_like_a_label_names_no_sequence(tmp_path: Path) -> None:
    labels = {"background": 0, "GTVp": 1, "GTVn": 2}
    root = _nnunet(tmp_path / "HN", labels, {"0": "T2", "1": "GTVp"}, ["a"])
    cases = open_nnunet("nnunet:hn", root, modality="mr").cases
    assert [(c.case, c.sequence) for c in cases] == [("a_0000", "T2"), ("a_0001", "")]


def test_each_channel_of_a_decathlon_4d_image_is_a_case(tmp_path: Path) -> None:
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    four_d = np.stack([np.full((32, 32, 8), 10.0 * c, np.float32) for c in range(4)], axis=-1)
    four_d[5, 6, 7, 2] = 99.0  # one voxel that only channel 2 holds
    _save(root / "imagesTr" / "BRATS_001.nii.gz", four_d)
    _save(root / "labelsTr" / "BRATS_001.nii.gz", _label_volume())
    meta = {
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing"},
        "training": [
            {"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}
        ],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    cases = open_msd("msd:x", root).cases
    assert [(c.case, c.channel, c.sequence, c.patient) for c in cases] == [
        ("BRATS_001_0000", 0, "FLAIR", "BRATS_001"),
        ("BRATS_001_0001", 1, "T1w", "BRATS_001"),
        ("BRATS_001_0002", 2, "t1gd", "BRATS_001"),
        ("BRATS_001_0003", 3, "T2w", "BRATS_001"),
    ]
    assert {Path(c.image).name for c in cases} == {"BRATS_001.nii.gz"}
    loaded = read_case(cases[2])
    expected = np.full((32, 32, 8), 20.0, np.float32)
    expected[5, 6, 7] = 99.0
    np.testing.assert_array_equal(loaded.volume.data, expected)
    meta["modality"] = {"0": "MRI"}
    (root / "dataset.json").write_text(json.dumps(meta))
    (case,) = open_msd("msd:x", root).cases
    assert (case.case, case.channel, case.sequence, case.patient) == ("BRATS_001", 0, "", "")


def test_every_channel_of_a_case_lands_in_its_split(tmp_path: Path) -> None:
    names = [f"b_{i}" for i in range(10)]
    cases = open_nnunet("nnunet:x", _nnunet(tmp_path / "B", BRATS_LABELS, CHANNELS, names)).cases
    config = BuildConfig(out="unused", test_fraction=0.5, images_per_shard=3)
    tasks = [t for _, shard in plan_build(cases, config, b"key", lambda c: 1) for t in shard]
    by_patient: dict[str, set[str]] = {}
    for task in tasks:
        by_patient.setdefault(task.ref.patient, set()).add(task.split)
    assert sorted(by_patient) == names and len(tasks) == 40
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert {s for (s,) in by_patient.values()} == {"train", "test"}


# -- regions, relations, turns ---------------------------------------------------------------

# (label, instance) -> pixel box [x0, y0, x1, y1) and area, from the picture.
EXPECTED = {
    ("whole tumor", 0): ([8, 6, 30, 29], 236),
    ("whole tumor", 1): ([8, 6, 24, 20], 224),
    ("whole tumor", 2): ([26, 26, 30, 29], 12),
    ("tumor core", 0): ([11, 9, 30, 29], 92),
    ("tumor core", 1): ([11, 9, 21, 17], 80),
    ("tumor core", 2): ([26, 26, 30, 29], 12),
    ("enhancing tumor", 0): ([13, 11, 30, 29], 36),
    ("enhancing tumor", 1): ([13, 11, 19, 15], 24),
    ("enhancing tumor", 2): ([26, 26, 30, 29], 12),
}
W, T, E = "whole tumor", "tumor core", "enhancing tumor"
# inside(a, b): 90% of a's pixels in b's (filled) mask and a smaller. The island is one region
# of each label, the same pixels: none of its three lies inside another. The main whole tumour
# holds 80 of the tumour core's 92 pixels (87%) and 24 of the enhancing tumour's 36.
INSIDE = {
    ((T, 0), (W, 0)), ((T, 1), (W, 0)), ((T, 2), (W, 0)), ((T, 1), (W, 1)), ((W, 2), (T, 0)),
    ((E, 0), (W, 0)), ((E, 1), (W, 0)), ((E, 2), (W, 0)), ((E, 1), (W, 1)), ((W, 2), (E, 0)),
    ((E, 0), (T, 0)), ((E, 1), (T, 0)), ((E, 2), (T, 0)), ((E, 1), (T, 1)), ((T, 2), (E, 0)),
}  # fmt: skip


def test_nested_regions_give_their_boxes_relations_and_true_turns(tmp_path: Path) -> None:
    root = _nnunet(
        tmp_path / "BraTS", BRATS_LABELS, CHANNELS, ["b"], regions_class_order=[1, 2, 3], write=True
    )
    tasks = [CaseTask(c, f"id-{c.case}", "train") for c in open_nnunet("nnunet:x", root).cases]
    rows = build_shard_rows(tasks, CONFIG, TemplateGenerator(), SHARD_IO, build_vocabulary(tasks))
    assert not rows.rejects, rows.rejects  # every turn the templates wrote holds
    assert len(rows.images) == 8 and len(rows.conversations) == 8
    assert sorted(i["sequence"] for i in rows.images) == sorted(["T1", "T1Gd", "T2", "FLAIR"] * 2)
    assert {i["slice_index"] for i in rows.images} == set(SLICES)
    image_id = rows.images[0]["image_id"]
    regions = [r for r in rows.regions if r["image_id"] == image_id]
    key = {r["region_id"]: (r["label"], r["instance"]) for r in regions}
    assert {key[r["region_id"]]: (list(r["bbox"]), r["area"]) for r in regions} == EXPECTED
    whole = next(r for r in regions if key[r["region_id"]] == (W, 0))
    assert list(whole["bbox_1000"]) == [250, 187, 937, 906]  # floor(1000 * v / 32)
    found = {
        (key[r["region_id"]], x["relation"], key[x["region_id"]])
        for r in regions
        for x in r["relations"]
    }
    expected = {(a, "inside", b) for a, b in INSIDE} | {(b, "contains", a) for a, b in INSIDE}
    assert found == expected

    facts = {r["region_id"]: region_facts(r) for r in regions}
    by_key = {v: k for k, v in key.items()}
    image = ImageFacts(image_id, "mr", "axial", 32, 32)

    def check(task: str, question: str, answer: str, asked: tuple) -> str | None:
        qa = QA(task, question, answer, tuple(by_key[a] for a in asked))
        return verify_qa(qa, facts, image=image, vocabulary=(W, T, E))

    core_box, enhancing_box = "<box>(343,281),(656,531)</box>", "<box>(406,343),(593,468)</box>"
    island = "<box>(812,812),(937,906)</box>"
    describe = f"Describe the region {enhancing_box}."
    for other in (T, W):
        within = f"The {E} in {enhancing_box} lies within the {other}."
        assert check("RC", describe, within, ((E, 1),)) is None
    wrong = f"The {T} in {core_box} lies within the {E}."
    assert check("RC", f"Describe the region {core_box}.", wrong, ((T, 1),)) == "wrong_relation"
    touching = f"The {E} in {enhancing_box} is adjacent to the {T}."
    assert check("RC", describe, touching, ((E, 1),)) == "wrong_relation"
    for label, instance in ((W, 2), (T, 2), (E, 2)):  # one box, three true names:
        # a question about the box has no one answer; asking for each name's box has.
        answer = f"<ref>{label}</ref>{island}"
        asked = ((label, instance),)
        roc = check("ROC", f"What is shown at {island}?", answer, asked)
        assert roc == "ambiguous_box"
        assert check("VG", f"Where is the {label}?", answer, asked) is None
    # The templates ask for the box of a region whose box is another label's, never about it.
    for conversation in rows.conversations:
        for turn in conversation["qa"]:
            if turn["task"] in ("ROC", "RC"):
                assert island not in turn["question"], turn


def test_overlapping_regions_neither_inside_the_other_are_not_adjacent() -> None:
    picture = np.zeros((12, 20), np.uint8)
    picture[2:10, 0:4], picture[2:10, 4:8], picture[2:10, 8:12] = 1, 2, 3
    picture[2:10, 12:16] = 4
    names = {1: "a", 2: "b", 3: "d"}
    groups = ((1, (1, 2)), (2, (2, 3)), (3, (4,)))
    described = describe_regions(picture, names, CONFIG, "img", groups)
    by_label = {f.label: f for f in described.facts}
    assert [list(b) for b in described.bboxes] == [[0, 2, 8, 10], [4, 2, 12, 10], [12, 2, 16, 10]]
    assert [f.area for f in described.facts] == [64, 64, 32]
    # a and b share the value 2 (32 of their 64 pixels each): no relation; b touches d
    assert by_label["a"].relations == ()
    assert by_label["b"].relations == (("adjacent", by_label["d"].region_id),)
    assert by_label["d"].relations == (("adjacent", by_label["b"].region_id),)
    # a stored value no region covers is an unknown label, as in a plain label map
    picture[0, 0:3] = 9
    rejects = describe_regions(picture, names, CONFIG, "img", groups).rejects
    assert [(r.reason, r.detail) for r in rejects] == [
        ("unknown_label", "label value 9 has no name in the source")
    ]
