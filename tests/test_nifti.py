"""NIfTI reading, reorientation and rendering on real data (nilearn's MNI152, Debian's AAL)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medgrit.adapters.shard import SHARD_IO
from medgrit.adapters.sources.nifti import NiftiReader
from medgrit.adapters.sources.nnunet import open_msd, open_nnunet
from medgrit.adapters.text.templates import TemplateGenerator
from medgrit.core.cases import UnreadableImage
from medgrit.core.pipeline import CaseTask, build_shard_rows
from medgrit.core.regions import extract_regions
from medgrit.core.slicing import display_slice
from medgrit.schemas.config import BuildConfig


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_reader_reorients_lps_storage_to_ras(tmp_path: Path) -> None:
    ras = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    lps_affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    path = _write(tmp_path / "lps.nii.gz", np.ascontiguousarray(ras[::-1, ::-1, :]), lps_affine)
    volume = NiftiReader().read(path)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(volume.data, ras)
    assert volume.spacing == (2.0, 2.0, 3.0)


def test_reader_keeps_labels_integer_and_selects_channel(tmp_path: Path) -> None:
    labels = np.zeros((3, 3, 2), np.float32)
    labels[1, 1, 0] = 2.0000001
    vol = NiftiReader().read(_write(tmp_path / "l.nii.gz", labels, np.eye(4)), as_labels=True)
    assert vol.data.dtype == np.uint8 and vol.data[1, 1, 0] == 2
    four_d = np.stack([np.full((3, 3, 2), c, np.float32) for c in range(3)], axis=-1)
    vol = NiftiReader().read(_write(tmp_path / "c.nii.gz", four_d, np.eye(4)), channel=2)
    assert vol.data.shape == (3, 3, 2) and np.all(vol.data == 2)


def test_truncated_and_missing_files_raise_with_reason(tmp_path: Path) -> None:
    good = _write(
        tmp_path / "good.nii.gz", np.random.default_rng(0).random((40, 40, 40)), np.eye(4)
    )
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableImage) as info:
        NiftiReader().read(truncated)
    assert info.value.reason == "nifti_unreadable"
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(UnreadableImage) as info:
        NiftiReader().read(garbage)
    assert info.value.reason == "nifti_unreadable"
    with pytest.raises(UnreadableImage) as info:
        NiftiReader().read(tmp_path / "absent.nii.gz")
    assert info.value.reason == "file_missing"


def _centre_x(label_map: np.ndarray, label: int) -> float:
    return float(np.nonzero(label_map == label)[1].mean())


def test_aal_left_structures_appear_on_the_image_right(aal_nnunet: Path) -> None:
    source = open_nnunet(f"nnunet:{aal_nnunet}", aal_nnunet)
    names = dict(source.labels)
    assert names[1] == "left precentral" and names[2] == "right precentral"
    labels = NiftiReader().read(source.cases[0].label, as_labels=True).data
    width = labels.shape[0]
    for plane, index in (("axial", 120), ("coronal", 100)):
        image = display_slice(labels, plane, index)
        assert _centre_x(image, 1) > width / 2, plane  # Precentral_L
        assert _centre_x(image, 2) < width / 2, plane  # Precentral_R


def test_aal_regions_match_atlas_labels(aal_nnunet: Path) -> None:
    source = open_nnunet(f"nnunet:{aal_nnunet}", aal_nnunet)
    labels = NiftiReader().read(source.cases[0].label, as_labels=True).data
    slice_map = display_slice(labels, "axial", 80)
    table = extract_regions(slice_map, min_area=1).regions
    merged = table.label_id[table.instance == 0]
    np.testing.assert_array_equal(merged, np.setdiff1d(np.unique(slice_map), [0]))


def test_mni152_demo_mr_has_hemisphere_labels_on_the_right_sides(demo_dir: Path) -> None:
    source = open_msd("msd:demo", demo_dir / "Task900_MNI152BrainMR")
    assert source.modality == "mr"
    names = {v: k for k, v in source.labels}
    labels = NiftiReader().read(source.cases[0].label, as_labels=True).data
    image = display_slice(labels, "axial", 100)
    assert _centre_x(image, names["left grey matter"]) > image.shape[1] / 2
    assert _centre_x(image, names["right white matter"]) < image.shape[1] / 2


def test_ct_phantom_is_windowed_and_liver_is_on_the_image_left(demo_dir: Path) -> None:
    source = open_nnunet("nnunet:demo", demo_dir / "Dataset901_SyntheticCTPhantom")
    case = source.cases[0]
    config = BuildConfig(out="unused", max_slices_per_case=3)
    rows = build_shard_rows(
        [CaseTask(case, "case0", "train")], config, TemplateGenerator(), SHARD_IO
    )
    assert len(rows.images) == 3 and not [r for r in rows.rejects if r["stage"] == "load"]
    liver = [r for r in rows.regions if r["label"] == "liver"]
    assert liver, "the liver appears in the chosen slices"
    for region in liver:
        width = next(i["width"] for i in rows.images if i["image_id"] == region["image_id"])
        assert (region["bbox"][0] + region["bbox"][2]) / 2 < width / 2
    from medgrit.adapters.store.png import decode_png

    pixels = decode_png(rows.images[1]["image"]["bytes"])
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    # Air (-1000 HU) is below the 40/400 window: black; bone (650 HU) above it: white.
    assert pixels.min() == 0 and pixels.max() == 255
