"""Benchmark ``medgrit validate`` (content checks) against the build and a hash-only check.

What it measures
----------------
One ``images:`` source of ``--images`` synthetic 512x512 RGB photographs with label-map masks
(two structures each) is written once (cached under ``--work``). Then, in one run:

1. **build** - ``medgrit build images:SRC --out OUT --cases-per-shard 500`` in a subprocess
   (Prefect's ephemeral server start included), wall time;
2. **hash-only** - what a check of files alone costs: the sha256 of every part file plus its
   Parquet row count, compared with ``dataset.json`` (the floor of any validation);
3. **validate** - ``medgrit.adapters.store.validate.validate_dataset(OUT)`` in process: every PNG
   decoded, ids, conversations, boxes and words, every turn verified, stats and totals.

It reports seconds, milliseconds per image, ``validate / hash-only`` and ``validate / build``,
and the peak resident memory of the validating process (shards are read one at a time, so it
should stay near one shard's worth, not grow with the dataset).

Run (from the repository root)::

    python benchmarks/bench_validate.py                    # 75,000 images (Med-GRIT size)
    python benchmarks/bench_validate.py --images 7500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

SIZE = 512


def write_source(root: Path, count: int) -> Path:
    """``count`` smooth synthetic photographs with two-structure masks (deterministic)."""
    marker = root / f".complete-{count}"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labels.json").write_text(
        json.dumps(
            {
                "modality": "endoscopy",
                "labels": {"1": "polyp", "2": "instrument"},
                "masks": "label_map",
                "name": "SyntheticBench",
            }
        )
    )
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    for i in range(count):
        a, b, c = rng.random(3)
        image = np.stack(
            [120 + 80 * np.sin(6 * xx * a + c), 90 + 60 * np.cos(5 * yy * b), 60 + 100 * xx * yy],
            axis=-1,
        ).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        cx, cy, r = rng.integers(100, 400), rng.integers(100, 400), rng.integers(20, 80)
        mask[(xx * SIZE - cx) ** 2 + (yy * SIZE - cy) ** 2 < r**2] = 1
        x0, y0 = rng.integers(0, 380, 2)
        mask[y0 : y0 + 120, x0 : x0 + 30] = 2
        Image.fromarray(image).save(root / "images" / f"img{i:06d}.png", compress_level=1)
        Image.fromarray(mask).save(root / "masks" / f"img{i:06d}.png")
    marker.write_text("")
    return root


def hash_only(out: Path) -> None:
    manifest = json.loads((out / "dataset.json").read_text())
    for shard in manifest["shards"]:
        for rel, digest in shard["files"].items():
            h = hashlib.sha256()
            with (out / rel).open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    h.update(block)
                handle.seek(0)
                rows = pq.ParquetFile(handle).metadata.num_rows
            table = rel.split("/", 1)[0]
            if h.hexdigest() != digest or rows != shard["rows"][table]:
                raise SystemExit(f"{rel} differs from dataset.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=75_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medgrit-bench-validate"))
    args = parser.parse_args(argv)

    source = write_source(args.work / f"src-{args.images}", args.images)
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(args.work / "prefect"),
        "MEDGRIT_KEY_FILE": str(args.work / "key"),
    }
    env.pop("PREFECT_API_URL", None)
    exe = shutil.which("medgrit") or "medgrit"
    started = time.perf_counter()
    cmd = [exe, "build", f"images:{source}", "--out", str(out), "--cases-per-shard", "500"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    build_s = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])

    from medgrit.adapters.store.validate import validate_dataset

    started = time.perf_counter()
    hash_only(out)
    hash_s = time.perf_counter() - started
    started = time.perf_counter()
    problems = validate_dataset(out)
    validate_s = time.perf_counter() - started
    if problems:
        raise SystemExit(f"validate found {len(problems)} problems: {problems[:3]}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    images = json.loads((out / "dataset.json").read_text())["totals"]["rows"]["images"]
    size_mb = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 1e6
    print(f"images {images}, dataset {size_mb:.0f} MB, python {sys.version.split()[0]}")
    print(f"build     {build_s:8.1f} s  {1000 * build_s / images:6.2f} ms/image")
    print(f"hash-only {hash_s:8.1f} s  {1000 * hash_s / images:6.2f} ms/image")
    print(f"validate  {validate_s:8.1f} s  {1000 * validate_s / images:6.2f} ms/image")
    print(f"validate / hash-only {validate_s / hash_s:.1f}x")
    print(f"validate / build {validate_s / build_s:.2f}x")
    print(f"peak RSS of the validating process {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
