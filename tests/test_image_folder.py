"""Image folders (``images:PATH``): labels.json, mask modes, cases, pixel types and rejects.

Every image and mask is a real file written with Pillow; one image is a real fundus photograph
(scikit-image's ``retina``) with its optic disc as the mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from medgrit.adapters.sources.image_folder import open_image_folder, read_case
from medgrit.core.cases import SourceError


def _folder(root: Path, meta: dict | None, images: dict[str, np.ndarray | bytes]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if meta is not None:
        (root / "labels.json").write_text(json.dumps(meta))
    for name, pixels in images.items():
        _write(root / "images" / name, pixels)
    return root


def _write(path: Path, pixels: np.ndarray | bytes) -> None:
    if isinstance(pixels, bytes):
        path.write_bytes(pixels)
    else:
        Image.fromarray(pixels).save(path)


def _mask(shape: tuple[int, int], box: tuple[int, int, int, int], value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    y0, y1, x0, x1 = box
    mask[y0:y1, x0:x1] = value
    return mask


def _grey(shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    return (np.arange(shape[0] * shape[1]) % 251).astype(np.uint8).reshape(shape)


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """scikit-image's fundus photograph at a third of its size (470 x 470 RGB)."""
    image = Image.fromarray(data.retina()).resize((470, 470), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _optic_disc(rgb: np.ndarray) -> np.ndarray:
    """The optic disc: the largest blob of the brightest 0.5 % of the photograph."""
    grey = rgb.astype(np.float32).mean(axis=2)
    bright = grey > np.percentile(grey, 99.5)
    blobs, count = ndimage.label(bright)
    sizes = ndimage.sum(bright, blobs, range(1, count + 1))
    return blobs == int(np.argmax(sizes)) + 1


def test_fundus_photograph_with_optic_disc_label_map(tmp_path: Path, retina: np.ndarray) -> None:
    disc = _optic_disc(retina)
    meta = {"modality": "fundus", "labels": {"1": "optic_disc"}, "masks": "label_map"}
    root = _folder(tmp_path / "RetinaDemo", meta, {"retina.png": retina})
    _write(root / "masks" / "retina.png", disc.astype(np.uint8) * 255)

    source = open_image_folder("images:x", root)
    assert (source.kind, source.dataset, source.modality) == ("images", "RetinaDemo", "fundus")
    assert source.labels == ((1, "optic disc"),)
    (ref,) = source.cases
    assert (ref.format, ref.case, ref.patient) == ("images", "retina", "retina")

    loaded = read_case(ref)
    assert loaded.intensity == "display" and loaded.rejects == ()
    (image,) = loaded.images
    assert (image.plane, image.slice_index) == ("2d", 0)
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (470, 470, 3)
    np.testing.assert_array_equal(image.pixels, retina)
    # 0/255 binary mask with one declared label: 255 becomes label 1, on the image's grid.
    assert image.labels.dtype == np.uint8
    np.testing.assert_array_equal(image.labels, disc.astype(np.uint8))
    _, xs = np.nonzero(image.labels)
    assert xs.mean() < 235  # the disc lies in the left half of this photograph


def test_grey_rgba_and_16_bit_images(tmp_path: Path) -> None:
    grey = _grey()
    rgba = np.dstack([grey, grey // 2, 255 - grey, np.full_like(grey, 7)])
    deep = (grey.astype(np.uint16) * 200).astype(np.uint16)
    meta = {"modality": "ultrasound", "labels": {"1": "mass"}, "masks": "label_map"}
    root = _folder(tmp_path / "u", meta, {"a.png": grey, "b.png": rgba, "c.png": deep})
    for stem in "abc":
        _write(root / "masks" / f"{stem}.png", _mask(grey.shape, (4, 12, 5, 20), 1))

    cases = {ref.case: ref for ref in open_image_folder("images:u", root).cases}
    a, b, c = (read_case(cases[k]) for k in "abc")
    assert a.intensity == "display"
    assert a.images[0].pixels.dtype == np.uint8 and a.images[0].pixels.shape == grey.shape
    np.testing.assert_array_equal(a.images[0].pixels, grey)
    assert b.intensity == "display" and b.images[0].pixels.shape == (*grey.shape, 3)
    np.testing.assert_array_equal(b.images[0].pixels, rgba[..., :3])  # alpha dropped
    assert c.intensity == "percentile"
    assert c.images[0].pixels.dtype == np.float32
    np.testing.assert_array_equal(c.images[0].pixels, deep.astype(np.float32))
    for loaded in (a, b, c):
        assert int(loaded.images[0].labels.sum()) == 8 * 15


def test_case_mixing_8_and_16_bit_images_becomes_float(tmp_path: Path) -> None:
    grey = _grey()
    meta = {
        "modality": "xray",
        "labels": {"1": "lung"},
        "masks": "label_map",
        "cases": r"^(pat\d+)_",
    }
    images = {"pat1_a.png": grey, "pat1_b.png": grey.astype(np.uint16) * 300}
    root = _folder(tmp_path / "x", meta, images)
    for stem in ("pat1_a", "pat1_b"):
        _write(root / "masks" / f"{stem}.png", _mask(grey.shape, (1, 9, 1, 9)))
    loaded = read_case(open_image_folder("images:x", root).cases[0])
    assert loaded.intensity == "percentile"
    assert [im.pixels.dtype for im in loaded.images] == [np.float32, np.float32]
    np.testing.assert_array_equal(loaded.images[0].pixels, grey.astype(np.float32))


def test_per_class_masks_by_name_or_id_higher_id_wins(tmp_path: Path) -> None:
    grey = _grey()
    meta = {
        "modality": "dermoscopy",
        "labels": {"1": "lesion", "2": "globule"},
        "masks": "per_class",
    }
    root = _folder(tmp_path / "d", meta, {"ISIC_1.png": grey})
    _write(root / "masks" / "ISIC_1_lesion.png", _mask(grey.shape, (0, 20, 0, 20)))
    _write(root / "masks" / "ISIC_1_2.png", _mask(grey.shape, (10, 30, 10, 30), 1))

    source = open_image_folder("images:d", root)
    assert source.labels == ((1, "lesion"), (2, "globule"))
    (image,) = read_case(source.cases[0]).images
    assert image.labels[5, 5] == 1
    assert image.labels[15, 15] == 2  # overlap: the higher label id wins
    assert image.labels[25, 25] == 2
    assert image.labels[31, 39] == 0


def test_jpeg_masks_are_thresholded_at_128(tmp_path: Path) -> None:
    """Kvasir-SEG ships JPEG masks: lossy, so grey halos below 128 are background."""
    rgb = np.dstack([_grey(), _grey(), _grey()])
    meta = {"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "per_class"}
    root = _folder(tmp_path / "k", meta, {"cju0.jpg": rgb})
    mask = _mask((32, 40), (8, 24, 8, 32))
    mask[0:4, 0:4] = 100  # a halo that must not count
    Image.fromarray(mask).save(root / "masks" / "cju0_polyp.jpg", quality=95)

    loaded = read_case(open_image_folder("images:k", root).cases[0])
    (image,) = loaded.images
    assert image.pixels.shape == (32, 40, 3) and image.pixels.dtype == np.uint8
    assert image.labels[0:4, 0:4].sum() == 0
    assert image.labels[12:20, 12:28].all()


def test_label_map_values_and_palette_masks(tmp_path: Path) -> None:
    grey = _grey()
    meta = {"modality": "ct", "labels": {"1": "liver", "2": "kidney_left"}, "masks": "label_map"}
    root = _folder(tmp_path / "c", meta, {"s1.png": grey, "s2.png": grey})
    values = _mask(grey.shape, (0, 10, 0, 10), 1) + _mask(grey.shape, (20, 30, 20, 30), 2)
    _write(root / "masks" / "s1.png", values)
    palette = Image.fromarray(values, mode="L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette.save(root / "masks" / "s2.png")

    source = open_image_folder("images:c", root)
    assert dict(source.labels) == {1: "liver", 2: "left kidney"}
    for ref in source.cases:
        (image,) = read_case(ref).images
        np.testing.assert_array_equal(image.labels, values)  # values kept, not binarised


def test_cases_from_a_pattern_are_sorted_and_stable(tmp_path: Path) -> None:
    grey = _grey()
    meta = {
        "modality": "ultrasound",
        "labels": {"1": "nerve"},
        "masks": "label_map",
        "cases": r"^(\d+)_",
    }
    stems = ["10_3", "2_1", "10_1", "2_2"]
    root = _folder(tmp_path / "n", meta, {f"{s}.png": grey for s in stems})
    for stem in stems:
        _write(root / "masks" / f"{stem}.png", _mask(grey.shape, (1, 5, 1, 5)))
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "images" / ".hidden.png").write_bytes(b"")

    first = open_image_folder("images:n", root)
    assert first == open_image_folder("images:n", root)
    assert [c.case for c in first.cases] == ["10", "2"]
    assert [c.patient for c in first.cases] == ["10", "2"]
    names = [[Path(image.path).name for image in c.images] for c in first.cases]
    assert names == [["10_1.png", "10_3.png"], ["2_1.png", "2_2.png"]]
    loaded = read_case(first.cases[0])
    assert [im.slice_index for im in loaded.images] == [0, 1]


def test_per_image_rejects(tmp_path: Path) -> None:
    grey = _grey()
    buffer = tmp_path / "full.png"
    Image.fromarray(grey).save(buffer)
    truncated = buffer.read_bytes()[:60]
    meta = {"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"}
    images = {
        "ok.png": grey,
        "nomask.png": grey,
        "small.png": grey,
        "garbage.png": b"definitely not a png",
        "cut.png": truncated,
    }
    root = _folder(tmp_path / "r", meta, images)
    for stem in ("ok", "garbage", "cut"):
        _write(root / "masks" / f"{stem}.png", _mask(grey.shape, (1, 5, 1, 5)))
    _write(root / "masks" / "small.png", _mask((16, 16), (1, 5, 1, 5)))
    (root / "masks" / "ok_extra.png").write_bytes(b"")  # not a mask of ok.png in label_map mode

    outcome = {}
    for ref in open_image_folder("images:r", root).cases:
        loaded = read_case(ref)
        outcome[ref.case] = (len(loaded.images), [r[0] for r in loaded.rejects])
    assert outcome == {
        "ok": (1, []),
        "nomask": (0, ["mask_missing"]),
        "small": (0, ["mask_shape_mismatch"]),
        "garbage": (0, ["image_unreadable"]),
        "cut": (0, ["image_unreadable"]),
    }


def test_an_image_link_that_cannot_be_followed_is_a_reject(tmp_path: Path) -> None:
    grey = _grey()
    meta = {"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"}
    root = _folder(tmp_path / "l", meta, {"ok.png": grey})
    (root / "images" / "moved.png").symlink_to(tmp_path / "elsewhere" / "moved.png")
    (root / "images" / "loop.png").symlink_to("loop.png")
    for stem in ("ok", "moved", "loop"):
        _write(root / "masks" / f"{stem}.png", _mask(grey.shape, (1, 5, 1, 5)))

    outcome = {}
    for ref in open_image_folder("images:l", root).cases:
        loaded = read_case(ref)
        outcome[ref.case] = (len(loaded.images), [r[:2] for r in loaded.rejects])
    assert outcome["ok"] == (1, [])
    for stem in ("moved", "loop"):
        images, [(reason, detail)] = outcome[stem]
        assert images == 0 and reason == "image_unreadable"
        assert detail.startswith(f"{stem}.png: symbolic link cannot be followed"), detail


def test_unreadable_per_class_mask_drops_only_that_mask(tmp_path: Path) -> None:
    grey = _grey()
    meta = {"modality": "ultrasound", "labels": {"1": "benign", "2": "malignant"}}
    meta["masks"] = "per_class"
    root = _folder(tmp_path / "b", meta, {"case1.png": grey})
    _write(root / "masks" / "case1_benign.png", _mask(grey.shape, (1, 5, 1, 5)))
    (root / "masks" / "case1_malignant.png").write_bytes(b"\x89PNG broken")
    loaded = read_case(open_image_folder("images:b", root).cases[0])
    assert len(loaded.images) == 1 and int(loaded.images[0].labels.max()) == 1
    assert [r[0] for r in loaded.rejects] == ["mask_unreadable"]
    assert loaded.rejects[0][2] == 0


def test_modality_from_flag_only_when_labels_json_has_none(tmp_path: Path) -> None:
    meta = {"labels": {"1": "polyp"}, "masks": "label_map"}
    root = _folder(tmp_path / "m", meta, {"a.png": _grey()})
    assert open_image_folder("images:m", root, modality="endoscopy").modality == "endoscopy"
    meta["modality"] = "dermoscopy"
    (root / "labels.json").write_text(json.dumps(meta))
    assert open_image_folder("images:m", root, modality="endoscopy").modality == "dermoscopy"


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (None, "no labels.json"),
        ("{not json", "malformed labels.json"),
        ({"labels": {"1": "polyp"}, "masks": "label_map"}, "pass --modality"),
        ({"modality": "photo", "labels": {"1": "x"}, "masks": "label_map"}, "'photo'"),
        ({"modality": "ct", "labels": {}, "masks": "label_map"}, '"labels" must map'),
        ({"modality": "ct", "labels": {"a": "x"}, "masks": "label_map"}, "not a whole number"),
        ({"modality": "ct", "labels": {"1": "x"}}, '"masks" to "label_map" or "per_class"'),
        ({"modality": "ct", "labels": {"1": "x"}, "masks": "label_map", "cases": "("}, "valid"),
        ({"modality": "ct", "labels": {"1": "x"}, "masks": "label_map", "cases": "a"}, "one group"),
        (
            {"modality": "ct", "labels": {"1": "x"}, "masks": "label_map", "cases": r"^(q\d)"},
            "matches no case in 'a'",
        ),
    ],
)
def test_source_errors_are_one_line(tmp_path: Path, meta: dict | str | None, expected: str) -> None:
    root = _folder(tmp_path / "e", None, {"a.png": _grey()})
    if isinstance(meta, str):
        (root / "labels.json").write_text(meta)
    elif meta is not None:
        (root / "labels.json").write_text(json.dumps(meta))
    with pytest.raises(SourceError) as error:
        open_image_folder("images:e", root)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_two_files_with_one_stem_are_refused(tmp_path: Path) -> None:
    meta = {"modality": "ct", "labels": {"1": "x"}, "masks": "label_map"}
    root = _folder(tmp_path / "s", meta, {"a.png": _grey(), "a.tif": _grey()})
    with pytest.raises(SourceError, match=r"both a\.png and a\.tif"):
        open_image_folder("images:s", root)
