"""Benchmark whole template builds at 1x and 10x, the 10x at Med-GRIT size.

What it measures
----------------
The benchmark writes synthetic SA-Med2D-20M releases (``medgrit.adapters.synthetic.samed2d``:
256x256 images, five 2D-at-source datasets with one image per case and two CT/MR volumes of 8-12
slices, 1-4 masks each) of ``--images`` (default 7,500) and ten times as many (75,000), then
runs ``medgrit build samed2d:REL --out OUT`` as a user does: the CLI in a subprocess, on
Prefect's ephemeral local server, template generator, default settings. For each build it
prints:

- **wall s** and **images/s**;
- **peak RSS MB** of the build process (``wait4``'s ``ru_maxrss``);
- **orchestration**: the share of wall time outside shard work, ``1 - sum(shard seconds) /
  (workers x wall)``: Prefect's start, planning, bookkeeping, scheduling and the tail where one
  worker idles;
- **plan s**: opening the source and planning the shards, timed in this process.

Rows, all measured in the same run:

- **1x**, **10x**: default settings; the ratios 10x/1x of wall time (target <= 11) and peak RSS
  (target <= 1.2) follow the table; target: the 10x build under 600 s on two cores, and
  orchestration under 10%.
- **1x, 4 images/shard**: the same 1x build with ``--images-per-shard 4``, the shard size a
  2D release had when shards held 4 cases: the cost of small shards.
- **1x, dask** (``--dask``): ``--runner dask`` (a LocalCluster of ``--workers`` processes).

Run (from the repository root)::

    python benchmarks/bench_build.py                  # 7,500 and 75,000 images (about 15 min)
    python benchmarks/bench_build.py --images 1000 --dask
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medgrit.adapters.planning import prepare_build
from medgrit.adapters.synthetic.samed2d import write_samed2d_release
from medgrit.schemas.config import BuildConfig


def _build(release: Path, out: Path, env: dict[str, str], extra: list[str]) -> dict:
    exe = shutil.which("medgrit") or "medgrit"
    cmd = [exe, "build", f"samed2d:{release}", "--out", str(out), *extra]
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
    shard_seconds = sum(s.get("seconds", 0.0) for s in manifest["shards"])
    workers = manifest["config"]["workers"]
    images = manifest["totals"]["rows"]["images"]
    return {
        "wall_s": wall,
        "images": images,
        "shards": len(manifest["shards"]),
        "images_per_s": images / wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "orchestration": max(0.0, 1.0 - shard_seconds / (workers * wall)),
    }


def _plan_seconds(release: Path, out: Path, key_file: Path) -> float:
    config = BuildConfig(
        sources=[f"samed2d:{release}"], out=str(out / "plan-only"), key_file=str(key_file)
    )
    started = time.perf_counter()
    prepare_build(config)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=7500, help="images of the 1x release")
    parser.add_argument("--scale", type=int, default=10, help="the large release is N x 1x")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dask", action="store_true", help="also time --runner dask at 1x")
    parser.add_argument("--skip-small-shards", action="store_true")
    parser.add_argument("--keep", type=Path, help="write releases and datasets here, keep them")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="medgrit-bench-build-"))
    root.mkdir(parents=True, exist_ok=True)
    env = _environment(root)
    key_file = root / "pseudonym.key"
    os.environ["MEDGRIT_KEY_FILE"] = str(key_file)
    common = ["--workers", str(args.workers)]
    print(
        f"# medgrit build benchmark ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()})"
    )
    rows: list[tuple[str, dict, float]] = []
    try:
        sizes = [("1x", args.images), (f"{args.scale}x", args.images * args.scale)]
        releases = {}
        for name, n in sizes:
            started = time.perf_counter()
            releases[name] = write_samed2d_release(root / f"release-{name}", n)
            print(
                f"wrote the {name} release ({n} images) in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
        # Warm-up (not timed): the first start of Prefect's server migrates its database.
        _build(releases["1x"], root / "warm-up", env, [*common, "--max-images", "10"])
        shutil.rmtree(root / "warm-up", ignore_errors=True)
        runs = [("1x", "1x", [])]
        if not args.skip_small_shards:
            runs.append(("1x, 4 images/shard", "1x", ["--images-per-shard", "4"]))
        if args.dask:
            runs.append(("1x, dask", "1x", ["--runner", "dask"]))
        runs.append((f"{args.scale}x", f"{args.scale}x", []))
        for label, size, extra in runs:
            out = root / f"out-{label.replace(' ', '').replace(',', '-').replace('/', '')}"
            shutil.rmtree(out, ignore_errors=True)
            result = _build(releases[size], out, env, [*common, *extra])
            plan = _plan_seconds(releases[size], root, key_file)
            rows.append((label, result, plan))
            print(f"{label}: {result['wall_s']:.1f} s", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    _print_results(rows, args.scale)


def _environment(root: Path) -> dict[str, str]:
    """The environment of the ``medgrit`` subprocesses: a Prefect home and key file under
    ``root``, no Prefect server of the caller's."""
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


def _print_results(rows: list[tuple[str, dict, float]], scale: int) -> None:
    """The runs as a Markdown table, then how the large release compares with the 1x one
    against the targets."""
    print()
    print("| build | images | shards | wall s | images/s | peak RSS MB | orchestration | plan s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, r, plan in rows:
        print(
            f"| {label} | {r['images']} | {r['shards']} | {r['wall_s']:.1f} | "
            f"{r['images_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['orchestration']:.1%} | "
            f"{plan:.2f} |"
        )
    by = {label: r for label, r, _ in rows}
    small, large = by["1x"], by[f"{scale}x"]
    print()
    print(
        f"- {scale}x / 1x wall time: {large['wall_s'] / small['wall_s']:.2f} "
        f"(target <= {scale * 1.1:.0f})"
    )
    print(
        f"- {scale}x / 1x peak RSS: {large['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
        "(target <= 1.2)"
    )
    print(f"- {scale}x build: {large['wall_s']:.0f} s (target < 600 s at 75,000 images)")
    if "1x, 4 images/shard" in by:
        tiny = by["1x, 4 images/shard"]
        print(f"- 4 images/shard / default, wall time: {tiny['wall_s'] / small['wall_s']:.2f}")
    if "1x, dask" in by:
        print(
            f"- dask / default runner, wall time: {by['1x, dask']['wall_s'] / small['wall_s']:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
