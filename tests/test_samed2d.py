"""SA-Med2D-20M releases: file-name parsing, grouping into volumes, label maps and rejects.

Each test writes a small release in the real layout (``SAMed2D_v1.json``, the class mapping,
``images/`` and ``masks/`` PNGs) with Pillow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medgrit.adapters.sources.samed2d import open_samed2d, read_case
from medgrit.adapters.sources.samed2d_index import (
    SliceName,
    label_filter_reason,
    modality_of_prefix,
    parse_image_name,
)
from medgrit.core.cases import SourceError

MAPPING = {
    "AbdomenCT1K": {"liver": 0, "kidney_left": 1, "spleen": 2, "union_liver_spleen": 3},
    "BraTS2021": {"edema": 0, "class_2": 1, "left": 2},
    "kvasir_seg": {"polyp": 0},
}
SHAPE = (24, 32)

MaskSpec = tuple[int, int, np.ndarray | bytes]  # class index, instance, pixels


def _grey(seed: int = 0) -> np.ndarray:
    return ((np.arange(SHAPE[0] * SHAPE[1]) * 7 + seed) % 256).astype(np.uint8).reshape(SHAPE)


def _box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _save(path: Path, pixels: np.ndarray | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(pixels, bytes):
        path.write_bytes(pixels)
    else:
        Image.fromarray(pixels).save(path)


def _release(
    root: Path,
    slices: dict[str, tuple[np.ndarray | bytes | None, list[MaskSpec]]],
    mapping: dict | None = MAPPING,
) -> Path:
    """Write a release: image stem -> (pixels or None for no file, masks)."""
    index: dict[str, list[str]] = {}
    for stem, (pixels, masks) in slices.items():
        if pixels is not None:
            _save(root / "images" / f"{stem}.png", pixels)
        mask_paths = []
        for class_index, instance, mask in masks:
            name = f"masks/{stem}--{class_index:04d}_{instance:03d}.png"
            _save(root / name, mask)
            mask_paths.append(name)
        index[f"images/{stem}.png"] = mask_paths
    root.mkdir(parents=True, exist_ok=True)
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    if mapping is not None:
        (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
    return root


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "images/ct_00--AbdomenCT1K--Case_00001--x_0123.png",
            SliceName("ct_00", "AbdomenCT1K", "Case_00001", "sagittal", 123),
        ),
        (
            "mr_t2--ACDC--patient001_frame01--y_0007.png",
            SliceName("mr_t2", "ACDC", "patient001_frame01", "coronal", 7),
        ),
        (
            "ct_00--WORD--word_0001--z_0100.png",
            SliceName("ct_00", "WORD", "word_0001", "axial", 100),
        ),
        (
            "x_ray--sz_cxr--CHNCXR_0001_0--2d_none.png",
            SliceName("x_ray", "sz_cxr", "CHNCXR_0001_0", "2d", 0),
        ),
        ("ct_00--D--a--b--z_0001.png", SliceName("ct_00", "D", "a--b", "axial", 1)),
        ("ct_00--AbdomenCT1K--Case_00001--w_0001.png", None),
        ("ct_00--AbdomenCT1K--Case_00001--z_01a.png", None),
        ("ct_00--AbdomenCT1K--z_0001.png", None),
        ("ct_00--AbdomenCT1K--Case_00001--z_0001.jpg", None),
    ],
)
def test_parse_image_name(name: str, expected: SliceName | None) -> None:
    assert parse_image_name(name) == expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("ct_00", "ct"),
        ("ct_cbf", "ct"),
        ("mr_flair", "mr"),
        ("mr_t1ce", "mr"),
        ("pet_00", "pet"),
        ("x_ray", "xray"),
        ("endoscopy_00", "endoscopy"),
        ("dermoscopy_00", "dermoscopy"),
        ("fundus_photography", "fundus"),
        ("ultrasound_00", "ultrasound"),
        ("microscopy_00", None),
        ("x_00", None),
    ],
)
def test_modality_of_prefix(prefix: str, expected: str | None) -> None:
    assert modality_of_prefix(prefix) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("liver", None),
        ("kidney_left", None),
        ("left_atrium", None),
        ("classification_target", None),
        ("union_liver_tumor", "composite_label"),
        ("class", "generic_label"),
        ("class_3", "generic_label"),
        ("Class2", "generic_label"),
        ("left", "fragment_label"),
        ("Right", "fragment_label"),
    ],
)
def test_label_filter_reason(raw: str, expected: str | None) -> None:
    assert label_filter_reason(raw) == expected


def test_open_groups_slices_into_volumes_in_a_stable_order(tmp_path: Path) -> None:
    grey, rgb = _grey(), np.dstack([_grey(1), _grey(2), _grey(3)])
    liver = [(0, 1, _box(2, 8, 2, 8))]
    root = _release(
        tmp_path / "SAMed2Dv1",
        {
            "ct_00--AbdomenCT1K--Case_00002--z_0010": (grey, liver),
            "ct_00--AbdomenCT1K--Case_00001--z_0010": (grey, liver),
            "ct_00--AbdomenCT1K--Case_00001--z_0009": (grey, liver),
            "ct_00--AbdomenCT1K--Case_00001--x_0100": (grey, liver),
            "mr_flair--BraTS2021--BraTS2021_00000--z_0080": (grey, [(0, 1, _box(1, 4, 1, 4))]),
            "mr_t1--BraTS2021--BraTS2021_00000--z_0080": (grey, [(0, 1, _box(1, 4, 1, 4))]),
            "endoscopy_00--kvasir_seg--cju0qkwl35piu0993l0dewei2--2d_none": (rgb, liver),
        },
    )
    source = open_samed2d("samed2d:r", root)
    assert (source.kind, source.dataset, source.modality) == ("samed2d", "SA-Med2D-20M", "mixed")
    assert source.labels == ()  # label ids are per dataset
    assert source == open_samed2d("samed2d:r", root)
    got = [(c.dataset, c.case, c.patient, c.modality) for c in source.cases]
    assert got == [
        ("AbdomenCT1K", "Case_00001--ct_00", "Case_00001", "ct"),
        ("AbdomenCT1K", "Case_00002--ct_00", "Case_00002", "ct"),
        ("BraTS2021", "BraTS2021_00000--mr_flair", "BraTS2021_00000", "mr"),
        ("BraTS2021", "BraTS2021_00000--mr_t1", "BraTS2021_00000", "mr"),
        (
            "kvasir_seg",
            "cju0qkwl35piu0993l0dewei2--endoscopy_00",
            "cju0qkwl35piu0993l0dewei2",
            "endoscopy",
        ),
    ]
    first = source.cases[0]
    assert first.format == "samed2d"
    # Sorted by axis (x before z), then by slice number (9 before 10).
    slices = [Path(s.image).name[-10:-4] for s in first.slices]
    assert slices == ["x_0100", "z_0009", "z_0010"]
    image, (mask,) = first.slices[0].image, first.slices[0].masks
    assert Path(image).is_absolute() and Path(image).is_file() and Path(mask).is_file()
    assert first.name == "ct_00--AbdomenCT1K--Case_00001"
    # Composite, generic and fragment classes are not offered as labels.
    assert dict(first.labels) == {1: "liver", 2: "left kidney", 3: "spleen"}
    assert dict(source.cases[2].labels) == {1: "edema"}


def test_single_dataset_release_keeps_its_labels_and_modality(tmp_path: Path) -> None:
    root = _release(
        tmp_path / "r",
        {"ct_00--AbdomenCT1K--Case_00001--z_0001": (_grey(), [(0, 1, _box(1, 5, 1, 5))])},
    )
    source = open_samed2d("samed2d:r", root)
    assert source.modality == "ct"
    assert source.labels == ((1, "liver"), (2, "left kidney"), (3, "spleen"))


def test_load_builds_label_map_with_class_plus_one_and_later_class_winning(
    tmp_path: Path,
) -> None:
    grey = _grey()
    stem = "ct_00--AbdomenCT1K--Case_00001--z_0042"
    root = _release(
        tmp_path / "r",
        {
            stem: (
                grey,
                [
                    (1, 1, _box(10, 20, 10, 20)),  # kidney_left -> label 2
                    (0, 1, _box(0, 12, 0, 12)),  # liver -> label 1, painted first
                    (0, 2, _box(20, 24, 28, 32)),  # a second liver instance
                ],
            )
        },
    )
    ref = open_samed2d("samed2d:r", root).cases[0]
    loaded = read_case(ref)
    assert (loaded.modality, loaded.intensity, loaded.rejects) == ("ct", "display", ())
    (image,) = loaded.images
    assert (image.plane, image.slice_index) == ("axial", 42)
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == SHAPE
    np.testing.assert_array_equal(image.pixels, grey)
    assert image.labels.dtype == np.uint8 and image.labels.shape == SHAPE
    assert image.labels[5, 5] == 1
    assert image.labels[11, 11] == 2  # overlap: the higher class wins
    assert image.labels[22, 30] == 1
    assert set(np.unique(image.labels)) == {0, 1, 2}


def test_rgb_2d_image(tmp_path: Path) -> None:
    rgb = np.dstack([_grey(5), _grey(6), _grey(7)])
    stem = "endoscopy_00--kvasir_seg--cju0--2d_none"
    root = _release(tmp_path / "r", {stem: (rgb, [(0, 1, _box(3, 9, 3, 9))])})
    loaded = read_case(open_samed2d("samed2d:r", root).cases[0])
    (image,) = loaded.images
    assert (image.plane, image.slice_index) == ("2d", 0)
    assert image.pixels.shape == (*SHAPE, 3) and image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels, rgb)
    assert int(image.labels.sum()) == 36


def test_rejects_per_mask_per_slice_and_per_class(tmp_path: Path) -> None:
    grey = _grey()
    ok = _box(1, 5, 1, 5)
    case = "ct_00--AbdomenCT1K--Case_00009"
    slices = {
        # a bad-sized mask is dropped, the slice stays with its other mask
        f"{case}--z_0001": (grey, [(0, 1, ok), (2, 1, _box(1, 5, 1, 5, (12, 16)))]),
        # its only mask has the wrong size: the slice goes
        f"{case}--z_0002": (grey, [(0, 1, _box(1, 5, 1, 5, (12, 16)))]),
        # composite class only: the slice goes, one reject per class for the case
        f"{case}--z_0003": (grey, [(3, 1, ok)]),
        f"{case}--z_0004": (grey, [(3, 1, ok), (0, 1, ok)]),
        f"{case}--z_0005": (grey, [(0, 1, b"not a png")]),
        f"{case}--z_0006": (None, [(0, 1, ok)]),
        f"{case}--z_0007": (b"\x89PNG\r\n\x1a\n truncated", [(0, 1, ok)]),
        f"{case}--z_0008": (grey.astype(np.uint16) * 100, [(0, 1, ok)]),
        f"{case}--z_0009": (grey, [(7, 1, ok)]),  # class 7 is not in the mapping
        f"{case}--z_0010": (grey, []),  # no mask at all: kept, empty
    }
    root = _release(tmp_path / "r", slices)
    index_path = root / "SAMed2D_v1.json"
    index = json.loads(index_path.read_text())
    index[f"images/{case}--z_0011.png"] = [f"masks/{case}--z_0011--0000_001.png"]  # absent mask
    index[f"images/{case}--z_0012.png"] = [f"masks/{case}--z_0012--liver.png"]
    index_path.write_text(json.dumps(index))
    _save(root / "images" / f"{case}--z_0011.png", grey)
    _save(root / "images" / f"{case}--z_0012.png", grey)

    loaded = read_case(open_samed2d("samed2d:r", root).cases[0])
    assert [im.slice_index for im in loaded.images] == [1, 4, 10]
    assert int(loaded.images[2].labels.max()) == 0
    by_slice = sorted((r[2] if r[2] is not None else -1, r[0]) for r in loaded.rejects)
    assert by_slice == [
        (-1, "composite_label"),
        (-1, "unknown_label"),
        (1, "mask_shape_mismatch"),
        (2, "mask_shape_mismatch"),
        (5, "mask_unreadable"),
        (6, "file_missing"),
        (7, "image_unreadable"),
        (8, "image_unreadable"),
        (11, "mask_missing"),
        (12, "mask_name_malformed"),
    ]
    composite = next(r for r in loaded.rejects if r[0] == "composite_label")
    assert composite[1] == "'union_liver_spleen' (class 0003): 2 mask(s) dropped"
    assert "axial slice 1" in next(r for r in loaded.rejects if r[2] == 1)[1]


def test_generic_and_fragment_classes_are_dropped_with_their_reason(tmp_path: Path) -> None:
    stem = "mr_flair--BraTS2021--BraTS2021_00001--z_0050"
    masks = [(0, 1, _box(1, 5, 1, 5)), (1, 1, _box(6, 9, 6, 9)), (2, 1, _box(10, 12, 1, 5))]
    root = _release(tmp_path / "r", {stem: (_grey(), masks)})
    loaded = read_case(open_samed2d("samed2d:r", root).cases[0])
    (image,) = loaded.images
    assert set(np.unique(image.labels)) == {0, 1}  # only edema is painted
    assert [r[0] for r in loaded.rejects] == ["generic_label", "fragment_label"]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no_index", "no SAMed2D_v1.json"),
        ("bad_json", "malformed SAMed2D_v1.json"),
        ("list_json", "expected a non-empty object"),
        ("mask_not_list", "must map to a list of mask paths"),
        ("bad_name", "1 image name(s) do not follow"),
        ("no_mapping", "no SAMed2D_v1_class_mapping_id.json"),
        ("bad_mapping", "expected a whole number >= 0"),
        ("dataset_missing", "no classes for dataset(s) AbdomenCT1K"),
        ("unknown_prefix", "unknown modality prefix 'microscopy_00'"),
        ("duplicate_slice", "have slice 1 of one plane"),
    ],
)
def test_open_errors_are_one_line(tmp_path: Path, damage: str, expected: str) -> None:
    root = tmp_path / "r"
    root.mkdir()
    good = {"images/ct_00--AbdomenCT1K--Case_1--z_0001.png": []}
    index: object = good
    mapping: object = MAPPING
    if damage == "mask_not_list":
        index = {"images/ct_00--AbdomenCT1K--Case_1--z_0001.png": "masks/x.png"}
    elif damage == "list_json":
        index = list(good)
    elif damage == "bad_name":
        index = {**good, "images/scan_0001.png": []}
    elif damage == "bad_mapping":
        mapping = {"AbdomenCT1K": {"liver": "first"}}
    elif damage == "dataset_missing":
        mapping = {"WORD": {"liver": 0}}
    elif damage == "duplicate_slice":
        index = {**good, "images/ct_00--AbdomenCT1K--Case_1--z_001.png": []}
    elif damage == "unknown_prefix":
        index = {"images/microscopy_00--AbdomenCT1K--Case_1--2d_none.png": []}
    if damage == "bad_json":
        (root / "SAMed2D_v1.json").write_text('{"images/a.png": [')
    elif damage != "no_index":
        (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    if damage != "no_mapping":
        (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
    with pytest.raises(SourceError) as error:
        open_samed2d("samed2d:r", root)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_prefix_takes_the_modality_flag(tmp_path: Path) -> None:
    root = _release(tmp_path / "r", {"microscopy_00--kvasir_seg--a--2d_none": (_grey(), [])})
    assert open_samed2d("samed2d:r", root, modality="endoscopy").cases[0].modality == "endoscopy"


def test_json_files_under_annotations_resolve_against_the_release_root(tmp_path: Path) -> None:
    root = _release(
        tmp_path / "sa_med2d",
        {"ct_00--AbdomenCT1K--Case_00001--y_0003": (_grey(), [(2, 1, _box(1, 5, 1, 5))])},
    )
    (root / "annotations").mkdir()
    for name in ("SAMed2D_v1.json", "SAMed2D_v1_class_mapping_id.json"):
        (root / name).rename(root / "annotations" / name)
    loaded = read_case(open_samed2d("samed2d:r", root).cases[0])
    (image,) = loaded.images
    assert (image.plane, image.slice_index, int(image.labels.max())) == ("coronal", 3, 3)


def test_opening_2000_entries_reads_no_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index names files that do not exist: opening must only parse the JSON."""

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("open_samed2d opened an image")

    monkeypatch.setattr(Image, "open", no_reading)
    index = {
        f"images/ct_00--AbdomenCT1K--Case_{c:05d}--{'xyz'[s % 3]}_{s:04d}.png": [
            f"masks/ct_00--AbdomenCT1K--Case_{c:05d}--{'xyz'[s % 3]}_{s:04d}--0000_001.png",
            f"masks/ct_00--AbdomenCT1K--Case_{c:05d}--{'xyz'[s % 3]}_{s:04d}--0002_001.png",
        ]
        for c in range(20)
        for s in range(100)
    }
    root = tmp_path / "big"
    root.mkdir()
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(MAPPING))
    start = time.perf_counter()
    source = open_samed2d("samed2d:big", root)
    elapsed = time.perf_counter() - start
    assert len(source.cases) == 20
    assert sum(len(c.slices) for c in source.cases) == 2000
    assert all(len(s.masks) == 2 for c in source.cases for s in c.slices)
    assert elapsed < 5.0  # loose: it takes milliseconds; reading 2,000 PNGs would not
