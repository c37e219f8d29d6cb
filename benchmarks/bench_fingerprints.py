"""Benchmark what telling changed sources costs a build into an existing dataset.

What it measures
----------------
On a synthetic SA-Med2D release of ``--images`` images (default 75,000, Med-GRIT size), in one
run, each row timed ``--repeat`` times (best kept):

- **open + plan** (the baseline): opening the release and planning it (``plan_build``) with no
  fingerprints, as a first build did before fingerprints were recorded;
- **fingerprints**: one ``stat`` per image and mask file and the hash of each case
  (``fingerprint_cases``), what every build now adds;
- **compare**: extending the recorded plan of the whole release (``extend_plan`` with
  fingerprints): the label maps and every case compared, nothing new;
- **verify** (``--verify-images``, default 7,500, a slice of the release): ``--verify-sources``,
  a sha256 of every file's bytes, against the bytes on disk (the files are in the page cache:
  this is the hashing, not the disk).

Ratios are against the baseline measured in the same run.

Run (from the repository root)::

    python benchmarks/bench_fingerprints.py
    python benchmarks/bench_fingerprints.py --images 7500
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _best(repeat: int, work) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=75_000)
    parser.add_argument("--verify-images", type=int, default=7_500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from medgrit.adapters.source_specs import open_sources
    from medgrit.adapters.sources import estimate_images, load_case
    from medgrit.adapters.sources.fingerprints import fingerprint_cases
    from medgrit.adapters.store.bookkeeping import plan_manifest
    from medgrit.adapters.synthetic.samed2d import write_samed2d_release
    from medgrit.core.pipeline import count_case_images
    from medgrit.core.plan_extension import RecordedPlan, extend_plan
    from medgrit.core.sharding import plan_build
    from medgrit.schemas.config import BuildConfig

    work = Path(tempfile.mkdtemp(prefix="medgrit-bench-fingerprints-"))
    key = b"k" * 32
    try:
        release = write_samed2d_release(work / "release", args.images, seed=0)
        config = BuildConfig(sources=[f"samed2d:{release}"], out=str(work / "out"))

        def count(case) -> int:
            return count_case_images(case, config, load_case)

        def estimate(case) -> int:
            return estimate_images(case, config.plane, config.slice_stride)

        def open_and_plan():
            sources = open_sources(config.sources, key=key)
            cases = [c for s in sources for c in s.cases]
            return sources, cases, plan_build(cases, config, key, count, estimate)

        base_s, (sources, cases, _) = _best(args.repeat, open_and_plan)
        files = sum(len(c.content_files) for c in cases)
        print(f"# {platform.node()} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]}")
        print(f"# {args.images} images in {len(cases)} cases, {files} image and mask files")
        print(f"open + plan (baseline)   {base_s:8.3f} s   1.00")

        stamp_s, stamps = _best(args.repeat, lambda: fingerprint_cases(cases))
        print(f"fingerprints             {stamp_s:8.3f} s   {stamp_s / base_s:.2f}")

        by_id = {id(c): v for c, v in zip(cases, stamps, strict=True)}
        plan = plan_build(cases, config, key, count, estimate, lambda c: by_id[id(c)])
        recorded = RecordedPlan.of(plan_manifest(config, sources, plan, None).to_json())

        def compare():
            found = fingerprint_cases(cases)
            prints = {id(c): v for c, v in zip(cases, found, strict=True)}
            return extend_plan(recorded, cases, config, key, count, estimate, prints.get)

        compare_s, extended = _best(args.repeat, compare)
        assert extended is not None and extended.new_cases == 0 and not extended.retired
        print(f"compare (fingerprints)   {compare_s:8.3f} s   {compare_s / base_s:.2f}")

        part = []
        for case in cases:
            if sum(len(p.content_files) for p in part) >= 2 * args.verify_images:
                break
            part.append(case)
        slice_files = sum(len(c.content_files) for c in part)
        slice_bytes = sum(os.path.getsize(f) for c in part for f in c.content_files)
        verify_s, _ = _best(args.repeat, lambda: fingerprint_cases(part, verify=True))
        stat_s, _ = _best(args.repeat, lambda: fingerprint_cases(part))
        print(
            f"verify, {slice_files} files ({slice_bytes / 1e6:.0f} MB)"
            f"   {verify_s:8.3f} s   {verify_s / stat_s:.1f}x the fingerprints of the same files"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
