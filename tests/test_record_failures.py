"""One bad record never sinks a shard: reader checks, intensity without NaN, the shard guard.

Files are real (nibabel NIfTI, Pillow PNG); the shard builder runs on real cases with a real
template generator, plus a generator that fails for one image.
"""

from __future__ import annotations

import errno
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medgrit.adapters.shard import SHARD_IO
from medgrit.adapters.sources import load_case
from medgrit.adapters.sources.image_folder import read_planar_image
from medgrit.adapters.sources.limits import MAX_PIXELS
from medgrit.adapters.sources.masks import read_mask, read_mask_png
from medgrit.adapters.sources.nifti import MAX_VOXELS, NiftiCase, NiftiReader
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.cases import UnreadableImage
from medgrit.core.failures import InfrastructureError, fails_the_shard, is_disk_full
from medgrit.core.intensity import count_non_finite, is_blank, percentile_bounds, to_uint8
from medgrit.core.pipeline import CaseTask, build_shard_rows, count_case_images
from medgrit.schemas.config import BuildConfig

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _nii(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(UnreadableImage) as info:
        NiftiReader().read(path, **kwargs)
    return info.value.reason


def _labels(dtype=np.float32, value=1.0) -> np.ndarray:
    data = np.zeros((12, 10, 4), dtype=dtype)
    data[2:8, 3:7, 1:3] = value
    return data


@pytest.mark.parametrize(
    ("value", "dtype", "reason"),
    [
        (np.inf, np.float32, "non_finite_label"),
        (np.nan, np.float32, "non_finite_label"),
        (0.4, np.float32, "fractional_label"),
        (2.5, np.float64, "fractional_label"),
        (1 + 2j, np.complex64, "complex_label"),
        (-3, np.int16, "negative_label"),
    ],
)
def test_label_values_are_never_altered(
    tmp_path: Path, value: complex, dtype: type, reason: str
) -> None:
    path = _nii(tmp_path / "labels.nii.gz", _labels(dtype, value))
    assert _reason(path, as_labels=True) == reason


def test_whole_float_labels_are_kept(tmp_path: Path) -> None:
    data = _labels(np.float32, 3.0)
    volume = NiftiReader().read(_nii(tmp_path / "l.nii.gz", data), as_labels=True)
    assert volume.data.dtype == np.uint8 and set(np.unique(volume.data)) == {0, 3}


def test_a_label_map_with_channels_is_refused_and_a_singleton_axis_dropped(
    tmp_path: Path,
) -> None:
    four = np.stack([_labels(np.uint8), _labels(np.uint8, 2)], axis=-1)
    assert _reason(_nii(tmp_path / "4d.nii.gz", four), as_labels=True) == "unsupported_shape"
    single = _labels(np.uint8)[..., None]
    volume = NiftiReader().read(_nii(tmp_path / "1.nii.gz", single), as_labels=True)
    assert volume.data.shape == (12, 10, 4)


def test_rgb_and_complex_images_are_unsupported(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    assert _reason(_nii(tmp_path / "rgb.nii.gz", rgb)) == "unsupported_dtype"
    cplx = np.ones((6, 6, 3), dtype=np.complex64)
    assert _reason(_nii(tmp_path / "c.nii.gz", cplx)) == "unsupported_dtype"


def test_a_header_larger_than_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    small = _nii(tmp_path / "small.nii", np.zeros((8, 8, 4), np.float32))
    raw = bytearray(small.read_bytes())
    struct.pack_into("<8h", raw, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[0..7]
    huge = tmp_path / "huge.nii"
    huge.write_bytes(bytes(raw))
    assert 30000**3 > MAX_VOXELS
    with pytest.raises(UnreadableImage) as info:
        NiftiReader().read(huge)
    assert info.value.reason == "too_large" and "huge.nii" in info.value.detail
    struct.pack_into("<8h", raw, 40, 3, 64, 64, 64, 1, 1, 1, 1)  # more than the file holds
    (tmp_path / "short.nii").write_bytes(bytes(raw))
    assert _reason(tmp_path / "short.nii") == "nifti_unreadable"


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height (its data is a tiny image)."""
    Image.new("L", (4, 4)).save(path)
    raw = bytearray(path.read_bytes())
    struct.pack_into(">II", raw, 16, width, height)  # IHDR width and height
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))  # the chunk's CRC
    path.write_bytes(bytes(raw))
    return path


def test_images_and_masks_over_the_pixel_limit_are_too_large(tmp_path: Path) -> None:
    side = int(MAX_PIXELS**0.5) + 100
    for reader, name in ((read_planar_image, "big.png"), (lambda p: read_mask(p, False), "m.png")):
        with pytest.raises(UnreadableImage) as info:
            reader(_png_header(tmp_path / name, side, side))
        assert info.value.reason == "too_large"
    with pytest.raises(UnreadableImage) as info:
        read_mask_png(_png_header(tmp_path / "dicom_mask.png", 3 * side, side))
    assert info.value.reason == "too_large"


def test_a_link_that_cannot_be_followed_is_unreadable_not_missing(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(UnreadableImage) as info:
        read_planar_image(loop)
    assert info.value.reason == "image_unreadable" and "symbolic link" in info.value.detail


def test_non_finite_values_take_no_part_in_the_mapping() -> None:
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 20, (40, 40, 10)).astype(np.float32)
    clean = percentile_bounds(volume, 0.5, 99.5)
    damaged = volume.copy()
    damaged.reshape(-1)[rng.choice(damaged.size, damaged.size // 30, replace=False)] = np.nan
    damaged[0, 0, :3] = [np.inf, -np.inf, np.inf]
    low, high = percentile_bounds(damaged, 0.5, 99.5)
    assert np.isfinite([low, high]).all() and abs(low - clean[0]) < 2 and abs(high - clean[1]) < 2
    pixels = to_uint8(damaged[..., 5], (low, high))
    assert pixels.std() > 10  # not black
    assert (pixels[np.isnan(damaged[..., 5])] == 0).all()
    assert count_non_finite(damaged) == damaged.size // 30 + 3
    assert is_blank(np.zeros((4, 4), np.uint8)) and not is_blank(pixels)
    with pytest.raises(ValueError):
        to_uint8(volume, (0.0, float("nan")))


def test_nan_stays_one_pixel_when_pixels_are_made_square(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(40, 10, (40, 12, 1)).astype(np.float32)  # 1 x 5 mm pixels
    holes = rng.random(image.shape) < 0.02
    image[holes] = np.nan
    labels = np.zeros(image.shape, np.uint8)
    labels[5:35, 2:10, 0] = 1
    root = tmp_path / "aniso"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.0, 5.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / "a_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / "a.nii.gz")
    ref = NiftiCase(
        source="nnunet:x",
        dataset="D",
        case="a",
        image=str(root / "imagesTr" / "a_0000.nii.gz"),
        label=str(root / "labelsTr" / "a.nii.gz"),
        modality="ct",
        labels=((1, "liver"),),
    )
    rows = build_shard_rows(_tasks([ref]), BuildConfig(out="unused"), TemplateGenerator(), SHARD_IO)
    from medgrit.adapters.store.png import decode_png

    assert len(rows.images) == 1, rows.rejects
    row = rows.images[0]
    pixels = decode_png(row["image"]["bytes"])
    assert pixels.shape == (60, 40)  # 12 rows of 5 mm became 60 of 1 mm
    assert 0 < np.count_nonzero(pixels == 0) <= 5 * int(holes.sum())


def test_failure_classes() -> None:
    assert fails_the_shard(OSError(errno.ENOSPC, "full"))
    assert fails_the_shard(OSError(errno.EIO, "io"))
    assert fails_the_shard(MemoryError())
    assert fails_the_shard(InfrastructureError("provider down"))
    assert not fails_the_shard(OSError(errno.EACCES, "one file"))
    assert not fails_the_shard(ValueError("bad header"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)


def _ct_case(root: Path, name: str, image: np.ndarray, labels: np.ndarray) -> NiftiCase:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    image_path = _nii(root / "imagesTr" / f"{name}_0000.nii.gz", image)
    label_path = _nii(root / "labelsTr" / f"{name}.nii.gz", labels)
    return NiftiCase(
        source=f"nnunet:{root}",
        dataset="Synthetic",
        case=name,
        image=str(image_path),
        label=str(label_path),
        modality="ct",
        labels=((1, "liver"), (2, "spleen")),
    )


def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 60, (48, 40, 3)).astype(np.float32)
    labels = np.zeros((48, 40, 3), np.uint8)
    labels[5:20, 6:18, :] = 1
    labels[25:40, 20:35, :] = 2
    return image, labels


def _tasks(cases: list[NiftiCase]) -> list[CaseTask]:
    return [CaseTask(ref, f"case{i}", "train") for i, ref in enumerate(cases)]


def test_one_bad_case_becomes_one_reject_and_the_shard_goes_on(tmp_path: Path) -> None:
    good = _ct_case(tmp_path, "good", *_phantom(0))
    image, labels = _phantom(1)
    inf_labels = _ct_case(
        tmp_path, "inf", image, np.where(labels > 0, np.inf, 0).astype(np.float32)
    )
    blank = _ct_case(tmp_path, "blank", np.full_like(image, -1000), labels)
    good2 = _ct_case(tmp_path, "good2", *_phantom(2))
    config = BuildConfig(out=str(tmp_path / "out"))
    rows = build_shard_rows(
        _tasks([good, inf_labels, blank, good2]), config, TemplateGenerator(), SHARD_IO
    )
    kept = {r["case_id"] for r in rows.images}
    assert kept == {"case0", "case3"}
    assert len(rows.conversations) == len(rows.images) == 6
    by_case = {(r["case_id"], r["reason"]) for r in rows.rejects}
    assert ("case1", "non_finite_label") in by_case
    blank_rows = [r for r in rows.rejects if r["case_id"] == "case2"]
    assert {r["reason"] for r in blank_rows} == {"blank_image"} and len(blank_rows) == 3
    assert all(r["image_id"].startswith("case2-a") for r in blank_rows)
    assert (
        count_case_images(inf_labels, config, load_case) == 1
    )  # planning keeps it for its reject row


class _FailsFor:
    """The template generator, except that writing about one image raises."""

    def __init__(self, image_id: str, error: Exception) -> None:
        self.inner = TemplateGenerator()
        self.name, self.template_hash = self.inner.name, self.inner.template_hash
        self.text_rules = None
        self.image_id, self.error = image_id, error

    def generate_all(self, items):
        if any(image.image_id == self.image_id for image, _ in items):
            raise self.error
        return self.inner.generate_all(items)


def test_a_generator_error_for_one_image_drops_only_that_image(tmp_path: Path) -> None:
    cases = [_ct_case(tmp_path, f"c{i}", *_phantom(i)) for i in range(2)]
    config = BuildConfig(out=str(tmp_path / "out"))
    generator = _FailsFor("case1-a0001", KeyError("a template variable"))
    rows = build_shard_rows(_tasks(cases), config, generator, SHARD_IO)
    assert len(rows.images) == 5 and "case1-a0001" not in {r["image_id"] for r in rows.images}
    assert {r["image_id"] for r in rows.regions} == {r["image_id"] for r in rows.images}
    assert [(r["stage"], r["reason"], r["image_id"]) for r in rows.rejects] == [
        ("generate", "unexpected_error", "case1-a0001")
    ]
    assert "KeyError" in rows.rejects[0]["detail"]


def test_infrastructure_errors_still_fail_the_shard(tmp_path: Path) -> None:
    cases = [_ct_case(tmp_path, "c0", *_phantom(0))]
    config = BuildConfig(out=str(tmp_path / "out"))
    generator = _FailsFor("case0-a0000", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        build_shard_rows(_tasks(cases), config, generator, SHARD_IO)


def test_dicom_files_that_share_their_uids_are_distinct_cases(tmp_path: Path) -> None:
    import shutil

    from pydicom.data import get_testdata_file

    from medgrit.adapters.source_specs import open_sources

    root = tmp_path / "Liver"
    root.mkdir()
    for name in ("liver.dcm", "liver_1frame.dcm"):  # derived files with the same UIDs
        shutil.copy(get_testdata_file(name), root / name)
    (source,) = open_sources([f"dicom:{root}"], key=b"k" * 32)
    assert len({c.case for c in source.cases}) == 2
    (again,) = open_sources([f"dicom:{root}"], key=b"k" * 32)
    assert [c.case for c in again.cases] == [c.case for c in source.cases]
