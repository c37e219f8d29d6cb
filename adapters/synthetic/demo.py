"""The bundled demo: real brain MR (nilearn's MNI152), synthetic phantoms of the other kinds.

``ensure_demo_data`` writes, once, datasets in their native layouts, among them:

- ``Task900_MNI152BrainMR`` (Medical Segmentation Decathlon layout): the MNI152 2009 T1 template
  that nilearn ships, with a label map from its grey- and white-matter probability maps inside
  the brain mask, split into the patient's left and right hemispheres (world x < 0 is left).
- ``Dataset901_SyntheticCTPhantom`` (nnU-Net v2 raw layout): eight synthetic torso CT volumes in
  Hounsfield units with anatomically placed organs (body, lungs, liver, spleen, right and left
  kidney, spine). They are stored in LPS voxel order so that reading them exercises the
  reorientation to RAS+; the liver and right kidney lie on the patient's right.
- ``SyntheticTotalSegmentatorPhantom`` (TotalSegmentator's dataset layout, one mask file per
  class) and ``Dataset902_SyntheticBraTSStyleMR`` (nnU-Net v2 raw layout: four MR channels,
  region-based labels of a synthetic tumour on the MNI152 template): see
  :mod:`medgrit.adapters.synthetic.demo_layouts`.

The content is a pure function of this module's version, so the files are cached. Writing them
takes a while: each dataset is announced as a phase of ``medgrit.adapters.runtime.progress``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medgrit.adapters.runtime import progress
from medgrit.core import phantoms

DEMO_VERSION = "demo-v3"
CT_CASES = 8
CT_LABELS = {
    "background": 0,
    "body": 1,
    "lungs": 2,
    "liver": 3,
    "spleen": 4,
    "kidney_right": 5,
    "kidney_left": 6,
    "spine": 7,
}
MR_LABELS = {
    "0": "background",
    "1": "grey_matter_left",
    "2": "grey_matter_right",
    "3": "white_matter_left",
    "4": "white_matter_right",
}


def default_demo_dir() -> Path:
    """Where the demo lives: ``$MEDGRIT_DEMO_DIR`` or the user cache."""
    base = os.environ.get("MEDGRIT_DEMO_DIR")
    if base:
        return Path(base).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "medgrit" / DEMO_VERSION


def ensure_demo_data(root: Path | None = None) -> Path:
    """Write the demo datasets under ``root`` unless they are there already; return ``root``.

    The demo is written beside ``root`` and renamed into place when complete. A ``root`` that
    exists without the demo's completion marker is used only when empty: nothing that is
    already there is ever deleted.

    Raises:
        FileExistsError: ``root`` is a file, or a folder that holds something else.
    """
    root = (root or default_demo_dir()).expanduser()
    if (root / ".complete").is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            errno.EEXIST, "exists and holds no medgrit demo; choose another folder", str(root)
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        from medgrit.adapters.synthetic.demo_layouts import (
            write_brats_style_mr,
            write_totalseg_phantom,
        )

        writers: list[tuple[str, Callable[[], None]]] = [
            ("MNI152 brain MR", lambda: write_mni152_mr(staging / "Task900_MNI152BrainMR")),
            (
                "CT phantoms",
                lambda: write_ct_phantoms(staging / "Dataset901_SyntheticCTPhantom"),
            ),
            ("endoscopy, dermoscopy and fundus images", lambda: write_planar_demos(staging)),
            ("PET, X-ray and ultrasound DICOM", lambda: write_dicom_demos(staging)),
            (
                "TotalSegmentator phantom",
                lambda: write_totalseg_phantom(staging / "SyntheticTotalSegmentatorPhantom"),
            ),
            (
                "BraTS-style MR",
                lambda: write_brats_style_mr(staging / "Dataset902_SyntheticBraTSStyleMR"),
            ),
        ]
        progress.phase(f"writing the demo sources to {root} (once)")
        for number, (name, write) in enumerate(writers, 1):
            progress.phase(f"writing demo dataset {number}/{len(writers)}: {name}")
            write()
        (staging / ".complete").write_text(DEMO_VERSION + "\n")
        if root.exists():
            root.rmdir()  # empty (checked above); fails rather than delete anything
        try:
            os.replace(staging, root)
        except OSError:
            if not (root / ".complete").is_file():
                raise  # else another process finished the same demo first: use it
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def write_mni152_mr(folder: Path) -> None:
    """The MNI152 T1 template and a hemisphere-split grey/white matter label map, MSD layout."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    tissue = np.where(wm > gm, 2, 1)
    inside = brain & (np.maximum(gm, wm) >= 0.5)
    ijk = np.indices(gm.shape[:1]).reshape(-1)
    world_x = t1.affine[0, 0] * ijk + t1.affine[0, 3]
    right = (world_x >= 0)[:, None, None]
    labels = np.where(inside, (tissue - 1) * 2 + 1 + right, 0).astype(np.uint8)

    t1_data = np.asarray(t1.dataobj, dtype=np.float32)
    t1_scaled = np.rint(t1_data / max(float(t1_data.max()), 1e-6) * 1000).astype(np.int16)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(t1_scaled, t1.affine), folder / "imagesTr" / "mni152_001.nii.gz")
    nib.save(nib.Nifti1Image(labels, t1.affine), folder / "labelsTr" / "mni152_001.nii.gz")
    meta = {
        "name": "MNI152BrainMR",
        "description": "MNI152 2009 T1 template (nilearn) with grey/white matter labels",
        "modality": {"0": "T1"},
        "labels": MR_LABELS,
        "numTraining": 1,
        "training": [
            {"image": "./imagesTr/mni152_001.nii.gz", "label": "./labelsTr/mni152_001.nii.gz"}
        ],
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def _ellipsoid(
    shape: tuple[int, int, int],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    total = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return total <= 1.0


def make_ct_phantom(
    seed: int, shape: tuple[int, int, int] = (192, 192, 48)
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic torso in canonical RAS+ voxel order: (HU image int16, labels uint8).

    Axis 0 runs toward the patient's right, so organs of the right side have larger x.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    cx, cy = nx / 2 + rng.uniform(-4, 4), ny / 2 + rng.uniform(-4, 4)
    s = rng.uniform(0.9, 1.1)
    lab = np.zeros(shape, np.uint8)
    body = _ellipsoid(shape, (cx, cy, nz / 2), (80 * s, 55 * s, nz * 10))
    lab[body] = CT_LABELS["body"]
    organs = [
        ("lungs", (cx + 36 * s, cy + 8, nz * 0.82), (24 * s, 32 * s, nz * 0.3)),
        ("lungs", (cx - 36 * s, cy + 8, nz * 0.82), (22 * s, 30 * s, nz * 0.3)),
        ("liver", (cx + 34 * s, cy + 10, nz * 0.45), (34 * s, 30 * s, nz * 0.22)),
        ("spleen", (cx - 44 * s, cy - 12, nz * 0.45), (13 * s, 18 * s, nz * 0.15)),
        ("kidney_right", (cx + 26 * s, cy - 24, nz * 0.24), (10 * s, 14 * s, nz * 0.14)),
        ("kidney_left", (cx - 26 * s, cy - 24, nz * 0.28), (10 * s, 14 * s, nz * 0.14)),
        ("spine", (cx, cy - 42 * s, nz / 2), (10 * s, 10 * s, nz * 10)),
    ]
    hu = {
        "body": 30,
        "lungs": -850,
        "liver": 65,
        "spleen": 50,
        "kidney_right": 150,
        "kidney_left": 150,
        "spine": 650,
    }
    image = np.full(shape, -1000.0, np.float32)
    image[body] = hu["body"]
    for name, centre, radii in organs:
        jitter = tuple(c + rng.uniform(-2, 2) for c in centre)
        mask = _ellipsoid(shape, jitter, radii) & body
        lab[mask] = CT_LABELS[name]
        image[mask] = hu[name]
    image += rng.normal(0, 12, shape).astype(np.float32)
    return np.rint(image).astype(np.int16), lab


def write_ct_phantoms(folder: Path, cases: int = CT_CASES) -> None:
    """Synthetic CT torsos in nnU-Net v2 raw layout, stored in LPS voxel order."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    spacing = (2.0, 2.0, 5.0)
    for i in range(cases):
        image, lab = make_ct_phantom(seed=1000 + i)
        nx, ny, _ = image.shape
        # Voxel i runs toward the patient's left and j toward posterior (LPS).
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = [(nx - 1) * spacing[0] / 2, (ny - 1) * spacing[1] / 2, -120.0]
        stored_image, stored_lab = image[::-1, ::-1, :], lab[::-1, ::-1, :]
        case = f"phantom_{i:03d}"
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(stored_image), affine),
            folder / "imagesTr" / f"{case}_0000.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(stored_lab), affine),
            folder / "labelsTr" / f"{case}.nii.gz",
        )
    meta = {
        "name": "SyntheticCTPhantom",
        "description": "Synthetic torso CT phantoms (not patient data)",
        "channel_names": {"0": "CT"},
        "labels": CT_LABELS,
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


# 2D demo datasets in the image-folder layout: (folder, modality, phantom, cases, labels).
PLANAR_DEMOS = (
    (
        "SyntheticEndoscopyPhantom",
        "endoscopy",
        phantoms.endoscopy_phantom,
        6,
        phantoms.ENDOSCOPY_LABELS,
    ),
    (
        "SyntheticDermoscopyPhantom",
        "dermoscopy",
        phantoms.dermoscopy_phantom,
        6,
        phantoms.DERMOSCOPY_LABELS,
    ),
    ("SyntheticFundusPhantom", "fundus", phantoms.fundus_phantom, 4, phantoms.FUNDUS_LABELS),
)


def _write_image_folder(
    folder: Path,
    modality: str,
    labels: dict[int, str],
    items: list[tuple[str, np.ndarray, np.ndarray]],
    name: str,
) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for stem, pixels, label_map in items:
        Image.fromarray(pixels).save(folder / "images" / f"{stem}.png")
        Image.fromarray(label_map).save(folder / "masks" / f"{stem}.png")
    meta = {
        "name": name,
        "modality": modality,
        "masks": "label_map",
        "labels": {str(k): v for k, v in labels.items()},
    }
    (folder / "labels.json").write_text(json.dumps(meta, indent=2) + "\n")


def write_planar_demos(root: Path) -> None:
    """Endoscopy, dermoscopy and fundus demos as RGB PNG folders with label-map masks.

    Besides the synthetic phantoms, ``RetinaPhotograph`` holds scikit-image's real fundus
    photograph with a rough optic-disc mask (its largest very bright blob).
    """
    for folder, modality, make, cases, labels in PLANAR_DEMOS:
        items = [(f"{modality}_{i:03d}", *make(seed=2000 + i)) for i in range(cases)]
        _write_image_folder(root / folder, modality, labels, items, folder)
    from skimage import data

    retina = np.asarray(Image.fromarray(data.retina()).resize((512, 512), Image.BILINEAR))
    disc = phantoms.optic_disc_mask(retina).astype(np.uint8)
    _write_image_folder(
        root / "RetinaPhotograph",
        "fundus",
        {1: "optic disc"},
        [("retina_000", retina, disc)],
        "RetinaPhotograph",
    )


DICOM_DEMOS = ("SyntheticPETPhantom", "SyntheticChestXrayPhantom", "SyntheticUltrasoundPhantom")


def write_dicom_demos(root: Path, cases: int = 3, images: int = 6) -> None:
    """PET as DICOM series with SEG; chest X-ray (CR, MONOCHROME1) and ultrasound as single DICOM
    images with PNG label maps and a ``labels.json``. Patient attributes are synthetic."""
    from medgrit.adapters.synthetic.dicom_writer import (
        write_mask_png,
        write_seg,
        write_series,
        write_single_image,
    )

    pet = root / "SyntheticPETPhantom"
    for i in range(cases):
        suv, labels = phantoms.pet_phantom(seed=3000 + i)
        patient = {"PatientName": f"Synthetic^PET{i:03d}", "PatientID": f"SYNTH-PET-{i:03d}"}
        files = write_series(
            suv,
            (4.0, 4.0, 4.0),
            pet / f"case_{i:03d}",
            modality="PT",
            patient=patient,
            pet_suv={
                "weight_kg": 72.0,
                "dose_bq": 3.5e8,
                "injection_time": "093000",
                "series_time": "103000",
            },
            seed=f"demo-pet-{i}",
        )
        write_seg(
            labels,
            phantoms.PET_LABELS,
            files,
            pet / f"case_{i:03d}" / "seg.dcm",
            seed=f"demo-pet-seg-{i}",
        )

    planar = (
        (
            "SyntheticChestXrayPhantom",
            "CR",
            "MONOCHROME1",
            phantoms.chest_xray_phantom,
            phantoms.XRAY_LABELS,
        ),
        (
            "SyntheticUltrasoundPhantom",
            "US",
            "MONOCHROME2",
            phantoms.ultrasound_phantom,
            phantoms.ULTRASOUND_LABELS,
        ),
    )
    for folder, modality, photometric, make, names in planar:
        (root / folder).mkdir(parents=True)
        for i in range(images):
            pixels, labels = make(seed=4000 + i)
            stem = f"{modality.lower()}_{i:03d}"
            patient = {
                "PatientName": f"Synthetic^{modality}{i:03d}",
                "PatientID": f"SYNTH-{modality}-{i:03d}",
            }
            write_single_image(
                pixels,
                root / folder / f"{stem}.dcm",
                modality=modality,
                photometric=photometric,
                patient=patient,
                seed=f"demo-{stem}",
            )
            write_mask_png(labels, root / folder / f"{stem}_mask.png")
        labels_json = {str(k): v for k, v in names.items()}
        (root / folder / "labels.json").write_text(json.dumps(labels_json, indent=2) + "\n")


def demo_source_specs(root: Path) -> list[str]:
    """The source specs of the demo written under ``root`` (see :func:`ensure_demo_data`)."""
    specs = [
        f"msd:{root / 'Task900_MNI152BrainMR'}",
        f"nnunet:{root / 'Dataset901_SyntheticCTPhantom'}",
        f"totalseg:{root / 'SyntheticTotalSegmentatorPhantom'}",
        f"nnunet:{root / 'Dataset902_SyntheticBraTSStyleMR'}",
    ]
    specs += [f"dicom:{root / folder}" for folder in DICOM_DEMOS]
    specs += [f"images:{root / folder}" for folder, *_ in PLANAR_DEMOS]
    specs.append(f"images:{root / 'RetinaPhotograph'}")
    return specs
