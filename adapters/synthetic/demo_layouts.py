"""Two demo datasets in the layouts of public collections: TotalSegmentator and nnU-Net's BraTS.

- :func:`write_totalseg_phantom` writes one synthetic torso CT (the phantom of
  :func:`medgrit.adapters.synthetic.demo.make_ct_phantom`) in TotalSegmentator's dataset layout:
  ``ROOT/meta.csv`` (``;``-separated: ``image_id;age;gender;institute;study_type;split``),
  ``ROOT/s0000/ct.nii.gz`` (int16 Hounsfield units) and one binary uint8 mask per class in
  ``ROOT/s0000/segmentations/<class>.nii.gz`` on the CT's grid and affine. Class names are
  TotalSegmentator's (:data:`TOTALSEG_CLASSES`). The volume keeps every second slice of the
  phantom's z-range from the kidneys to the lung bases: 192 x 192 x 12 voxels of 2 x 2 x 10 mm,
  stored in LPS voxel order (voxel i runs toward the patient's left, j toward posterior) like
  the nnU-Net phantoms; in world (RAS+) coordinates the patient's right has x > 0 and the
  superior end has the largest z. Every slice holds spine, so the case has 12 axial images with
  foreground.
- :func:`write_brats_style_mr` writes one brain MR case in nnU-Net v2 raw layout with four
  channels (T1, T1Gd, T2, FLAIR: ``imagesTr/brats_001_000X.nii.gz``, int16) and region-based
  labels as nnU-Net writes BraTS (``labelsTr/brats_001.nii.gz``, uint8: 1 edema, 2 necrotic or
  non-enhancing core, 3 enhancing tumour). The anatomy is nilearn's MNI152 2009 T1 template
  downsampled to 2 mm (99 x 117 x 95 voxels, RAS+ voxel order); T2 and FLAIR are contrast
  changes of it. The tumour is synthetic: nested ellipsoids (3 inside 2 inside 1) in the
  patient's right hemisphere (world x > 0) spanning 5 axial slices.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medgrit.adapters.synthetic.demo import CT_LABELS, make_ct_phantom

TOTALSEG_CLASSES = (
    "liver",
    "spleen",
    "kidney_left",
    "kidney_right",
    "lung_lower_lobe_left",
    "lung_lower_lobe_right",
    "vertebrae_T12",
    "vertebrae_L1",
    "vertebrae_L2",
)
# The phantom's slices kept (from the kidneys to the lung bases) and the phantom's spacing.
TOTALSEG_Z_SLICES = slice(8, 32, 2)
PHANTOM_SPACING = (2.0, 2.0, 5.0)

BRATS_CHANNELS = {"0": "T1", "1": "T1Gd", "2": "T2", "3": "FLAIR"}
BRATS_LABELS = {
    "background": 0,
    "whole tumor": [1, 2, 3],
    "tumor core": [2, 3],
    "enhancing tumor": [3],
}
# Tumour parts: stored value, world centre (mm, RAS+) and radii (mm), outermost first.
_TUMOUR_CENTRE = (32.0, -10.0, 22.0)
_TUMOUR_PARTS = ((1, (22.0, 26.0, 5.5)), (2, (13.0, 15.0, 3.5)), (3, (7.0, 8.0, 2.5)))
# Intensity of each tumour part (fraction of full scale) per channel: T1, T1Gd, T2, FLAIR.
# Edema is bright on T2 and FLAIR; the enhancing tumour is bright on T1Gd only.
_TUMOUR_INTENSITY = {
    1: (None, None, 0.85, 0.9),  # None: the channel's own tissue, darkened on T1
    2: (0.35, 0.35, 0.95, 0.45),
    3: (0.55, 1.0, 0.7, 0.7),
}


def _totalseg_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """TotalSegmentator's class masks from a phantom label map in RAS+ voxel order."""
    nx = labels.shape[0]
    right = (np.arange(nx) >= nx / 2)[:, None, None]  # axis 0 runs toward the patient's right
    lungs = labels == CT_LABELS["lungs"]
    masks = {
        "liver": labels == CT_LABELS["liver"],
        "spleen": labels == CT_LABELS["spleen"],
        "kidney_left": labels == CT_LABELS["kidney_left"],
        "kidney_right": labels == CT_LABELS["kidney_right"],
        "lung_lower_lobe_left": lungs & ~right,
        "lung_lower_lobe_right": lungs & right,
    }
    spine = labels == CT_LABELS["spine"]
    block = labels.shape[2] // 3
    # Axis 2 runs toward superior: the first block is the lowest vertebra.
    for k, name in enumerate(("vertebrae_L2", "vertebrae_L1", "vertebrae_T12")):
        masks[name] = np.zeros_like(spine)
        masks[name][:, :, k * block : (k + 1) * block] = spine[:, :, k * block : (k + 1) * block]
    return masks


def write_totalseg_phantom(folder: Path, seed: int = 5000) -> None:
    """One synthetic torso CT with per-class masks in TotalSegmentator's dataset layout."""
    image, labels = make_ct_phantom(seed=seed)
    image, labels = image[:, :, TOTALSEG_Z_SLICES], labels[:, :, TOTALSEG_Z_SLICES]
    nx, ny, _ = image.shape
    step = TOTALSEG_Z_SLICES.step
    first = TOTALSEG_Z_SLICES.start
    sx, sy, sz = PHANTOM_SPACING
    # The phantom's own placement (see write_ct_phantoms), every ``step``-th slice from ``first``.
    affine = np.diag([-sx, -sy, sz * step, 1.0])
    affine[:3, 3] = [(nx - 1) * sx / 2, (ny - 1) * sy / 2, -120.0 + first * sz]
    case = folder / "s0000"
    (case / "segmentations").mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.ascontiguousarray(image[::-1, ::-1, :]), affine), case / "ct.nii.gz"
    )
    for name, mask in _totalseg_masks(labels).items():
        stored = np.ascontiguousarray(mask[::-1, ::-1, :].astype(np.uint8))
        nib.save(nib.Nifti1Image(stored, affine), case / "segmentations" / f"{name}.nii.gz")
    # Neutral values: no age or gender, a made-up institute.
    (folder / "meta.csv").write_text(
        "image_id;age;gender;institute;study_type;split\ns0000;;;0;ct;train\n"
    )


def _brats_tumour(shape: tuple[int, ...], affine: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The tumour's label map (uint8, stored values 1..3) on an axis-aligned grid."""
    axes = [affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(shape)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    labels = np.zeros(shape, np.uint8)
    for value, radii in _TUMOUR_PARTS:
        total = sum(
            ((g - c) / r) ** 2 for g, c, r in zip(grids, _TUMOUR_CENTRE, radii, strict=True)
        )
        labels[total <= 1.0] = value
    labels[~brain] = 0
    return labels


def _brats_channels(t1: np.ndarray, brain: np.ndarray, tumour: np.ndarray) -> list[np.ndarray]:
    """T1, T1Gd, T2 and FLAIR (float, 0..1) from a T1 template in 0..1 and its brain mask."""
    # T2: tissue contrast inverted inside the brain (CSF bright, white matter dark).
    t2 = np.where(brain, np.clip(1.25 - t1, 0.0, 1.0), 0.0)
    # FLAIR: T2 with fluid (the darkest T1 brain voxels) suppressed.
    flair = t2 * np.clip((t1 - 0.35) / 0.2, 0.0, 1.0)
    channels = [t1.copy(), t1.copy(), t2, flair]
    edema = tumour == 1
    channels[0][edema] *= 0.85
    channels[1][edema] *= 0.85
    for value, intensities in _TUMOUR_INTENSITY.items():
        for channel, level in zip(channels, intensities, strict=True):
            if level is not None:
                channel[tumour == value] = level
    return channels


def write_brats_style_mr(folder: Path) -> None:
    """One four-channel brain MR with a region-labelled tumour in nnU-Net v2 raw layout."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(template.dataobj, dtype=np.float32)[::2, ::2, ::2]
    t1 /= max(float(t1.max()), 1e-6)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    brain = np.asarray(mask.dataobj)[::2, ::2, ::2] > 0
    affine = template.affine.copy()
    affine[:3, :3] *= 2.0  # every second voxel: the same origin, twice the spacing
    tumour = _brats_tumour(t1.shape, affine, brain)
    # A slab of the brain around the tumour: its slices and two more on either side, so the
    # listing's estimate of a case's images (its slices) stays near what it gives.
    z = np.flatnonzero(tumour.any(axis=(0, 1)))
    slab = slice(max(int(z[0]) - 2, 0), int(z[-1]) + 3)
    t1, brain, tumour = t1[..., slab], brain[..., slab], tumour[..., slab]
    affine[:3, 3] += affine[:3, 2] * slab.start
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for index, channel in enumerate(_brats_channels(t1, brain, tumour)):
        pixels = np.rint(np.clip(channel, 0.0, 1.0) * 1000).astype(np.int16)
        nib.save(
            nib.Nifti1Image(pixels, affine), folder / "imagesTr" / f"brats_001_{index:04d}.nii.gz"
        )
    nib.save(nib.Nifti1Image(tumour, affine), folder / "labelsTr" / "brats_001.nii.gz")
    meta = {
        "channel_names": BRATS_CHANNELS,
        "labels": BRATS_LABELS,
        "regions_class_order": [1, 2, 3],
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": "SyntheticBraTSStyleMR",
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
