"""DICOM source: pydicom-data's real files and synthetic series, SEG, RTSTRUCT and PNG masks.

Pins the contract of ``medgrit.adapters.sources.dicom``: canonical RAS+ volumes identical to the
same data read from NIfTI, slices sorted by position, label ids = SegmentNumber / ROINumber,
holes kept, stable reject reasons, SUV, and no DICOM identifying value in anything returned or
logged.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from skimage.draw import polygon as draw_polygon

from medgrit.adapters.sources.dicom import DicomCase, open_dicom, read_case, suv_tags
from medgrit.adapters.sources.nifti import NiftiReader
from medgrit.adapters.synthetic.dicom_writer import (
    series_affine,
    write_mask_png,
    write_rtstruct,
    write_seg,
    write_series,
    write_single_image,
)
from medgrit.core.cases import LoadedCase, SourceError, UnreadableImage
from medgrit.core.contours import fill_even_odd
from medgrit.core.regions import extract_regions
from medgrit.core.slicing import display_slice
from medgrit.core.suv import suv_factor

KEY = b"test-key-0123456789abcdef"
SPACING = (0.7, 0.9, 2.5)
ORIGIN = (-12.0, 30.5, 101.0)


def real(name: str) -> Path:
    return Path(get_testdata_file(name))


def open_one(root: Path, **kwargs) -> DicomCase:
    source = open_dicom(f"dicom:{root}", root, key=KEY, **kwargs)
    assert len(source.cases) == 1
    return source.cases[0]


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """A small CT-like volume (HU) with three labels, one a ring with a hole."""
    shape = (28, 22, 9)
    x, y, z = np.indices(shape)
    image = (-1000 + 40 * x - 15 * y + 7 * z).astype(np.float64)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[3:10, 4:12, 1:6] = 1
    labels[14:20, 14:20, 2:8] = 2  # toward the patient's right, anterior
    ring = ((x - 20) ** 2 + (y - 6) ** 2 <= 16) & ((x - 20) ** 2 + (y - 6) ** 2 > 3)
    labels[ring & (z >= 3) & (z <= 6)] = 3
    return image, labels


NAMES = {1: "liver", 2: "kidney_right", 3: "aorta wall"}


def save_nifti(array: np.ndarray, path: Path) -> None:
    """Save on the canonical affine, but stored flipped (LPS-like) so the reader reorients."""
    affine = series_affine(array.shape, SPACING, ORIGIN)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [array.shape[0] - 1, array.shape[1] - 1, 0]
    nib.save(nib.Nifti1Image(array[::-1, ::-1, :].copy(), affine @ flip), path)


def single_image_root(tmp_path: Path, source: Path, mask_shape: tuple[int, int]) -> Path:
    root = tmp_path / "Singles"
    root.mkdir(parents=True)
    shutil.copy(source, root / "img.dcm")
    mask = np.zeros(mask_shape, dtype=np.uint8)
    mask[mask_shape[0] // 4 : mask_shape[0] // 2, mask_shape[1] // 4 : mask_shape[1] // 2] = 1
    write_mask_png(mask, root / "img_mask.png")
    (root / "labels.json").write_text(json.dumps({"0": "background", "1": "left lung"}))
    return root


# ---------------------------------------------------------------------------------------------
# Real files from pydicom-data


def test_ct_small_single_image_is_rescaled_to_hu(tmp_path: Path) -> None:
    root = single_image_root(tmp_path, real("CT_small.dcm"), (128, 128))
    ref = open_one(root)
    assert (ref.modality, ref.format, ref.labels) == ("ct", "dicom", ((1, "left lung"),))
    loaded = read_case(ref)
    ds = pydicom.dcmread(real("CT_small.dcm"))
    (image,) = loaded.images
    assert loaded.intensity == "hu"
    assert image.pixels.dtype == np.float32 and image.plane == "2d"
    np.testing.assert_array_equal(image.pixels, ds.pixel_array.astype(np.float32) - 1024)
    assert image.labels.sum() == 32 * 32 and image.labels.dtype == np.uint8


def test_monochrome1_radiograph_is_inverted(tmp_path: Path) -> None:
    root = single_image_root(tmp_path, real("RG1_UNCR.dcm"), (1955, 1841))
    ref = open_one(root)
    assert ref.modality == "xray"
    loaded = read_case(ref)
    raw = pydicom.dcmread(real("RG1_UNCR.dcm")).pixel_array.astype(np.float32)
    (image,) = loaded.images
    assert loaded.intensity == "percentile"
    # BitsStored 15: stored 0 (shown white in MONOCHROME1) becomes the brightest value.
    np.testing.assert_array_equal(image.pixels, 32767 - raw)


def test_rgb_ultrasound_is_display_rgb(tmp_path: Path) -> None:
    root = single_image_root(tmp_path, real("US1_UNCR.dcm"), (480, 640))
    ref = open_one(root)
    loaded = read_case(ref)
    (image,) = loaded.images
    assert (ref.modality, loaded.intensity) == ("ultrasound", "display")
    assert image.pixels.dtype == np.uint8 and image.pixels.shape == (480, 640, 3)
    np.testing.assert_array_equal(image.pixels, pydicom.dcmread(real("US1_UNCR.dcm")).pixel_array)


def test_ybr_and_palette_colour_become_rgb(tmp_path: Path) -> None:
    reference = pydicom.dcmread(real("SC_rgb.dcm")).pixel_array.astype(int)
    root = single_image_root(tmp_path, real("SC_ybr_full_422_uncompressed.dcm"), (100, 100))
    with pytest.raises(SourceError, match="--modality"):
        open_dicom(f"dicom:{root}", root, key=KEY)  # Modality OT says nothing
    (image,) = read_case(open_one(root, modality="endoscopy")).images
    assert image.pixels.dtype == np.uint8
    assert np.abs(image.pixels.astype(int) - reference).max() <= 8

    palette = single_image_root(tmp_path / "p", real("examples_palette.dcm"), (350, 800))
    loaded = read_case(open_one(palette))
    (image,) = loaded.images
    assert (loaded.modality, loaded.intensity) == ("ultrasound", "display")
    assert image.pixels.shape == (350, 800, 3) and image.pixels.dtype == np.uint8
    assert len(np.unique(image.pixels.reshape(-1, 3), axis=0)) > 2


def test_ultrasound_cine_gives_one_image_per_masked_frame(tmp_path: Path) -> None:
    root = single_image_root(tmp_path, real("examples_ybr_color.dcm"), (240, 320))
    (root / "img_mask.png").rename(root / "img_mask_5.png")
    shutil.copy(root / "img_mask_5.png", root / "img_mask_0.png")
    loaded = read_case(open_one(root))
    assert [image.slice_index for image in loaded.images] == [0, 5]
    frames = pydicom.dcmread(real("examples_ybr_color.dcm")).pixel_array  # pydicom's RGB
    for image in loaded.images:
        assert image.pixels.shape == (240, 320, 3)
        assert np.abs(image.pixels.astype(int) - frames[image.slice_index]).max() <= 1
    assert not np.array_equal(loaded.images[0].pixels, loaded.images[1].pixels)


def test_mr_small_single_image(tmp_path: Path) -> None:
    root = single_image_root(tmp_path, real("MR_small.dcm"), (64, 64))
    ref = open_one(root)
    loaded = read_case(ref)
    assert (ref.modality, loaded.intensity) == ("mr", "percentile")
    raw = pydicom.dcmread(real("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(loaded.images[0].pixels, raw.astype(np.float32))


def test_real_seg_without_its_ct_names_segments_and_rejects(tmp_path: Path) -> None:
    root = tmp_path / "Liver"
    root.mkdir()
    shutil.copy(real("liver.dcm"), root / "liver.dcm")
    shutil.copy(real("liver_1frame.dcm"), root / "liver_1frame.dcm")
    shutil.copy(real("rtstruct.dcm"), root / "rtstruct.dcm")  # no preamble: read with force
    source = open_dicom(f"dicom:{root}", root, key=KEY)
    assert len(source.cases) == 3
    by_name = {Path(c.mask).name: c for c in source.cases}
    for name in ("liver.dcm", "liver_1frame.dcm"):
        assert by_name[name].labels == ((1, "liver"),)
        assert by_name[name].modality == "ct"  # from the referenced SOP class
    assert by_name["rtstruct.dcm"].labels == ((1, "patient"),)  # POINT ROIs are not labels
    for ref in source.cases:
        assert ref.files == ()
        with pytest.raises(UnreadableImage) as caught:
            read_case(ref)
        assert caught.value.reason == "referenced_series_missing"


def _rebuild_liver_ct(folder: Path, seg: pydicom.Dataset) -> None:
    """Write the three CT slices liver.dcm references (zero pixels, its UIDs and geometry)."""
    files = write_series(np.zeros((512, 512, 3)), (1.0, 1.0, 1.0), folder)
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = sorted(
        seg.PerFrameFunctionalGroupsSequence,
        key=lambda f: float(f.PlanePositionSequence[0].ImagePositionPatient[2]),
    )
    for path, frame in zip(files, frames, strict=True):
        ds = pydicom.dcmread(path)
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        ds.StudyInstanceUID = seg.StudyInstanceUID
        ds.FrameOfReferenceUID = seg.FrameOfReferenceUID
        ds.ImagePositionPatient = frame.PlanePositionSequence[0].ImagePositionPatient
        ds.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        ds.PixelSpacing = shared.PixelMeasuresSequence[0].PixelSpacing
        ds.save_as(path)


def test_real_seg_frames_land_on_their_source_slices(tmp_path: Path) -> None:
    root = tmp_path / "Liver"
    root.mkdir()
    shutil.copy(real("liver.dcm"), root / "liver.dcm")
    seg = pydicom.dcmread(root / "liver.dcm")
    _rebuild_liver_ct(root / "ct", seg)
    loaded = read_case(open_one(root))
    labels = loaded.label_volume.data
    assert labels.shape == (512, 512, 3) and labels.dtype == np.uint8
    assert loaded.label_names == ((1, "liver"),)
    np.testing.assert_allclose(loaded.volume.spacing, (0.810547, 0.810547, 1.0), atol=1e-6)
    # Frames are listed inferior -> superior; an axial DICOM frame is already displayed in the
    # radiological convention, so each display slice equals its SEG frame.
    for s, frame in enumerate(seg.pixel_array):
        np.testing.assert_array_equal(display_slice(labels, "axial", s), frame)


def test_enhanced_multiframe_ct_with_seg(tmp_path: Path) -> None:
    root = tmp_path / "Enhanced"
    root.mkdir()
    shutil.copy(real("eCT_Supplemental.dcm"), root / "ect.dcm")
    ct = pydicom.dcmread(root / "ect.dcm")
    mask = np.zeros((2, 512, 512), dtype=np.uint8)
    mask[0, 100:200, 50:120] = 1
    mask[1, 300:310, 400:450] = 1
    seg = hd.seg.Segmentation(
        source_images=[ct],
        pixel_array=mask,
        segmentation_type="BINARY",
        segment_descriptions=[
            hd.seg.SegmentDescription(1, "lesion", codes.SCT.Tissue, codes.SCT.Organ, "MANUAL")
        ],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(root / "seg.dcm")
    loaded = read_case(open_one(root))
    image, labels = loaded.volume, loaded.label_volume
    assert image.data.shape == (512, 512, 2)
    assert image.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    # Rows run toward the patient's right (IOP row cosine -x): columns map to +x unflipped.
    raw = ct.pixel_array.astype(np.float32) - 1024
    for s in range(2):
        np.testing.assert_array_equal(image.data[:, ::-1, s], raw[s].T)
        np.testing.assert_array_equal(labels.data[:, ::-1, s], mask[s].T)


# ---------------------------------------------------------------------------------------------
# Round trips through the writer


@pytest.mark.parametrize("orientation", ["axial", "coronal", "sagittal"])
def test_seg_round_trip_matches_nifti(tmp_path: Path, orientation: str) -> None:
    image, labels = phantom()
    root = tmp_path / "Phantom"
    files = write_series(image, SPACING, root / "ct", origin=ORIGIN, orientation=orientation)
    write_seg(labels, NAMES, files, root / "seg.dcm")
    save_nifti(image.astype(np.int16), tmp_path / "image.nii.gz")
    save_nifti(labels, tmp_path / "labels.nii.gz")
    nifti_image = NiftiReader().read(tmp_path / "image.nii.gz")
    nifti_labels = NiftiReader().read(tmp_path / "labels.nii.gz", as_labels=True)

    ref = open_one(root)
    assert ref.labels == ((1, "liver"), (2, "right kidney"), (3, "aorta wall"))
    assert ref.files == tuple(sorted(str(f) for f in files))
    loaded = read_case(ref)
    assert (loaded.modality, loaded.intensity) == ("ct", "hu")
    assert loaded.volume.data.dtype == np.float32
    assert loaded.label_volume.data.dtype == nifti_labels.data.dtype == np.uint8
    np.testing.assert_array_equal(loaded.volume.data, nifti_image.data)
    np.testing.assert_array_equal(loaded.label_volume.data, nifti_labels.data)
    np.testing.assert_allclose(loaded.volume.spacing, nifti_image.spacing, atol=1e-5)
    np.testing.assert_allclose(loaded.volume.affine, nifti_image.affine, atol=1e-4)
    for z in range(labels.shape[2]):
        ours = extract_regions(display_slice(loaded.label_volume.data, "axial", z)).regions
        theirs = extract_regions(display_slice(nifti_labels.data, "axial", z)).regions
        np.testing.assert_array_equal(ours.label_id, theirs.label_id)
        np.testing.assert_array_equal(ours.bbox, theirs.bbox)
        np.testing.assert_array_equal(ours.area, theirs.area)


def test_file_names_are_not_in_slice_order(tmp_path: Path) -> None:
    image, labels = phantom()
    files = write_series(image, SPACING, tmp_path / "P" / "ct")
    assert [f.name for f in files] != sorted(f.name for f in files)
    instance_numbers = [int(pydicom.dcmread(f).InstanceNumber) for f in files]
    assert instance_numbers != sorted(instance_numbers)
    write_seg(labels, NAMES, files, tmp_path / "P" / "seg.dcm")
    loaded = read_case(open_one(tmp_path / "P"))
    np.testing.assert_array_equal(loaded.volume.data, image.astype(np.float32))
    np.testing.assert_array_equal(loaded.label_volume.data, labels)


def test_rtstruct_round_trip_keeps_the_hole(tmp_path: Path) -> None:
    image, labels = phantom()
    root = tmp_path / "RT"
    files = write_series(image, SPACING, root / "ct", origin=ORIGIN)
    write_rtstruct(labels, NAMES, files, root / "rtstruct.dcm")
    ref = open_one(root)
    assert ref.labels == ((1, "liver"), (2, "right kidney"), (3, "aorta wall"))
    loaded = read_case(ref)
    np.testing.assert_array_equal(loaded.label_volume.data, labels)
    assert loaded.label_volume.data[20, 6, 4] == 0  # the centre of the ring stays empty
    assert loaded.label_volume.data[23, 6, 4] == 3
    rt = pydicom.dcmread(root / "rtstruct.dcm")
    ring = next(r for r in rt.ROIContourSequence if r.ReferencedROINumber == 3)
    assert len(ring.ContourSequence) == 2 * 4  # outer and inner contour on each of 4 slices


def test_fractional_seg_is_thresholded_at_half(tmp_path: Path) -> None:
    image, labels = phantom()
    root = tmp_path / "Frac"
    files = write_series(image, SPACING, root / "ct")
    write_seg(labels, NAMES, files, root / "seg.dcm", fractional=True)
    seg = pydicom.dcmread(root / "seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL"
    assert set(np.unique(seg.pixel_array)) == {0, 76, 255}  # 0.3 rings are written
    loaded = read_case(open_one(root))
    np.testing.assert_array_equal(loaded.label_volume.data, labels)


def test_overlapping_segments_higher_number_wins(tmp_path: Path) -> None:
    image, _ = phantom()
    stack = np.zeros((*image.shape, 2), dtype=bool)
    stack[2:12, 2:12, 2:5, 0] = True
    stack[8:16, 8:16, 3:7, 1] = True
    files = write_series(image, SPACING, tmp_path / "O" / "ct")
    write_seg(stack, {1: "a", 2: "b"}, files, tmp_path / "O" / "seg.dcm")
    data = read_case(open_one(tmp_path / "O")).label_volume.data
    expected = np.where(stack[..., 1], 2, np.where(stack[..., 0], 1, 0))
    np.testing.assert_array_equal(data, expected)


def test_writer_is_deterministic(tmp_path: Path) -> None:
    image, labels = phantom()
    first = write_series(image, SPACING, tmp_path / "a", origin=ORIGIN)
    second = write_series(image, SPACING, tmp_path / "b", origin=ORIGIN)
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in second]
    write_seg(labels, NAMES, first, tmp_path / "a.dcm")
    write_seg(labels, NAMES, second, tmp_path / "b.dcm")
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


def test_fill_even_odd_matches_skimage_polygon() -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        vertices = rng.uniform(-3, 43, size=(rng.integers(3, 9), 2))
        ours = fill_even_odd([vertices], 40, 40)
        rr, cc = draw_polygon(vertices[:, 1], vertices[:, 0], shape=(40, 40))
        theirs = np.zeros((40, 40), dtype=bool)
        theirs[rr, cc] = True
        assert (ours != theirs).sum() <= 2  # only centres within float error of an edge
    square = np.array([[0.5, 0.5], [9.5, 0.5], [9.5, 9.5], [0.5, 9.5]])
    hole = np.array([[3.5, 3.5], [6.5, 3.5], [6.5, 6.5], [3.5, 6.5]])
    ring = fill_even_odd([square, hole], 12, 12)
    assert ring.sum() == 81 - 9 and not ring[5, 5] and ring[2, 2]


# ---------------------------------------------------------------------------------------------
# Bad records become stable reasons


def _case_error(root: Path) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as caught:
        read_case(open_one(root))
    return caught.value


def test_missing_slice_is_inconsistent_spacing(tmp_path: Path) -> None:
    image, labels = phantom()
    files = write_series(image, SPACING, tmp_path / "G" / "ct")
    write_seg(labels, NAMES, files, tmp_path / "G" / "seg.dcm")
    files[4].unlink()
    assert _case_error(tmp_path / "G").reason == "inconsistent_spacing"


def test_tilted_slice_is_inconsistent_orientation(tmp_path: Path) -> None:
    image, labels = phantom()
    files = write_series(image, SPACING, tmp_path / "T" / "ct")
    write_seg(labels, NAMES, files, tmp_path / "T" / "seg.dcm")
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9998, 0.02]
    ds.save_as(files[2])
    assert _case_error(tmp_path / "T").reason == "inconsistent_orientation"


def test_truncated_and_pixelless_files(tmp_path: Path) -> None:
    image, labels = phantom()
    files = write_series(image, SPACING, tmp_path / "X" / "ct")
    write_seg(labels, NAMES, files, tmp_path / "X" / "seg.dcm")
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 200])
    assert _case_error(tmp_path / "X").reason == "dicom_unreadable"
    files[3].write_bytes(data)
    ds = pydicom.dcmread(files[3])
    del ds.PixelData
    ds.save_as(files[3])
    assert _case_error(tmp_path / "X").reason == "missing_pixel_data"


def test_unparseable_header_becomes_a_case_that_fails(tmp_path: Path) -> None:
    image, labels = phantom()
    files = write_series(image, SPACING, tmp_path / "B" / "ct")
    write_seg(labels, NAMES, files, tmp_path / "B" / "seg.dcm")
    (tmp_path / "B" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    source = open_dicom("dicom:B", tmp_path / "B", key=KEY)
    assert len(source.cases) == 2
    broken = next(c for c in source.cases if c.label_file.endswith("broken.dcm"))
    with pytest.raises(UnreadableImage) as caught:
        read_case(broken)
    assert caught.value.reason == "dicom_unreadable"


def test_seg_with_missing_series(tmp_path: Path) -> None:
    image, labels = phantom()
    files = write_series(image, SPACING, tmp_path / "M" / "ct")
    write_seg(labels, NAMES, files, tmp_path / "M" / "seg.dcm")
    shutil.rmtree(tmp_path / "M" / "ct")
    ref = open_one(tmp_path / "M")
    assert (ref.files, ref.modality, ref.labels[0]) == ((), "ct", (1, "liver"))
    assert _case_error(tmp_path / "M").reason == "referenced_series_missing"


def test_seg_found_by_per_frame_references_and_copies_count_once(tmp_path: Path) -> None:
    image, labels = phantom()
    root = tmp_path / "Refs"
    files = write_series(image, SPACING, root / "ct")
    write_seg(labels, NAMES, files, root / "seg.dcm")
    seg = pydicom.dcmread(root / "seg.dcm")
    del seg.ReferencedSeriesSequence  # only the per-frame source references are left
    seg.save_as(root / "seg.dcm")
    shutil.copytree(root / "ct", root / "copy_of_ct")
    ref = open_one(root)
    assert len(ref.files) == image.shape[2]
    np.testing.assert_array_equal(read_case(ref).label_volume.data, labels)


def test_mask_of_wrong_size_and_unreadable_mask(tmp_path: Path) -> None:
    root = tmp_path / "US"
    cine = np.zeros((3, 40, 60, 3), dtype=np.uint8)
    cine[:, 10:30, 20:40] = (200, 120, 40)
    write_single_image(cine, root / "cine.dcm", modality="US", photometric="RGB")
    good = np.zeros((40, 60), dtype=np.uint8)
    good[12:28, 22:38] = 2
    write_mask_png(good, root / "cine_mask_0.png")
    write_mask_png(np.ones((41, 60), dtype=np.uint8), root / "cine_mask_2.png")
    (root / "labels.json").write_text(json.dumps({"2": "thyroid_l"}))
    ref = open_one(root)
    loaded = read_case(ref)
    assert [im.slice_index for im in loaded.images] == [0]
    assert loaded.images[0].pixels.shape == (40, 60, 3)
    np.testing.assert_array_equal(loaded.images[0].labels, good)
    assert loaded.label_names == ((2, "left thyroid"),)
    ((reason, detail, index),) = loaded.rejects
    assert (reason, index) == ("mask_shape_mismatch", 2)
    assert "41" in detail

    (root / "cine_mask_0.png").unlink()
    assert _case_error(root).reason == "mask_shape_mismatch"
    (root / "cine_mask_2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert _case_error(root).reason == "mask_unreadable"


def test_monochrome1_writer_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "CR"
    pixels = np.tile(np.arange(0, 4000, 50, dtype=np.uint16), (30, 1))
    write_single_image(pixels, root / "chest.dcm", modality="DX", photometric="MONOCHROME1")
    mask = np.zeros(pixels.shape, dtype=np.uint8)
    mask[5:20, 10:40] = 1
    write_mask_png(mask, root / "chest_mask.png")
    (root / "labels.json").write_text(json.dumps({"1": "heart"}))
    loaded = read_case(open_one(root))
    assert loaded.modality == "xray"
    np.testing.assert_array_equal(loaded.images[0].pixels, pixels.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# PET


PET_TAGS = {
    "weight_kg": 72.5,
    "dose_bq": 3.2e8,
    "injection_time": "091500",
    "series_time": "102000",
    "half_life_s": 6586.2,
}


def test_pet_series_in_suv(tmp_path: Path) -> None:
    suv = np.zeros((20, 18, 6))
    suv[5:10, 5:10, 1:5] = 2.5
    suv[12:16, 3:8, 2:4] = 11.0
    labels = (suv > 0).astype(np.uint8) + (suv > 5)
    root = tmp_path / "PET"
    files = write_series(suv, (4.0, 4.0, 3.0), root / "pt", modality="PT", pet_suv=PET_TAGS)
    write_seg(labels, {1: "tumour", 2: "hot spot"}, files, root / "seg.dcm")
    ref = open_one(root)
    assert ref.modality == "pet"
    loaded = read_case(ref)
    assert loaded.intensity == "suv"
    # Independent SUVbw: Bq/ml * weight [g] / (dose decayed over 65 minutes of F-18).
    ds = pydicom.dcmread(files[0])
    decayed = 3.2e8 * 2 ** (-(65 * 60) / 6586.2)
    assert suv_factor(suv_tags(ds)) == pytest.approx(72.5 * 1000 / decayed, rel=1e-9)
    np.testing.assert_allclose(loaded.volume.data, suv, atol=2e-3)
    np.testing.assert_array_equal(loaded.label_volume.data, labels)


def test_pet_without_suv_tags_uses_percentiles(tmp_path: Path) -> None:
    activity = np.zeros((10, 10, 4))
    activity[2:6, 2:6, 1:3] = 5000.0
    root = tmp_path / "PET"
    files = write_series(activity, (4.0, 4.0, 3.0), root / "pt", modality="PT")
    write_seg((activity > 0).astype(np.uint8), {1: "lesion"}, files, root / "seg.dcm")
    loaded = read_case(open_one(root))
    assert loaded.intensity == "percentile"
    np.testing.assert_allclose(loaded.volume.data, activity, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# Discovery


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_dicom("dicom:none", tmp_path / "none", key=KEY)
    (tmp_path / "pngs").mkdir()
    write_mask_png(np.zeros((4, 4), dtype=np.uint8), tmp_path / "pngs" / "a_mask.png")
    with pytest.raises(SourceError, match="no DICOM files"):
        open_dicom("dicom:pngs", tmp_path / "pngs", key=KEY)
    root = single_image_root(tmp_path, real("CT_small.dcm"), (128, 128))
    (root / "labels.json").unlink()
    with pytest.raises(SourceError, match=r"labels\.json") as caught:
        open_dicom("dicom:x", root, key=KEY)
    assert "\n" not in str(caught.value)
    image, _ = phantom()
    write_series(image, SPACING, tmp_path / "only_series")
    with pytest.raises(SourceError, match="are not cases"):
        open_dicom("dicom:s", tmp_path / "only_series", key=KEY)


def test_cases_ids_and_determinism(tmp_path: Path) -> None:
    image, labels = phantom()
    root = tmp_path / "Collection"
    patient = {"PatientID": "P1"}
    files = write_series(image, SPACING, root / "study" / "ct", patient=patient)
    write_seg(labels, NAMES, files, root / "study" / "seg.dcm")
    write_rtstruct(labels, NAMES, files, root / "study" / "rt.dcm")
    write_series(image + 1, SPACING, root / "unlabelled", patient={"PatientID": "P2"})
    source = open_dicom(f"dicom:{root}", root, key=KEY)
    assert (source.kind, source.dataset, source.modality) == ("dicom", "Collection", "ct")
    assert len(source.cases) == 2  # the unlabelled series is no case
    assert [c.case for c in source.cases] == sorted(c.case for c in source.cases)
    assert len({c.case for c in source.cases}) == 2
    assert len({c.patient for c in source.cases}) == 1  # same patient: same split group
    assert source == open_dicom(f"dicom:{root}", root, key=KEY)
    other = open_dicom(f"dicom:{root}", root, key=b"another-key-0123456789")
    assert not {c.case for c in other.cases} & {c.case for c in source.cases}
    forced = open_dicom(f"dicom:{root}", root, key=KEY, modality="mr")
    assert {c.modality for c in forced.cases} == {"mr"}
    assert read_case(forced.cases[0]).intensity == "percentile"


# ---------------------------------------------------------------------------------------------
# Privacy

PHI = {
    "PatientName": "Zebedee^Quixote",
    "PatientID": "PHI-ID-77310",
    "PatientBirthDate": "19230417",
    "InstitutionName": "St Xyzzy Infirmary",
    "StudyDate": "20011109",
    "StudyTime": "071523",
    "AccessionNumber": "ACC99871",
    "ReferringPhysicianName": "Doctor^Plover",
}


def _texts(value: object) -> str:
    return repr(value)


def test_no_identifying_value_leaves_the_module(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    caplog.set_level(logging.DEBUG)
    image, labels = phantom()
    root = tmp_path / "Private"
    files = write_series(image, SPACING, root / "ct", patient=PHI)
    write_seg(labels, NAMES, files, root / "seg.dcm")
    write_rtstruct(labels, NAMES, files, root / "rt.dcm")
    pet = write_series(image + 1000, SPACING, root / "pt", modality="PT", patient=PHI)
    write_seg(labels, NAMES, pet, root / "pt_seg.dcm")
    pet[1].write_bytes(pet[1].read_bytes()[:-100])  # a failing case: its detail is checked too
    pixels = np.zeros((30, 40), dtype=np.uint8)
    # A malformed UID: pydicom warns and logs the value whenever it is read.
    odd_uid = {**PHI, "StudyInstanceUID": "1.2.840.Quixote.7"}
    with pytest.warns(UserWarning):
        write_single_image(pixels, root / "xr" / "a.dcm", modality="CR", patient=odd_uid)
    write_mask_png(np.ones((30, 41), dtype=np.uint8), root / "xr" / "a_mask.png")
    (root / "labels.json").write_text(json.dumps({"1": "heart"}))
    uids = set()
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path, force=True)
        uids |= {
            str(ds.get(k)) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        }

    secrets = [v for value in PHI.values() for v in value.split("^")] + sorted(uids)
    assert "1.2.840.Quixote.7" in uids
    in_files = b"".join(path.read_bytes() for path in root.rglob("*.dcm"))
    assert all(secret.encode() in in_files for secret in secrets)  # the test has teeth

    caplog.clear()  # highdicom logs while writing; only reading is under test
    recwarn.clear()
    source = open_dicom(f"dicom:{root}", root, key=KEY)
    assert len(source.cases) == 4
    outputs = [_texts(source)]
    for ref in source.cases:
        try:
            loaded: LoadedCase = read_case(ref)
        except UnreadableImage as exc:
            outputs.append(f"{exc.reason} {exc.detail} {exc}")
            continue
        outputs.append(_texts((loaded.modality, loaded.intensity, loaded.label_names)))
        outputs.append(_texts(loaded.rejects))
    reasons = " ".join(outputs)
    assert "dicom_unreadable" in reasons and "mask_shape_mismatch" in reasons
    text = "\n".join([*outputs, caplog.text, *(str(w.message) for w in recwarn)])
    for secret in secrets:
        assert secret not in text, secret
