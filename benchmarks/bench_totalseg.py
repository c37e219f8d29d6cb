"""Benchmark ``totalseg:PATH`` builds: 117 classes against 5 on the same CT volumes.

What it measures
----------------
The benchmark writes two synthetic TotalSegmentator datasets (``meta.csv`` and case folders
with ``ct.nii.gz`` and ``segmentations/{class}.nii.gz``) of ``--cases`` CT volumes (default 30,
128x128x48 voxels of 1.5x1.5x3 mm, stored LPS as TotalSegmentator's are, so every case is
reoriented). Both hold the same images; they differ in their masks:

- **117 classes**: every class of TotalSegmentator's ``total`` task as a non-overlapping
  ellipsoid blob. Five tube-like classes (aorta, inferior vena cava, esophagus, trachea,
  spinal cord) run through every slice; the other 112 sit in three bands along the z axis, so
  each axial slice holds about 40 regions;
- **5 classes**: the five tube-like classes only (the same slices, five regions each).

Then it runs ``medgrit build totalseg:PATH --out OUT`` on each, as a user does: the CLI in a
subprocess on Prefect's ephemeral local server, template generator, default settings, timed as
``benchmarks/bench_build.py`` times its builds (after one untimed warm-up build). It prints, all
measured in the same run:

- **wall s**, **images/s** and **peak RSS MB** (``wait4``'s ``ru_maxrss``) of each build, and
  the ratio of the 5-class rate to the 117-class rate;
- **shard ms/image**: the shards' own seconds (the manifest's, summed over workers) per image:
  the build's work without Prefect's start and scheduling, and its 117-class / 5-class ratio;
- **load s/case**: reading one case (image and masks into one label volume:
  ``medgrit.adapters.sources.load_case``), timed in this process, median of the first five;
- with ``--samed2d-images N``, the rate of a template build of a synthetic SA-Med2D-20M
  release of N images (``benchmarks/bench_build.py``'s data, one to four masks per image), for
  scale.

Run (from the repository root)::

    python benchmarks/bench_totalseg.py                  # 30 cases of each (a few minutes)
    python benchmarks/bench_totalseg.py --cases 10 --samed2d-images 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medgrit.adapters.sources import load_case, open_source
from medgrit.adapters.sources.totalseg_labels import class_map
from medgrit.adapters.synthetic.samed2d import write_samed2d_release

SHAPE = (128, 128, 48)
# Stored LPS (x toward the patient's left flipped), 1.5 x 1.5 x 3 mm.
AFFINE = np.diag([-1.5, -1.5, 3.0, 1.0])
TUBES = ("aorta", "inferior_vena_cava", "esophagus", "trachea", "spinal_cord")
BANDS = 3


def _blob(centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    """A binary ellipsoid on the grid."""
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    d = sum(((a - c) / r) ** 2 for a, c, r in zip((x, y, z), centre, radii, strict=True))
    return (d <= 1.0).astype(np.uint8)


def _case_masks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One binary mask per class of ``total``: the tubes through every slice, the others as
    blobs in a grid of cells per z band (no two masks overlap)."""
    masks: dict[str, np.ndarray] = {}
    for k, name in enumerate(TUBES):  # cylinders through every slice
        masks[name] = _blob((56 + 8 * k, 116.0, 24.0), (3.5, 3.5, 1e9))
    others = [n for n in class_map("total").values() if n not in TUBES]
    per_band = -(-len(others) // BANDS)
    cols = 7
    for i, name in enumerate(others):
        band, cell = divmod(i, per_band)
        row, col = divmod(cell, cols)
        z0 = band * SHAPE[2] // BANDS
        jitter = rng.uniform(-1.0, 1.0, size=2)
        centre = (10.0 + 16 * col + jitter[0], 10.0 + 16 * row + jitter[1], z0 + 7.5)
        masks[name] = _blob(centre, (6.0, 6.0, 8.0))
    return masks


def _image(rng: np.random.Generator, masks: dict[str, np.ndarray]) -> np.ndarray:
    """A CT-like int16 volume: air, a body, and each structure at its own HU."""
    image = np.full(SHAPE, -1000, np.int16)
    x, y = np.ogrid[: SHAPE[0], : SHAPE[1]]
    body = ((x - 64) / 62) ** 2 + ((y - 64) / 62) ** 2 <= 1.0
    image[body] = 0
    for k, mask in enumerate(masks.values()):
        image[mask > 0] = -80 + (k * 37) % 260
    return image + rng.normal(0, 8, SHAPE).astype(np.int16)


def write_datasets(root: Path, n_cases: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the 117-class and the 5-class dataset of ``n_cases`` cases under ``root``."""
    full, few = root / "TotalSynthetic117", root / "TotalSynthetic5"
    rng = np.random.default_rng(seed)
    rows = ["image_id;age;gender;split"]
    for i in range(n_cases):
        case = f"s{i:04d}"
        masks = _case_masks(rng)
        image = nib.Nifti1Image(_image(rng, masks), AFFINE)
        for dataset, classes in ((full, masks), (few, {n: masks[n] for n in TUBES})):
            folder = dataset / case / "segmentations"
            folder.mkdir(parents=True, exist_ok=True)
            nib.save(image, dataset / case / "ct.nii.gz")
            for name, mask in classes.items():
                nib.save(nib.Nifti1Image(mask, AFFINE), folder / f"{name}.nii.gz")
        rows.append(f"{case};60;x;{'test' if i % 10 == 9 else 'train'}")
    for dataset in (full, few):
        (dataset / "meta.csv").write_text("\n".join(rows) + "\n")
    return full, few


def _environment(root: Path) -> dict[str, str]:
    """The environment of the ``medgrit`` subprocesses (as ``bench_build.py`` sets it): a
    Prefect home and key file under ``root``, no Prefect server of the caller's."""
    env = {
        **os.environ,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_HOME": str(root / "prefect"),
        "MEDGRIT_KEY_FILE": str(root / "pseudonym.key"),
    }
    env.pop("PREFECT_API_URL", None)
    return env


def _build(source: str, out: Path, env: dict[str, str], extra: list[str]) -> dict:
    """Run ``medgrit build SOURCE --out OUT`` in a subprocess; its wall time, images and peak
    RSS (``wait4``)."""
    cmd = [shutil.which("medgrit") or "medgrit", "build", source, "--out", str(out), *extra]
    started = time.perf_counter()
    log = tempfile.TemporaryFile()  # a pipe would fill up and block the build's logging
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    log.seek(0)
    stderr = log.read().decode(errors="replace")
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    manifest = json.loads((out / "dataset.json").read_text())
    images = manifest["totals"]["rows"]["images"]
    return {
        "wall_s": wall,
        "images": images,
        "images_per_s": images / wall,
        "shard_s": sum(s.get("seconds", 0.0) for s in manifest["shards"]),
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def _load_seconds(path: Path, n: int = 5) -> float:
    """Median seconds of reading a case (image and every mask), over the first ``n`` cases."""
    cases = open_source(f"totalseg:{path}").cases[:n]
    times = []
    for case in cases:
        started = time.perf_counter()
        load_case(case)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=30, help="CT volumes per dataset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samed2d-images", type=int, default=0, help="also time SA-Med2D")
    parser.add_argument("--keep", type=Path, help="write datasets and builds here, keep them")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="medgrit-bench-totalseg-"))
    root.mkdir(parents=True, exist_ok=True)
    env = _environment(root)
    os.environ["MEDGRIT_KEY_FILE"] = env["MEDGRIT_KEY_FILE"]
    common = ["--workers", str(args.workers)]
    print(
        f"# medgrit totalseg benchmark ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()})"
    )
    rows: list[tuple[str, dict, float | None]] = []
    try:
        started = time.perf_counter()
        full, few = write_datasets(root / "data", args.cases)
        print(f"wrote {args.cases} cases twice in {time.perf_counter() - started:.1f} s")
        # Warm-up (not timed): the first start of Prefect's server migrates its database.
        _build(f"totalseg:{few}", root / "warm-up", env, [*common, "--max-images", "5"])
        runs: list[tuple[str, str, Path]] = [("117 classes", "totalseg", full)]
        runs.append(("5 classes", "totalseg", few))
        if args.samed2d_images:
            release = write_samed2d_release(root / "samed2d", args.samed2d_images)
            runs.append((f"SA-Med2D, {args.samed2d_images} images", "samed2d", release))
        for label, kind, path in runs:
            out = root / f"out-{len(rows)}"
            result = _build(f"{kind}:{path}", out, env, common)
            load = _load_seconds(path) if kind == "totalseg" else None
            rows.append((label, result, load))
            print(f"{label}: {result['wall_s']:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    _print_results(rows)


def _print_results(rows: list[tuple[str, dict, float | None]]) -> None:
    print()
    print("| build | images | wall s | images/s | shard ms/image | peak RSS MB | load s/case |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r, load in rows:
        shown = f"{load:.3f}" if load is not None else "-"
        print(
            f"| {label} | {r['images']} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} | "
            f"{1000 * r['shard_s'] / r['images']:.1f} | {r['peak_rss_mb']:.0f} | {shown} |"
        )
    by = {label: r for label, r, _ in rows}
    full, few = by["117 classes"], by["5 classes"]
    print()
    print(f"- 5-class / 117-class images/s: {few['images_per_s'] / full['images_per_s']:.2f}")
    print(
        "- 117-class / 5-class shard time per image (without Prefect's start and scheduling): "
        f"{(full['shard_s'] / full['images']) / (few['shard_s'] / few['images']):.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
