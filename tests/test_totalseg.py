"""TotalSegmentator layouts (``totalseg:PATH``): tiny datasets and outputs written with nibabel.

Volumes are stored LPS (``diag(-1, -1, 1)``), so a voxel painted at stored (i, j, k) of an
8x8x4 grid reads back at canonical RAS+ (7 - i, 7 - j, k).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from medgrit.adapters.shard import SHARD_IO
from medgrit.adapters.sources import estimate_images, load_case, open_source
from medgrit.adapters.sources.totalseg_labels import _installed
from medgrit.adapters.store.bookkeeping import plan_manifest
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.cases import Case, SourceError, UnreadableImage
from medgrit.core.pipeline import CaseTask, build_shard_rows
from medgrit.core.plan_extension import RecordedPlan, extend_plan
from medgrit.core.sharding import plan_build
from medgrit.core.text import readable_labels
from medgrit.schemas.config import BuildConfig

SHAPE = (8, 8, 4)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _nifti(path: Path, data: np.ndarray, extension: bytes | None = None) -> Path:
    image = nib.Nifti1Image(data, LPS)
    if extension is not None:
        image.header.extensions.append(nib.nifti1.Nifti1Extension(0, extension))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def _mask(*voxels: tuple[int, int, int], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for voxel in voxels:
        mask[voxel] = 1
    return mask


def _case(folder: Path, image: str, masks: dict[str, np.ndarray]) -> Path:
    _nifti(folder / image, np.full(SHAPE, 40, np.int16))
    for name, mask in masks.items():
        _nifti(folder / "segmentations" / f"{name}.nii.gz", mask)
    return folder


def _label_table(labels: dict[int, str]) -> bytes:
    """A label table as TotalSegmentator writes it into a multilabel file's header."""
    body = "".join(
        f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
        for k, v in labels.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <VolumeInformation Index="0">'
        f"   <LabelTable>\n{body}</LabelTable> <VolumeType><![CDATA[Label]]></VolumeType>"
        "   </VolumeInformation></CaretExtension>\n              "
    ).encode()


def _plan(cases, test_fraction: float) -> dict[str, str]:
    settings = SimpleNamespace(
        test_fraction=test_fraction,
        split_seed=0,
        max_images=None,
        images_per_shard=100,
        cases_per_shard=None,
    )
    shards = plan_build(cases, settings, b"k" * 32, count_images=lambda c: 1)
    return {task.ref.case: task.split for _, tasks in shards for task in tasks}


def test_a_dataset_lists_its_cases_and_reads_masks_into_one_label_volume(tmp_path: Path) -> None:
    root = tmp_path / "TotalsegmentatorV2"
    _case(
        root / "s0000",
        "ct.nii.gz",
        {
            "kidney_left": _mask((0, 0, 0), (1, 1, 1)),
            "vertebrae_L1": _mask((1, 1, 1), (2, 3, 3)),  # overlaps the kidney at (1, 1, 1)
            "rib_left_3": _mask((5, 6, 2)),
        },
    )
    sternum = _mask((7, 0, 3)).astype(np.float32)  # uncompressed, stored as 0.0 / 1.0
    _nifti(root / "s0000" / "segmentations" / "sternum.nii", sternum)
    _case(root / "s0001", "ct.nii.gz", {"kidney_left": _mask(), "lung_upper_lobe_right": _mask()})
    _case(root / "s0002", "ct.nii.gz", {"kidney_left": _mask((4, 4, 0))})
    (root / "notes").mkdir()  # a folder that is no case folder is not part of the source
    (root / "meta.csv").write_text(
        "image_id;age;gender;institute;split\n"
        "s0000;61;f;A;test\n"
        "s0001;70;m;B;val\n"
        "s9999;55;m;C;train\n"
    )
    source = open_source(f"totalseg:{root}")
    assert (source.dataset, source.modality) == ("TotalsegmentatorV2", "ct")
    assert [c.case for c in source.cases] == ["s0000", "s0001", "s0002"]
    written = ((3, "kidney_left"), (12, "lung_upper_lobe_right"), (31, "vertebrae_L1"))
    written += ((94, "rib_left_3"), (116, "sternum"))  # TotalSegmentator's ``total`` ids
    for case in source.cases:
        assert case.modality == "ct" and case.written_labels == written
        assert case.labels == readable_labels(written) == source.labels
    assert [c.split for c in source.cases] == ["test", "train", ""]
    first = source.cases[0]
    assert first.content_files == (
        str(root / "s0000" / "ct.nii.gz"),
        *(
            str(root / "s0000" / "segmentations" / f"{n}.nii.gz")
            for n in ("kidney_left", "vertebrae_L1", "rib_left_3")
        ),
        str(root / "s0000" / "segmentations" / "sternum.nii"),
    )
    assert estimate_images(first, "axial") == 4 and estimate_images(first, "sagittal") == 8

    loaded = load_case(first)
    labels = loaded.label_volume.data
    assert loaded.intensity == "hu" and labels.dtype == np.uint8
    assert labels.shape == loaded.volume.data.shape == SHAPE
    np.testing.assert_array_equal(loaded.label_volume.affine, loaded.volume.affine)
    expected = np.zeros(SHAPE, np.uint8)
    expected[7, 7, 0] = 3  # kidney_left at stored (0, 0, 0)
    expected[6, 6, 1] = 31  # stored (1, 1, 1): both masks, the higher id wins
    expected[5, 4, 3] = 31
    expected[2, 1, 2] = 94
    expected[0, 7, 3] = 116
    np.testing.assert_array_equal(labels, expected)

    # meta.csv decides its cases' splits whatever the fraction; others are drawn as usual.
    assert _plan(source.cases, 0.0) == {"s0000": "test", "s0001": "train", "s0002": "train"}
    # At 0.9 the case meta.csv leaves open is drawn into test; its val case stays in train.
    assert _plan(source.cases, 0.9) == {"s0000": "test", "s0001": "train", "s0002": "test"}


def test_an_extension_keeps_the_splits_sources_assign(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), test_fraction=0.0)

    def case(name: str, split: str) -> Case:
        return Case(source="totalseg:/d", dataset="D", case=name, modality="ct", split=split)

    first = [case("s0", "test"), case("s1", "train")]
    plan = plan_build(first, config, b"k" * 32, lambda c: 1, lambda c: 1)
    recorded = plan_manifest(config, [], plan, None).to_json()["shards"]
    grown = [*first, case("s2", ""), case("s3", "test")]
    extended = extend_plan(
        RecordedPlan(recorded), grown, config, b"k" * 32, lambda c: 1, lambda c: 1
    )
    assert extended is not None and extended.new_cases == 2
    splits = {t.ref.case: t.split for _, tasks in extended.plan for t in tasks}
    assert splits == {"s0": "test", "s1": "train", "s2": "train", "s3": "test"}


def test_outputs_mr_multilabel_and_single_case_folders(tmp_path: Path) -> None:
    table = {1: "liver", 2: "kidney_left", 300: "tumour"}
    scan = tmp_path / "outputs" / "scanA"
    _nifti(scan / "mri.nii.gz", np.ones(SHAPE, np.float32))
    values = np.zeros(SHAPE, np.uint16)
    values[0, 1, 2], values[3, 3, 3] = 2, 300
    _nifti(scan / "segmentations.nii.gz", values, _label_table(table))
    source = open_source(f"totalseg:{scan}")
    (case,) = source.cases
    assert (source.dataset, case.case, case.modality, case.split) == ("outputs", "scanA", "mr", "")
    assert case.written_labels == ((1, "liver"), (2, "kidney_left"), (300, "tumour"))
    loaded = load_case(case)
    assert loaded.intensity == "percentile" and loaded.label_volume.data.dtype == np.uint16
    assert loaded.label_volume.data[7, 6, 2] == 2 and loaded.label_volume.data[4, 4, 3] == 300
    assert int(np.count_nonzero(loaded.label_volume.data)) == 2

    # No label table in the header: TotalSegmentator's ``total`` class map names the ids.
    plain = tmp_path / "plain" / "case1"
    _nifti(plain / "ct.nii.gz", np.zeros(SHAPE, np.int16))
    _nifti(plain / "segmentations.nii", values.astype(np.uint8) % 200)
    (case,) = open_source(f"totalseg:{plain.parent}").cases
    assert len(case.written_labels) == 117
    assert case.written_labels[:3] == ((1, "spleen"), (2, "kidney_right"), (3, "kidney_left"))
    assert case.written_labels[-1] == (117, "costal_cartilages")

    # MR masks take ``total_mr`` ids; an image of another name takes --modality.
    mr = _case(tmp_path / "mr" / "m1", "mri.nii.gz", {"liver": _mask(), "kidney_left": _mask()})
    assert open_source(f"totalseg:{mr}").cases[0].written_labels == (
        (3, "kidney_left"),
        (5, "liver"),
    )
    other = _case(tmp_path / "other" / "o1", "scan.nii.gz", {"liver": _mask(), "blob": _mask()})
    with pytest.raises(SourceError, match="pass --modality"):
        open_source(f"totalseg:{other}")
    opened = open_source(f"totalseg:{other}", modality="mr")
    assert opened.cases[0].written_labels == ((1, "blob"), (2, "liver"))  # not all in the map


def test_an_installed_totalsegmentator_names_the_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "totalsegmentator"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "map_to_binary.py").write_text(
        'class_map = {"total": {1: "liver", 7: "kidney_left", 9: "spleen"}}\n'
    )
    monkeypatch.syspath_prepend(str(package.parent))
    for name in ("totalsegmentator", "totalsegmentator.map_to_binary"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _installed.cache_clear()
    try:
        # A multilabel file without a label table: the installed package's ids name it.
        plain = tmp_path / "D" / "c"
        _nifti(plain / "ct.nii.gz", np.zeros(SHAPE, np.int16))
        _nifti(plain / "segmentations.nii.gz", _mask((1, 1, 1)) * 7)
        assert open_source(f"totalseg:{plain}").cases[0].written_labels == (
            (1, "liver"),
            (7, "kidney_left"),
            (9, "spleen"),
        )
        # Per-class masks name their classes: their ids stay the bundled ones (``total``:
        # spleen 1, kidney_left 3, liver 5), whatever is installed.
        folder = _case(
            tmp_path / "E" / "c", "ct.nii.gz", {"kidney_left": _mask(), "liver": _mask()}
        )
        assert open_source(f"totalseg:{folder}").cases[0].written_labels == (
            (3, "kidney_left"),
            (5, "liver"),
        )
    finally:
        _installed.cache_clear()
        for name in ("totalsegmentator", "totalsegmentator.map_to_binary"):
            sys.modules.pop(name, None)


def test_bad_masks_are_rejects_and_bad_folders_are_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "D"
    _case(root / "gone", "ct.nii.gz", {"liver": _mask((1, 1, 1)), "spleen": _mask((2, 2, 2))})
    _case(root / "wide", "ct.nii.gz", {"liver": _mask((1, 1, 1)), "spleen": _mask(shape=(9, 8, 4))})
    _case(root / "torn", "ct.nii.gz", {"liver": _mask((1, 1, 1))})
    (root / "torn" / "segmentations" / "spleen.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    cut = _case(root / "cut", "ct.nii.gz", {"liver": _mask((1, 1, 1))}) / "segmentations"
    whole = (cut / "liver.nii.gz").read_bytes()
    (cut / "liver.nii.gz").write_bytes(whole[: len(whole) // 2])
    # A multilabel file of the image's shape but shifted by 5 mm: not on the image's grid.
    _nifti(root / "moved" / "ct.nii.gz", np.full(SHAPE, 40, np.int16))
    nan = _mask((1, 1, 1)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    _case(root / "nan", "ct.nii.gz", {"liver": nan})
    _case(root / "below", "ct.nii.gz", {"liver": _mask((1, 1, 1)).astype(np.int16) - 1})
    shifted = LPS.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(_mask((1, 1, 1)), shifted), root / "moved" / "segmentations.nii.gz")
    source = open_source(f"totalseg:{root}")
    (root / "gone" / "segmentations" / "spleen.nii.gz").unlink()
    reasons = {}
    for case in source.cases:
        with pytest.raises(UnreadableImage) as info:
            load_case(case)
        reasons[case.case] = info.value.reason
    assert reasons == {
        "cut": "mask_unreadable",
        "gone": "mask_missing",
        "moved": "mask_shape_mismatch",
        "nan": "non_finite_label",
        "below": "negative_label",
        "torn": "mask_unreadable",
        "wide": "mask_shape_mismatch",
    }
    config = BuildConfig(out="unused")
    tasks = [CaseTask(case, case.case, "train") for case in source.cases]
    rows = build_shard_rows(tasks, config, TemplateGenerator(), SHARD_IO)
    assert not rows.images
    assert sorted(r["reason"] for r in rows.rejects) == sorted(reasons.values())

    def refused(path: Path, match: str, modality: str | None = None) -> None:
        with pytest.raises(SourceError, match=match) as info:
            open_source(f"totalseg:{path}", modality)
        assert "\n" not in str(info.value)

    nnunet = tmp_path / "Dataset001"
    (nnunet / "labelsTr").mkdir(parents=True)
    (nnunet / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}}))
    refused(nnunet, "no TotalSegmentator case in")
    (root / "meta.csv").write_text("image_id,split\ngone,test\n")
    refused(root, "needs the columns image_id and split")
    (root / "meta.csv").write_text("image_id;split\ngone;holdout\n")
    refused(root, "use train, val or test")
    (root / "meta.csv").unlink()
    _nifti(root / "torn" / "mri.nii.gz", np.zeros(SHAPE, np.int16))
    refused(root, "holds both ct.nii.gz and mri.nii.gz")
    two = tmp_path / "two"
    for name, table in (("a", {1: "liver"}), ("b", {1: "spleen"})):
        _nifti(two / name / "ct.nii.gz", np.zeros(SHAPE, np.int16))
        _nifti(two / name / "segmentations.nii.gz", _mask(), _label_table(table))
    refused(two, "label 1 is 'liver' in a and 'spleen' in b")


@pytest.mark.slow
def test_the_cli_builds_a_totalseg_dataset_that_validates(medgrit, tmp_path: Path) -> None:
    root = tmp_path / "TinyTotalSeg"
    shape = (32, 32, 8)
    for i in range(3):
        liver, kidney, bone = (np.zeros(shape, np.uint8) for _ in range(3))
        liver[4:14, 6:20, 1:7] = 1
        kidney[18:26, 10:18, 2:6] = 1
        bone[14:18, 24:30, 1:7] = 1
        folder = root / f"s000{i}"
        image = np.full(shape, -1000, np.int16)
        image[2:30, 2:30, :] = 30
        image[liver > 0], image[kidney > 0] = 60, 150
        nib.save(nib.Nifti1Image(image, LPS), _mkdir(folder) / "ct.nii.gz")
        nib.save(nib.Nifti1Image(liver, LPS), _mkdir(folder / "segmentations") / "liver.nii.gz")
        nib.save(nib.Nifti1Image(kidney, LPS), folder / "segmentations" / "kidney_left.nii.gz")
        nib.save(nib.Nifti1Image(bone, LPS), folder / "segmentations" / "vertebrae_L1.nii.gz")
    (root / "meta.csv").write_text(
        "image_id;split\n"
        + "".join(f"s000{i};{s}\n" for i, s in enumerate(("test", "test", "val")))
    )
    out = tmp_path / "out"
    words = tmp_path / "names.json"
    words.write_text(json.dumps({"liver": "hepatic parenchyma"}))  # a user's own words
    result = medgrit("build", f"totalseg:{root}", "--out", str(out), "--label-names", str(words))
    assert result.returncode == 0, result.stderr[-3000:]
    images = [
        r for p in sorted((out / "images").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
    ]
    by_split = {}
    for row in images:
        by_split.setdefault(row["split"], set()).add(row["case_id"])
    assert {k: len(v) for k, v in by_split.items()} == {"test": 2, "train": 1}
    assert {r["modality"] for r in images} == {"ct"}
    regions = [
        r for p in sorted((out / "regions").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
    ]
    assert {(r["label"], r["source_label"]) for r in regions} == {
        ("left kidney", "kidney_left"),
        ("hepatic parenchyma", "liver"),
        ("L1 vertebra", "vertebrae_L1"),
    }
    assert {r["laterality"] for r in regions if r["source_label"] == "kidney_left"} == {"left"}
    assert all(r["sequence"] is None for r in images)
    (recorded,) = json.loads((out / "dataset.json").read_text())["sources"]
    maps, words_of = recorded["label_maps"]["TinyTotalSeg"], recorded["label_words"]["TinyTotalSeg"]
    # TotalSegmentator's ids: kidney_left 3, liver 5, vertebrae_L1 31
    assert maps == {"3": "kidney_left", "5": "liver", "31": "vertebrae_L1"}
    assert words_of == {"3": "left kidney", "5": "hepatic parenchyma", "31": "L1 vertebra"}
    result = medgrit("validate", str(out))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
