"""The demo's TotalSegmentator-layout CT and its BraTS-style nnU-Net MR, read back from disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medgrit.adapters.sources import open_source
from medgrit.adapters.synthetic.demo_layouts import write_brats_style_mr, write_totalseg_phantom

CLASSES = {
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "lung_lower_lobe_left",
    "lung_lower_lobe_right",
    "vertebrae_T12",
    "vertebrae_L1",
    "vertebrae_L2",
}


def _world(img: nib.Nifti1Image, mask: np.ndarray) -> np.ndarray:
    """World (RAS+, mm) coordinates of a mask's voxels, one row each."""
    return nib.affines.apply_affine(img.affine, np.argwhere(mask))


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found = np.argwhere(mask)
    return found.min(axis=0), found.max(axis=0)


def _check_totalseg(root: Path) -> None:
    case = root / "s0000"
    assert sorted(p.name for p in root.iterdir()) == ["meta.csv", "s0000"]
    assert sorted(p.name for p in case.iterdir()) == ["ct.nii.gz", "segmentations"]
    assert {p.name for p in (case / "segmentations").iterdir()} == {
        f"{name}.nii.gz" for name in CLASSES
    }
    with (root / "meta.csv").open(newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    assert rows[0] == ["image_id", "age", "gender", "institute", "study_type", "split"]
    assert len(rows) == 2 and rows[1][0] == "s0000" and rows[1][-1] == "train"
    assert rows[1][1] == rows[1][2] == ""  # no age, no gender

    ct = nib.load(case / "ct.nii.gz")
    assert ct.get_data_dtype() == np.int16
    assert nib.aff2axcodes(ct.affine) == ("L", "P", "S")  # stored as the nnU-Net phantoms are
    hu = np.asarray(ct.dataobj)
    masks = {}
    for name in CLASSES:
        img = nib.load(case / "segmentations" / f"{name}.nii.gz")
        assert img.get_data_dtype() == np.uint8 and img.shape == ct.shape
        assert np.allclose(img.affine, ct.affine)
        data = np.asarray(img.dataobj)
        assert set(np.unique(data)) == {0, 1}, name
        masks[name] = data > 0
    assert hu[masks["vertebrae_L1"]].mean() > 400  # bone
    assert hu[masks["lung_lower_lobe_left"]].mean() < -600  # air-filled lung
    foreground = np.any(list(masks.values()), axis=0)
    assert 1 <= foreground.any(axis=(0, 1)).sum() <= 12  # axial images with foreground

    # Vertebrae: disjoint blocks, T12 above L1 above L2 in world z.
    blocks = [masks[f"vertebrae_{v}"] for v in ("T12", "L1", "L2")]
    assert not (blocks[0] & blocks[1]).any() and not (blocks[1] & blocks[2]).any()
    assert not (blocks[0] & blocks[2]).any()
    z = [_world(ct, block)[:, 2] for block in blocks]
    assert z[0].min() > z[1].max() and z[1].min() > z[2].max()
    # RAS+: the patient's right has world x > 0, the left x < 0.
    for side, sign in (("right", 1), ("left", -1)):
        for name in (f"kidney_{side}", f"lung_lower_lobe_{side}"):
            assert (sign * _world(ct, masks[name])[:, 0] > 0).all(), name
    assert _world(ct, masks["liver"])[:, 0].mean() > 0 > _world(ct, masks["spleen"])[:, 0].mean()

    source = open_source(f"totalseg:{root}")
    assert source.modality == "ct" and [c.case for c in source.cases] == ["s0000"]
    assert {name for _, name in source.cases[0].written_labels} == CLASSES
    assert source.cases[0].split == "train"


def _check_brats(root: Path) -> None:
    channels = [root / "imagesTr" / f"brats_001_000{k}.nii.gz" for k in range(4)]
    assert sorted((root / "imagesTr").iterdir()) == channels
    assert [p.name for p in (root / "labelsTr").iterdir()] == ["brats_001.nii.gz"]
    assert json.loads((root / "dataset.json").read_text()) == {
        "channel_names": {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"},
        "labels": {
            "background": 0,
            "whole tumor": [1, 2, 3],
            "tumor core": [2, 3],
            "enhancing tumor": [3],
        },
        "regions_class_order": [1, 2, 3],
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": "SyntheticBraTSStyleMR",
    }
    label_img = nib.load(root / "labelsTr" / "brats_001.nii.gz")
    # MNI152 at 1 mm is 197 x 233 x 189; every second voxel at 2 mm, in a slab of 9 slices
    # around the tumour, whose centre stays where it was placed (world z = 22 mm).
    assert label_img.shape == (99, 117, 9) and label_img.header.get_zooms() == (2.0, 2.0, 2.0)
    centre = np.argwhere(np.asarray(label_img.dataobj) == 3).mean(axis=0)
    assert abs((label_img.affine @ [*centre, 1.0])[2] - 22.0) <= 2.0
    assert nib.aff2axcodes(label_img.affine) == ("R", "A", "S")
    images = [nib.load(p) for p in channels]
    for img in images:
        assert img.get_data_dtype() == np.int16 and img.shape == label_img.shape
        assert np.allclose(img.affine, label_img.affine)
    t1, t1gd, t2, flair = (np.asarray(img.dataobj).astype(float) for img in images)
    labels = np.asarray(label_img.dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3}

    # Nested: enhancing inside the core inside the whole tumour (boxes, inclusive).
    whole, core, enhancing = _box(labels > 0), _box(labels >= 2), _box(labels == 3)
    assert (whole[0] <= core[0]).all() and (core[1] <= whole[1]).all()
    assert (core[0] <= enhancing[0]).all() and (enhancing[1] <= core[1]).all()
    # The necrotic core surrounds the enhancing part in-plane.
    necrotic = _box(labels == 2)
    assert (necrotic[0][:2] < enhancing[0][:2]).all() and (enhancing[1][:2] < necrotic[1][:2]).all()
    assert 1 <= labels.any(axis=(0, 1)).sum() <= 6  # axial slices with foreground
    x = _world(label_img, labels > 0)[:, 0]
    assert (x > 0).all() or (x < 0).all()  # one hemisphere

    # Contrasts: edema bright on T2 and FLAIR, the enhancing part bright on T1Gd only.
    brain = (t1 > 0) & (labels == 0)
    edema, enh = labels == 1, labels == 3
    assert t2[edema].mean() > t2[brain].mean() and flair[edema].mean() > flair[brain].mean()
    assert t1gd[enh].mean() > t1[brain].max() * 0.95 and t1[enh].mean() < t1gd[enh].mean()
    assert np.array_equal(t1gd[~enh], t1[~enh])
    # T2 inverts the T1 contrast inside the brain; FLAIR darkens the CSF-like voxels.
    csf = brain & (t1 < np.percentile(t1[brain], 5))
    white = brain & (t1 > np.percentile(t1[brain], 90))
    assert t2[csf].mean() > t2[white].mean() and flair[csf].mean() < flair[white].mean()

    source = open_source(f"nnunet:{root}")
    assert source.dataset == "SyntheticBraTSStyleMR" and source.modality == "mr"
    assert [c.case for c in source.cases] == [f"brats_001_000{k}" for k in range(4)]
    assert [c.sequence for c in source.cases] == ["T1", "T1Gd", "T2", "FLAIR"]
    assert [name for _, name in source.labels] == ["whole tumor", "tumor core", "enhancing tumor"]


def test_demo_layouts_write_readable_totalsegmentator_and_brats_datasets(tmp_path: Path) -> None:
    write_totalseg_phantom(tmp_path / "SyntheticTotalSegmentatorPhantom")
    write_brats_style_mr(tmp_path / "SyntheticBraTSStyleMR")
    _check_totalseg(tmp_path / "SyntheticTotalSegmentatorPhantom")
    _check_brats(tmp_path / "SyntheticBraTSStyleMR")
