"""Benchmark whole template builds at 1x and 10x, the 10x at Med-GRIT size, against the floor.

What it measures
----------------
The benchmark writes synthetic SA-Med2D-20M releases (``medgrit.adapters.synthetic.samed2d``:
256x256 images, five 2D-at-source datasets with one image per case and two CT/MR volumes of 8-12
slices, 1-4 masks each) of ``--images`` (default 7,500) and ten times as many (75,000), then
runs ``medgrit build samed2d:REL --out OUT`` as a user does: the CLI in a subprocess, on
Prefect's ephemeral local server, template generator, default settings. For each build it
prints:

- **wall s** and **images/s**;
- **peak RSS MB** of the build process (``wait4``'s ``ru_maxrss``: the largest of the process
  and each of its child processes, not their sum);
- **tree RSS MB**: the peak of the summed RSS of the build process and all its descendants
  (worker processes, Prefect's server), sampled every 0.2 s from ``/proc``; a shared page counts
  in each process that maps it;
- **orchestration**: the share of wall time outside shard work, ``1 - sum(shard seconds) /
  (workers x wall)``: Prefect's start, planning, bookkeeping, scheduling and the tail where one
  worker idles;
- **plan s**: opening the source and planning the shards, timed in this process.

Rows, all measured in the same run:

- **1x**, **10x**: default settings; the ratios 10x/1x of wall time (target <= 11) and peak RSS
  (target <= 1.2) follow the table; target: the 10x build under 600 s on two cores, and
  orchestration under 10%.
- **1x, --no-prefect**: the same 1x build without Prefect (no server start, no task runs):
  what Prefect costs;
- **1x, running Prefect server** (``--running-server``): the same 1x build on a Prefect
  server that was already running (``prefect server start``, started and warmed up before,
  untimed; ``PREFECT_API_URL`` names it), as a user who watches builds in Prefect's UI runs
  them: what Prefect costs without its start;
- **1x, --runner threads** (``--threads``): shards on threads of one process, as builds ran
  before worker processes;
- **1x, 4 images/shard**: the same 1x build with ``--images-per-shard 4``, the shard size a
  2D release had when shards held 4 cases: the cost of small shards.
- **1x, dask** (``--dask``): ``--runner dask`` (a LocalCluster of ``--workers`` processes).
- **1x, dask, N workers** (``--dask-workers 1,2``): ``--runner dask --workers N`` for each N;
  their images/s over that of the 1-worker row follows the table.

Right before the 1x and the 10x build, on the same release, the benchmark runs the bare-work
floor (``benchmarks/build_floor.py``, in a subprocess): only the reading, box finding, PNG
encoding and Parquet writing a build cannot avoid, in chunks of 200 images on as many worker
processes as the build's ``--workers``. A second table gives, per release, the floor's wall s
(its own timing: interpreter start excluded, worker start included) and images/s, the build's
images/s, **build / floor** images/s (target >= 0.8), and the tree RSS of both, measured the
same way. The 1-minute load average before each run is printed with its progress line: the
figures are only as good as the machine was quiet.

Run (from the repository root)::

    python benchmarks/bench_build.py                  # 7,500 and 75,000 images (about 15 min)
    python benchmarks/bench_build.py --images 1000 --dask --dask-workers 1,2
    python benchmarks/bench_build.py --skip-small-shards --running-server --threads
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

from build_floor import ProcessTreeMemory  # benchmarks/, the folder of this script

from medgrit.adapters.planning import prepare_build
from medgrit.adapters.synthetic.samed2d import write_samed2d_release
from medgrit.schemas.config import BuildConfig
from medgrit_testing.prefect_server import running_prefect_server

FLOOR_SCRIPT = Path(__file__).resolve().with_name("build_floor.py")


def _build(release: Path, out: Path, env: dict[str, str], extra: list[str]) -> dict:
    exe = shutil.which("medgrit") or "medgrit"
    cmd = [exe, "build", f"samed2d:{release}", "--out", str(out), *extra]
    started = time.perf_counter()
    log = tempfile.TemporaryFile()  # a pipe would fill up and block the build's logging
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL
    )
    with ProcessTreeMemory(proc.pid) as tree:
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
        "tree_rss_mb": tree.peak_mb,
        "rss_by_role_mb": tree.peak_by_role,
        "orchestration": max(0.0, 1.0 - shard_seconds / (workers * wall)),
    }


def _floor(release: Path, out: Path, processes: int) -> dict:
    """The floor's figures on ``release`` (``build_floor.run_floor`` in a subprocess, so that
    its process tree holds nothing of this one)."""
    cmd = [sys.executable, str(FLOOR_SCRIPT), str(release), "--out", str(out)]
    cmd += ["--processes", str(processes), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"floor failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _plan_seconds(release: Path, out: Path, key_file: Path) -> float:
    config = BuildConfig(
        sources=[f"samed2d:{release}"], out=str(out / "plan-only"), key_file=str(key_file)
    )
    started = time.perf_counter()
    prepare_build(config)
    return time.perf_counter() - started


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts >= 1 like 1,2, got {text!r}")
    return counts


def _load() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=7500, help="images of the 1x release")
    parser.add_argument("--scale", type=int, default=10, help="the large release is N x 1x")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dask", action="store_true", help="also time --runner dask at 1x")
    parser.add_argument(
        "--dask-workers",
        type=_worker_counts,
        default=[],
        metavar="N,N",
        help="also time the 1x build with --runner dask --workers N for each N",
    )
    parser.add_argument("--skip-small-shards", action="store_true")
    parser.add_argument(
        "--threads", action="store_true", help="also time the 1x build on threads of one process"
    )
    parser.add_argument(
        "--running-server",
        action="store_true",
        help="also time the 1x build on a Prefect server started before it",
    )
    parser.add_argument("--keep", type=Path, help="write releases and datasets here, keep them")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="medgrit-bench-build-"))
    root.mkdir(parents=True, exist_ok=True)
    env = _environment(root)
    key_file = root / "pseudonym.key"
    os.environ["MEDGRIT_KEY_FILE"] = str(key_file)
    print(
        f"# medgrit build benchmark ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {_load()})"
    )
    large = f"{args.scale}x"
    rows: list[tuple[str, dict, float]] = []
    floors: dict[str, dict] = {}
    try:
        releases = _write_releases(root, [("1x", args.images), (large, args.images * args.scale)])
        # Warm-up (not timed): the first start of Prefect's server migrates its database.
        warm_up = ["--workers", str(args.workers), "--max-images", "10"]
        _build(releases["1x"], root / "warm-up", env, warm_up)
        shutil.rmtree(root / "warm-up", ignore_errors=True)
        for label, size, extra in _runs(args):
            out = root / f"out-{label.replace(' ', '').replace(',', '-').replace('/', '')}"
            if label in ("1x", large):
                floor_out = root / f"floor-{label}"
                shutil.rmtree(floor_out, ignore_errors=True)
                print(f"{label} floor ({_load()}): ", end="", flush=True)
                floors[label] = _floor(releases[size], floor_out, args.workers)
                print(f"{floors[label]['wall_s']:.1f} s", flush=True)
                if not args.keep:
                    shutil.rmtree(floor_out, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            if label == RUNNING_SERVER:
                with running_prefect_server(root / "prefect-running") as url:
                    server_env = {**env, "PREFECT_API_URL": url}
                    _build(releases["1x"], root / "warm-up-running", server_env, warm_up)
                    shutil.rmtree(root / "warm-up-running", ignore_errors=True)
                    print(f"{label} ({_load()}): ", end="", flush=True)
                    result = _build(releases[size], out, server_env, extra)
            else:
                print(f"{label} ({_load()}): ", end="", flush=True)
                result = _build(releases[size], out, env, extra)
            plan = _plan_seconds(releases[size], root, key_file)
            rows.append((label, result, plan))
            print(f"{result['wall_s']:.1f} s", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    _print_results(rows, args.scale)
    _print_floors(rows, floors)


def _write_releases(root: Path, sizes: list[tuple[str, int]]) -> dict[str, Path]:
    releases = {}
    for name, n in sizes:
        started = time.perf_counter()
        releases[name] = write_samed2d_release(root / f"release-{name}", n)
        print(
            f"wrote the {name} release ({n} images) in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return releases


def _runs(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(label, release, CLI options) of each build, in the order they run."""
    common = ["--workers", str(args.workers)]
    runs = [("1x", "1x", common), ("1x, --no-prefect", "1x", [*common, "--no-prefect"])]
    if args.running_server:
        runs.append((RUNNING_SERVER, "1x", common))
    if args.threads:
        runs.append(("1x, --runner threads", "1x", [*common, "--runner", "threads"]))
    if not args.skip_small_shards:
        runs.append(("1x, 4 images/shard", "1x", [*common, "--images-per-shard", "4"]))
    if args.dask:
        runs.append(("1x, dask", "1x", [*common, "--runner", "dask"]))
    for n in args.dask_workers:
        label = f"1x, dask, {n} worker{'s' if n > 1 else ''}"
        runs.append((label, "1x", ["--workers", str(n), "--runner", "dask"]))
    runs.append((f"{args.scale}x", f"{args.scale}x", common))
    return runs


RUNNING_SERVER = "1x, running Prefect server"


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
    print(
        "| build | images | shards | wall s | images/s | peak RSS MB | tree RSS MB "
        "| orchestration | plan s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r, plan in rows:
        print(
            f"| {label} | {r['images']} | {r['shards']} | {r['wall_s']:.1f} | "
            f"{r['images_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['tree_rss_mb']:.0f} | "
            f"{r['orchestration']:.1%} | {plan:.2f} |"
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
    for role in ("main", "worker", "prefect server"):
        if role in small["rss_by_role_mb"] and role in large["rss_by_role_mb"]:
            a, b = small["rss_by_role_mb"][role], large["rss_by_role_mb"][role]
            print(f"- largest {role} process RSS: {a:.0f} MB at 1x, {b:.0f} MB at {scale}x")
    if "1x, 4 images/shard" in by:
        tiny = by["1x, 4 images/shard"]
        print(f"- 4 images/shard / default, wall time: {tiny['wall_s'] / small['wall_s']:.2f}")
    if "1x, dask" in by:
        print(
            f"- dask / default runner, wall time: {by['1x, dask']['wall_s'] / small['wall_s']:.2f}"
        )
    one = by.get("1x, dask, 1 worker")
    for label, r, _ in rows:
        if one is not None and label.startswith("1x, dask, ") and r is not one:
            print(
                f"- {label.removeprefix('1x, ')} / 1 worker, images/s: "
                f"{r['images_per_s'] / one['images_per_s']:.2f}"
            )


def _print_floors(rows: list[tuple[str, dict, float]], floors: dict[str, dict]) -> None:
    """Each default build beside the floor on the same release."""
    by = {label: r for label, r, _ in rows}
    print()
    print(
        "| release | images | processes | floor wall s | floor images/s | build images/s "
        "| build / floor | floor tree RSS MB | build tree RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, floor in floors.items():
        build = by[label]
        print(
            f"| {label} | {floor['images']} | {floor['processes']} | {floor['wall_s']:.1f} | "
            f"{floor['images_per_s']:.0f} | {build['images_per_s']:.0f} | "
            f"{build['images_per_s'] / floor['images_per_s']:.2f} | "
            f"{floor['peak_rss_mb']:.0f} | {build['tree_rss_mb']:.0f} |"
        )
    for label in ("1x, --no-prefect", RUNNING_SERVER):
        if label not in by or "1x" not in floors:
            continue
        other = by[label]
        print(
            f"| {label} | {floors['1x']['images']} | {floors['1x']['processes']} | | | "
            f"{other['images_per_s']:.0f} | "
            f"{other['images_per_s'] / floors['1x']['images_per_s']:.2f} | | "
            f"{other['tree_rss_mb']:.0f} |"
        )
    print()
    print("- build / floor images/s: target >= 0.8 at each size")


if __name__ == "__main__":
    sys.exit(main())
