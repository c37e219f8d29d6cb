"""A catalogue of good and broken input, one real source per format (tests' helper module).

Each writer builds a source in its native layout and returns what a build must make of it:
``Expected(source, case, kept, reasons)`` per case, ``source`` being what the ``source`` column
of its reject rows shows (``{dataset}/{file}``, names escaped), ``case`` its name in the source
(what the pseudonymous ``case_id`` hashes), ``kept`` whether it gives images and ``reasons`` the
reject reasons it must give, each exactly once. DICOM rows show pseudonyms only, so DICOM cases
are checked by their reasons.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medgrit.adapters.sources.limits import MAX_PIXELS
from medgrit.adapters.synthetic.dicom_writer import (
    write_mask_png,
    write_seg,
    write_series,
    write_single_image,
)

# The eight modalities of Med-GRIT, which the demo covers.
EIGHT_MODALITIES = {"ct", "mr", "xray", "pet", "endoscopy", "dermoscopy", "fundus", "ultrasound"}


@dataclass(frozen=True)
class Expected:
    source: str
    case: str
    kept: bool
    reasons: tuple[str, ...] = ()


CT_LABELS = {"background": 0, "liver": 1, "spleen": 2}
SHAPE = (40, 36, 3)  # X, Y, Z: one foreground slice (z = 1) per volume


def _ct(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 80, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:18, 5:20, 1] = 1
    labels[22:36, 14:30, 1] = 2
    return image, labels


def _save_nii(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), path)


def _huge_header(path: Path) -> None:
    """A gzipped NIfTI whose header declares 20000^3 voxels over a tiny payload."""
    tmp = path.with_name("tmp_huge.nii")
    _save_nii(tmp, np.zeros((4, 4, 4), np.float32))
    raw = bytearray(tmp.read_bytes())
    tmp.unlink()
    struct.pack_into("<8h", raw, 40, 3, 20000, 20000, 20000, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(raw)))


def write_nnunet(root: Path) -> list[Expected]:
    """nnU-Net v2 CT cases: two good ones, then one of each problem a NIfTI case can have."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": CT_LABELS, "file_ending": ".nii.gz"})
    )
    dataset = root.name
    expected: list[Expected] = []

    def case(name: str, kept: bool, *reasons: str, image=None, labels=None) -> None:
        good_image, good_labels = _ct(len(expected))
        if image is not False:
            _save_nii(
                root / "imagesTr" / f"{name}_0000.nii.gz", good_image if image is None else image
            )
        _save_nii(root / "labelsTr" / f"{name}.nii.gz", good_labels if labels is None else labels)
        expected.append(Expected(f"{dataset}/{name}.nii.gz", name, kept, reasons))

    _, labels = _ct(0)
    case("good_a", True)
    case("good_b", True)
    case("missing_image", False, "file_missing", image=False)
    case("mismatch", False, "shape_mismatch", labels=labels[:, :30])
    case("empty", False, "empty_label_map", labels=np.zeros_like(labels))
    case(
        "inf_label",
        False,
        "non_finite_label",
        labels=np.where(labels > 0, np.inf, 0).astype(np.float32),
    )
    case("fractional", False, "fractional_label", labels=(labels * 0.4).astype(np.float32))
    case("complex", False, "complex_label", labels=labels.astype(np.complex64) * (1 + 1j))
    case("channels", False, "unsupported_shape", labels=np.stack([labels, labels], axis=-1))
    case("negative", False, "negative_label", labels=labels.astype(np.int16) * -1)
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    case("rgb", False, "unsupported_dtype", image=rgb)
    case("blank", False, "blank_image", image=np.full(SHAPE, -1000, np.float32))
    tiny = np.zeros_like(labels)
    tiny[5:7, 5:7, 1] = 1
    case("tiny", False, "no_regions", labels=tiny)
    extra = labels.copy()
    extra[30:38, 2:10, 1] = 7  # a value dataset.json does not name
    case("unknown_value", True, "unknown_label", labels=extra)
    speck = labels.copy()
    speck[0:2, 34:36, 1] = 1  # a 4-pixel instance of the liver
    case("speck", True, "below_min_area", labels=speck)
    # A label file whose image is cut off mid-stream, one whose header lies about its size.
    case("truncated", False, "nifti_unreadable")
    path = root / "imagesTr" / "truncated_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:400])
    case("huge_header", False, "too_large")
    _huge_header(root / "imagesTr" / "huge_header_0000.nii.gz")
    return expected


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def oversized_png(path: Path) -> None:
    """A valid PNG header declaring more pixels than the limit (its data is tiny)."""
    Image.new("L", (4, 4)).save(path)
    raw = bytearray(path.read_bytes())
    side = int(MAX_PIXELS**0.5) + 64
    struct.pack_into(">II", raw, 16, side, side)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def _photo(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)


def _mask(value: int = 1) -> np.ndarray:
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 12:40] = value
    return mask


def write_image_folder(root: Path) -> list[Expected]:
    """An endoscopy image folder (label maps): good photos, and one of each 2D problem."""
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    (root / "labels.json").write_text(
        json.dumps({"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"})
    )
    dataset = root.name
    expected: list[Expected] = []
    for i, stem in enumerate(["good1", "good2"]):
        _png(images / f"{stem}.png", _photo(i))
        _png(masks / f"{stem}.png", _mask())
        expected.append(Expected(f"{dataset}/{stem}", stem, True))
    odd = os.fsdecode(b"good\xff")  # a file name that is not UTF-8
    _png(images / f"{odd}.png", _photo(5))
    _png(masks / f"{odd}.png", _mask())
    expected.append(Expected(f"{dataset}/good\\xff", odd, True))

    def bad(stem: str, reason: str) -> None:
        expected.append(Expected(f"{dataset}/{stem}", stem, False, (reason,)))

    _png(images / "no_mask.png", _photo(2))
    bad("no_mask", "mask_missing")
    _png(images / "small_mask.png", _photo(3))
    _png(masks / "small_mask.png", _mask()[:20])
    bad("small_mask", "mask_shape_mismatch")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _png(masks / "corrupt.png", _mask())
    bad("corrupt", "image_unreadable")
    _png(images / "bad_mask.png", _photo(4))
    (masks / "bad_mask.png").write_bytes(b"not a png at all")
    bad("bad_mask", "mask_unreadable")
    (images / "loop.png").symlink_to("loop.png")
    _png(masks / "loop.png", _mask())
    bad("loop", "image_unreadable")
    _png(images / "giant_mask.png", _photo(6))
    oversized_png(masks / "giant_mask.png")
    bad("giant_mask", "too_large")
    _png(images / "no_foreground.png", _photo(7))
    _png(masks / "no_foreground.png", np.zeros((48, 64), np.uint8))
    bad("no_foreground", "empty_label_map")
    _png(images / "flat.png", np.full((48, 64, 3), 90, np.uint8))
    _png(masks / "flat.png", _mask())
    bad("flat", "blank_image")
    _png(images / "soft.png", _photo(8))
    Image.fromarray(_mask().astype(np.float32) * 0.5).save(masks / "soft.tif")
    bad("soft", "fractional_label")
    return expected


def write_dicom(root: Path) -> list[str]:
    """Chest radiographs with PNG masks, a CT series with its SEG, and broken files.

    Returns the reasons the bad cases must give (one each); the good cases are two radiographs
    and the series.
    """
    root.mkdir(parents=True)
    (root / "labels.json").write_text(json.dumps({"1": "left lung", "2": "right lung"}))
    mask = np.zeros((64, 56), np.uint8)
    mask[10:50, 30:50] = 1
    mask[10:50, 4:24] = 2
    for i in range(2):
        pixels = (np.random.default_rng(i).random((64, 56)) * 4000).astype(np.uint16)
        write_single_image(pixels, root / f"cxr{i}.dcm", modality="CR", seed=f"cxr{i}")
        write_mask_png(mask, root / f"cxr{i}_mask.png")
    pixels = (np.random.default_rng(9).random((64, 56)) * 4000).astype(np.uint16)
    write_single_image(pixels, root / "giant.dcm", modality="CR", seed="giant")
    oversized_png(root / "giant_mask.png")
    write_single_image(pixels, root / "wrong.dcm", modality="CR", seed="wrong")
    write_mask_png(mask[:32], root / "wrong_mask.png")
    (root / "empty.dcm").write_bytes(b"")
    (root / "notes.dcm").write_text("this is not a DICOM file")
    image, labels = _ct(3)
    series = write_series(image, (1.0, 1.0, 3.0), root / "series", seed="series")
    write_seg(labels, {1: "liver", 2: "spleen"}, series, root / "series_seg.dcm", seed="seg")
    orphan = write_series(image, (1.0, 1.0, 3.0), root / "gone", seed="gone")
    write_seg(labels, {1: "liver", 2: "spleen"}, orphan, root / "orphan_seg.dcm", seed="orphan")
    shutil.rmtree(root / "gone")
    return sorted(
        [
            "too_large",
            "mask_shape_mismatch",
            "dicom_unreadable",
            "dicom_unreadable",
            "referenced_series_missing",
        ]
    )


SAMED2D_MAPPING = {"AbdomenCT1K": {"liver": 0, "union_liver_spleen": 1, "class_2": 2, "left": 3}}


def write_samed2d(root: Path) -> list[Expected]:
    """An SA-Med2D-20M release: good slices, and the release's quirky classes."""
    index: dict[str, list[str]] = {}
    grey = (np.arange(24 * 32) % 251).astype(np.uint8).reshape(24, 32)
    box = np.zeros((24, 32), np.uint8)
    box[4:16, 6:20] = 255

    def slice_(case: str, number: int, classes: list[int]) -> None:
        stem = f"ct_00--AbdomenCT1K--{case}--z_{number:04d}"
        _png(root / "images" / f"{stem}.png", grey)
        masks = []
        for class_index in classes:
            name = f"masks/{stem}--{class_index:04d}_000.png"
            _png(root / name, box)
            masks.append(name)
        index[f"images/{stem}.png"] = masks

    slice_("Case_good", 1, [0])
    slice_("Case_good", 2, [0])
    slice_("Case_union", 1, [0, 1])  # kept (liver), the union class rejected
    slice_("Case_generic", 1, [0, 2])
    slice_("Case_fragment", 1, [0, 3])
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(SAMED2D_MAPPING))
    return [
        Expected(f"AbdomenCT1K/ct_00--AbdomenCT1K--{case}", case, True, reasons)
        for case, reasons in (
            ("Case_good", ()),
            ("Case_union", ("composite_label",)),
            ("Case_generic", ("generic_label",)),
            ("Case_fragment", ("fragment_label",)),
        )
    ]


def write_ct_source(root: Path, cases: int, shape: tuple[int, int, int] = (64, 56, 6)) -> Path:
    """A plain nnU-Net v2 CT source of ``cases`` good cases (every slice labelled)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": CT_LABELS, "file_ending": ".nii.gz"})
    )
    for i in range(cases):
        rng = np.random.default_rng(i)
        image = rng.normal(40, 80, shape).astype(np.float32)
        labels = np.zeros(shape, np.uint8)
        labels[4 : shape[0] // 2, 5 : shape[1] // 2, :] = 1
        labels[shape[0] // 2 + 2 : -3, shape[1] // 2 : -4, :] = 2
        _save_nii(root / "imagesTr" / f"case{i:03d}_0000.nii.gz", image)
        _save_nii(root / "labelsTr" / f"case{i:03d}.nii.gz", labels)
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 (or link target) of everything under ``root``."""
    import hashlib

    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out
