"""A synthetic SA-Med2D-20M release of any size, for scale benchmarks and tests.

:func:`write_samed2d_release` writes the release layout that ``samed2d:PATH`` reads
(``SAMed2D_v1.json``, ``SAMed2D_v1_class_mapping_id.json``, ``images/`` and ``masks/``) with
``n_images`` images of ``size`` x ``size`` pixels (256 by default). As in the release, most
cases are 2D at source (X-ray, dermoscopy, endoscopy, fundus, ultrasound: one ``2d_none`` image
per case) and the rest are CT and MR volumes cut into axial slices (``z_NNNN``), several per
case. Every dataset is named
``Synthetic...``.

Pixels come from a small pool of distinct images and masks (``pool`` of each kind); the files of
all images are hard links into that pool (copies where the file system has no links), so a
release of 75,000 images is written in seconds and takes little disk, while the build still
reads, decodes and encodes every image. Content is a pure function of the arguments.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DATASETS", "write_samed2d_release"]

# (sub-modality prefix, dataset, classes, slices per case or 0 for 2D-at-source)
DATASETS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("x_ray", "SyntheticChestXray", ("left_lung", "right_lung", "heart"), 0),
    ("dermoscopy_00", "SyntheticISIC", ("lesion",), 0),
    ("endoscopy_00", "SyntheticKvasir", ("polyp",), 0),
    ("fundus_photography", "SyntheticFundus", ("optic_disc", "optic_cup"), 0),
    ("ultrasound_00", "SyntheticBreastUS", ("tumor",), 0),
    ("ct_00", "SyntheticAbdomenCT", ("liver", "spleen", "kidney_left", "kidney_right"), 12),
    ("mr_t1", "SyntheticBrainMR", ("left_hemisphere", "right_hemisphere", "tumor"), 8),
)
SIZE = 256


def _pixels(rng: np.random.Generator, rgb: bool, size: int = SIZE) -> np.ndarray:
    """A smooth image with some noise, as a scan has."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    base = 200.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) * rng.uniform(3, 8))
    base += rng.normal(0, 6, size=(size, size))
    grey = np.clip(base + 20, 0, 255).astype(np.uint8)
    if not rgb:
        return grey
    tint = rng.uniform(0.6, 1.0, size=3)
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


def _masks(rng: np.random.Generator, n_classes: int, size: int = SIZE) -> list[np.ndarray]:
    """One binary ellipse mask per class, placed apart from each other."""
    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    f = size / SIZE
    for k in range(n_classes):
        cx = size * (k + 0.5) / n_classes + rng.uniform(-8, 8) * f
        cy = rng.uniform(0.3, 0.7) * size
        ry = rng.uniform(12, 40) * f
        rx = rng.uniform(8, min(40, SIZE / (2.5 * n_classes))) * f
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        out.append(np.where(inside, 255, 0).astype(np.uint8))
    return out


def _link(pooled: Path, target: Path) -> None:
    try:
        os.link(pooled, target)
    except OSError:
        target.write_bytes(pooled.read_bytes())


def write_samed2d_release(
    root: str | Path, n_images: int, seed: int = 0, pool: int = 64, size: int = SIZE
) -> Path:
    """Write a synthetic SA-Med2D-20M release of ``n_images`` images to ``root``.

    Args:
        root: an empty or missing folder (becomes the ``samed2d:`` path).
        n_images: images in all (the last volume may have fewer slices).
        seed: content seed.
        pool: distinct images (and mask sets) per dataset.
        size: image width and height in pixels.

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    pool_dir = root / ".pool"
    pool_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    pooled: dict[str, list[tuple[Path, list[Path]]]] = {}
    for sub, dataset, classes, _ in DATASETS:
        rgb = sub.split("_")[0] in ("dermoscopy", "endoscopy", "fundus")
        entries = []
        for p in range(pool):
            image = pool_dir / f"{dataset}-{p}.png"
            Image.fromarray(_pixels(rng, rgb, size)).save(image, compress_level=1)
            masks = []
            for k, mask in enumerate(_masks(rng, len(classes), size)):
                path = pool_dir / f"{dataset}-{p}-{k}.png"
                Image.fromarray(mask).save(path, compress_level=1)
                masks.append(path)
            entries.append((image, masks))
        pooled[dataset] = entries

    index: dict[str, list[str]] = {}
    pick = random.Random(seed)
    written, case_no = 0, 0
    while written < n_images:
        sub, dataset, classes, slices = DATASETS[case_no % len(DATASETS)]
        case = f"case_{case_no:06d}"
        count = 1 if slices == 0 else min(slices, n_images - written)
        for s in range(count):
            where = "2d_none" if slices == 0 else f"z_{s:04d}"
            stem = f"{sub}--{dataset}--{case}--{where}"
            image, masks = pooled[dataset][pick.randrange(pool)]
            _link(image, root / "images" / f"{stem}.png")
            names = []
            for k, mask in enumerate(masks):
                name = f"masks/{stem}--{k:04d}_000.png"
                _link(mask, root / name)
                names.append(name)
            index[f"images/{stem}.png"] = names
        written += count
        case_no += 1
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    mapping = {
        dataset: {c: i for i, c in enumerate(classes)} for _, dataset, classes, _ in DATASETS
    }
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
    return root
