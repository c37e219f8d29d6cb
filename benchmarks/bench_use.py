"""Benchmark using a dataset: export, predict-baseline, evaluate and report, at build size.

What it measures
----------------
The benchmark writes a synthetic SA-Med2D-20M release of ``--images`` images (default 7,500;
256x256), builds it (``run_build`` on two threads, in a child process, template generator),
then runs each command as a user does, the CLI in a subprocess, and prints its wall seconds
and peak RSS (``wait4``):

- ``export --format bird`` and ``--format hf``, each against a baseline measured in the same run:
  a script that only copies every PNG out of the images tables to files (what any export must
  at least do), so the ratio is the export's cost over the I/O floor;
- ``predict-baseline`` (all four tasks of the test split) and ``evaluate`` of its predictions
  (METEOR and the PTB tokenizer on Java);
- ``report`` against reading the columns it shows with pyarrow (its floor).

Peak RSS is the figure to watch for exports: image bytes are streamed, so it should stay about
the same whatever the dataset's size.

Run (from the repository root)::

    python benchmarks/bench_use.py
    python benchmarks/bench_use.py --images 2000
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

FLOOR_COPY = """
import sys
from pathlib import Path
import pyarrow.parquet as pq
out = Path(sys.argv[2]); out.mkdir()
for part in sorted(Path(sys.argv[1], "images").glob("part-*.parquet")):
    for batch in pq.ParquetFile(part).iter_batches(columns=["image_id", "image"], batch_size=64):
        for row in batch.to_pylist():
            (out / (row["image_id"] + ".png")).write_bytes(row["image"]["bytes"])
"""

BUILD = """
import sys
from medgrit.adapters.runtime.mappers import ThreadMapper
from medgrit.adapters.build import run_build
from medgrit.schemas.config import BuildConfig
run_build(BuildConfig(sources=["samed2d:" + sys.argv[1]], out=sys.argv[2]), ThreadMapper(2))
"""

FLOOR_READ = """
import sys
from pathlib import Path
import pyarrow.parquet as pq
root = Path(sys.argv[1])
for table, columns in (("images", ["image_id", "modality", "split", "dataset"]),
                       ("regions", ["label", "bbox_1000"]),
                       ("conversations", ["image_id", "qa"]), ("rejects", ["reason"])):
    for part in sorted((root / table).glob("part-*.parquet")):
        pq.read_table(part, columns=columns)
"""


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    log = tempfile.TemporaryFile()  # never a pipe: a full pipe would block the command
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        log.seek(0)
        raise SystemExit(f"failed: {' '.join(cmd)}\n{log.read().decode(errors='replace')[-3000:]}")
    log.close()
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=7500)
    args = parser.parse_args()

    from medgrit.adapters.synthetic.samed2d import write_samed2d_release

    work = Path(tempfile.mkdtemp(prefix="medgrit-bench-use-"))
    env = {
        **os.environ,
        "MEDGRIT_KEY_FILE": str(work / "pseudonym.key"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    os.environ["MEDGRIT_KEY_FILE"] = env["MEDGRIT_KEY_FILE"]
    exe = shutil.which("medgrit") or "medgrit"
    try:
        release = write_samed2d_release(work / "release", args.images, seed=0)
        ds = work / "ds"
        # The build runs in a child: a forked child's peak RSS counts its parent's pages, so
        # this process stays small for the rows below to measure only their command.
        built = _run([sys.executable, "-c", BUILD, str(release), str(ds)], env)["wall_s"]
        manifest = json.loads((ds / "dataset.json").read_text())
        rows = manifest["totals"]["rows"]
        print(f"# {platform.node()} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]}")
        print(
            f"# dataset: {rows['images']} images, {rows['regions']} regions, "
            f"{sum(sum(p.values()) for p in manifest['totals']['qa_by_modality_task'].values())} "
            f"QA pairs, built in {built:.0f} s"
        )
        size = sum(p.stat().st_size for p in (ds / "images").glob("*.parquet")) / 2**20
        print(f"# images tables: {size:.0f} MB")

        results = {}
        results["floor: copy PNGs"] = _run(
            [sys.executable, "-c", FLOOR_COPY, str(ds), str(work / "floor")], env
        )
        results["export bird"] = _run(
            [exe, "export", str(ds), "--format", "bird", "--out", str(work / "bird")], env
        )
        results["export hf"] = _run(
            [exe, "export", str(ds), "--format", "hf", "--out", str(work / "hf")], env
        )
        preds = work / "pred.jsonl"
        results["predict-baseline"] = _run(
            [exe, "predict-baseline", str(ds), "--out", str(preds)], env
        )
        lines = sum(1 for _ in preds.open())
        results["evaluate"] = _run(
            [exe, "evaluate", str(preds), "--json", str(work / "ev.json")], env
        )
        results["floor: read report columns"] = _run(
            [sys.executable, "-c", FLOOR_READ, str(ds)], env
        )
        results["report"] = _run([exe, "report", str(ds), "--out", str(work / "report.html")], env)
        for name, r in results.items():
            print(f"{name:28s} wall {r['wall_s']:7.1f} s   peak RSS {r['peak_rss_mb']:7.0f} MB")
        floor = results["floor: copy PNGs"]["wall_s"]
        print(f"export bird / copy floor: {results['export bird']['wall_s'] / floor:.2f}")
        print(f"export hf / copy floor:   {results['export hf']['wall_s'] / floor:.2f}")
        read = results["floor: read report columns"]["wall_s"]
        print(f"report / column-read floor: {results['report']['wall_s'] / read:.2f}")
        print(f"predictions evaluated: {lines}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
