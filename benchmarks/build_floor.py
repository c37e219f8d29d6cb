"""The bare-work floor of a build: only the work a build of an SA-Med2D-20M release cannot avoid.

A build of ``samed2d:RELEASE`` has to read every image and mask, find each mask's box and area,
encode each image as PNG and write Parquet tables. This script does just that, plainly, on the
same release and with the same number of worker processes, so a build's speed can be read
against it (``benchmarks/bench_build.py`` prints build images/s over floor images/s). It uses
nothing of medgrit's pipeline, readers or writers, with one exception: images are encoded by
``medgrit.adapters.store.png.encode_png`` (Up filter, zlib level 1), so that floor and build
spend the same on encoding, the largest share of both.

What it does
------------
1. Lists the release from ``SAMed2D_v1.json`` (image path -> mask paths, relative to the
   release folder) and ``SAMed2D_v1_class_mapping_id.json`` (dataset -> class name -> index).
2. Splits the images, in listing order, into chunks of ``images_per_chunk``.
3. On ``processes`` worker processes (``multiprocessing``, forkserver on Linux, spawn
   elsewhere), for each chunk: reads each image and its masks (Pillow -> numpy), takes each
   mask's half-open pixel box ``x0, y0, x1, y1`` and foreground pixel count with numpy (an empty
   mask gives no row), encodes the image, and writes ``images-NNNNN.parquet`` (id, width,
   height, png) and ``regions-NNNNN.parquet`` (image id, mask file name, class, box, area) with
   pyarrow, zstd as the build writes.

File names follow the release: ``images/{sub}--{dataset}--{case}--{where}.png`` and
``masks/{image stem}--{class:04d}_{instance:03d}.png``, the class a 0-based index into the
dataset's classes. Its figures: images, wall seconds (listing to the last table written, worker
start included, interpreter start not), images/s, the peak of the summed resident memory of
this process and all its descendants, sampled every 0.2 s from ``/proc`` (Linux; a shared page
counts in each process that maps it), and the CPU seconds of the chunks' work.

Run (from the repository root)::

    python benchmarks/build_floor.py RELEASE --out OUT --processes 2
    python benchmarks/build_floor.py --images 7500 --processes 1   # a synthetic release
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from medgrit.adapters.store.png import encode_png

__all__ = ["ProcessTreeMemory", "run_floor"]

IMAGES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("png", pa.binary()),
    ]
)
REGIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("mask", pa.string()),
        ("class", pa.string()),
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("area", pa.int64()),
    ]
)


class ProcessTreeMemory:
    """The peak of the summed RSS of process ``pid`` and all its descendants, sampled in a
    background thread from Linux's ``/proc`` (0 elsewhere).

    Use as a context manager; ``peak_mb`` holds the peak after (and during) the ``with``, and
    ``peak_by_role`` the largest RSS one process of each role reached in the samples: ``main``
    (process ``pid``), ``worker`` (a ``multiprocessing`` child: a build's worker process, or
    one that Dask spawned), ``prefect server`` (a ``uvicorn`` process), ``dask`` (a Dask
    process started by its own command), ``other``.
    """

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.peak_by_role: dict[str, float] = {}
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0

    def __enter__(self) -> ProcessTreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample_until_stopped(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, self.sample_mb())
            if self._stop.wait(self.interval_s):
                return

    def sample_mb(self) -> float:
        """Summed RSS of the tree now, in MiB."""
        children: dict[int, list[int]] = {}
        try:
            names = os.listdir("/proc")
        except OSError:
            return 0.0
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            children.setdefault(parent, []).append(int(name))
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, ()))
            try:
                with open(f"/proc/{pid}/statm") as f:
                    pages = int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
            total += pages
            role = self._role(pid)
            mb = pages * self._page_mb
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0.0), mb)
        return total * self._page_mb

    def _role(self, pid: int) -> str:
        if pid not in self._roles:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read()
            except OSError:
                command = b""
            if pid == self.pid:
                role = "main"
            elif b"uvicorn" in command or (b"prefect" in command and b"server" in command):
                role = "prefect server"
            elif b"distributed" in command or b"dask" in command:
                role = "dask"
            elif b"multiprocessing" in command:
                role = "worker"
            else:
                return "other"  # (maybe sampled between its fork and its exec: asked again)
            self._roles[pid] = role
        return self._roles[pid]


def _list_release(release: Path) -> tuple[list[tuple[str, list[str]]], dict[str, list[str]]]:
    """(image path, mask paths) in listing order, and dataset -> class names by index."""
    index = json.loads((release / "SAMed2D_v1.json").read_text())
    mapping = json.loads((release / "SAMed2D_v1_class_mapping_id.json").read_text())
    classes = {}
    for dataset, by_name in mapping.items():
        names = [""] * (max(by_name.values(), default=-1) + 1)
        for name, number in by_name.items():
            names[number] = name
        classes[dataset] = names
    return list(index.items()), classes


def _read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int, int] | None:
    """(x0, y0, x1, y1, area) of a mask's foreground, the box half-open; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    area = int(np.count_nonzero(mask))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, area


def _work_chunk(
    job: tuple[int, str, str, list[tuple[str, list[str]]], dict[str, list[str]]],
) -> tuple[int, int, float]:
    """Read, measure, encode and write one chunk; (images, regions) written and the CPU
    seconds it took."""
    cpu_started = time.process_time()
    number, release_dir, out_dir, items, classes = job
    release, out = Path(release_dir), Path(out_dir)
    images: dict[str, list] = {name: [] for name in IMAGES_SCHEMA.names}
    regions: dict[str, list] = {name: [] for name in REGIONS_SCHEMA.names}
    for image_path, mask_paths in items:
        image_id = image_path.rsplit("/", 1)[-1][:-4]
        dataset = image_id.split("--")[1]
        pixels = _read_pixels(release / image_path)
        for mask_path in mask_paths:
            mask_name = mask_path.rsplit("/", 1)[-1]
            found = _mask_box(_read_pixels(release / mask_path))
            if found is None:
                continue
            class_index = int(mask_name[:-4].rsplit("--", 1)[1].split("_")[0])
            x0, y0, x1, y1, area = found
            for key, value in zip(
                REGIONS_SCHEMA.names,
                (image_id, mask_name, classes[dataset][class_index], x0, y0, x1, y1, area),
                strict=True,
            ):
                regions[key].append(value)
        images["id"].append(image_id)
        images["width"].append(pixels.shape[1])
        images["height"].append(pixels.shape[0])
        images["png"].append(encode_png(pixels))
    for table, columns, schema in (
        ("images", images, IMAGES_SCHEMA),
        ("regions", regions, REGIONS_SCHEMA),
    ):
        arrow = pa.Table.from_pydict(columns, schema=schema)
        pq.write_table(arrow, out / f"{table}-{number:05d}.parquet", compression="zstd")
    return len(images["id"]), len(regions["mask"]), time.process_time() - cpu_started


def run_floor(release: Path, out: Path, processes: int, images_per_chunk: int = 200) -> dict:
    """Do the floor's work on ``release``, writing the tables to ``out``.

    Args:
        release: an SA-Med2D-20M release folder (``SAMed2D_v1.json`` at its top).
        out: folder for the Parquet tables (made if missing).
        processes: worker processes.
        images_per_chunk: images per chunk (one images and one regions table each).

    Returns:
        ``images``, ``regions``, ``chunks``, ``processes``, ``wall_s``, ``images_per_s``,
        ``peak_rss_mb`` (this process and its descendants, summed) and ``chunk_cpu_s`` (CPU
        seconds of the chunks' work, summed over the workers: less disturbed by a busy machine
        than wall time).

    Raises:
        ValueError: ``processes`` or ``images_per_chunk`` below 1.
    """
    if processes < 1 or images_per_chunk < 1:
        raise ValueError("processes and images_per_chunk must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    method = "forkserver" if sys.platform.startswith("linux") else "spawn"
    with ProcessTreeMemory(os.getpid()) as memory:
        started = time.perf_counter()
        items, classes = _list_release(release)
        jobs = [
            (number, str(release), str(out), items[start : start + images_per_chunk], classes)
            for number, start in enumerate(range(0, len(items), images_per_chunk))
        ]
        images = regions = 0
        cpu = 0.0
        with multiprocessing.get_context(method).Pool(processes) as pool:
            for done_images, done_regions, done_cpu in pool.imap_unordered(_work_chunk, jobs):
                images += done_images
                regions += done_regions
                cpu += done_cpu
        wall = time.perf_counter() - started
    return {
        "images": images,
        "regions": regions,
        "chunks": len(jobs),
        "processes": processes,
        "wall_s": wall,
        "images_per_s": images / wall,
        "peak_rss_mb": memory.peak_mb,
        "chunk_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("release", type=Path, nargs="?", help="an SA-Med2D-20M release folder")
    parser.add_argument("--images", type=int, help="write a synthetic release of N images")
    parser.add_argument("--out", type=Path, help="tables go here (default: a temporary folder)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--images-per-chunk", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if (args.release is None) == (args.images is None):
        parser.error("give a RELEASE folder or --images N")
    scratch = Path(tempfile.mkdtemp(prefix="medgrit-floor-"))
    try:
        release = args.release
        if release is None:
            from medgrit.adapters.synthetic.samed2d import write_samed2d_release

            release = write_samed2d_release(scratch / "release", args.images)
        out = args.out or scratch / "out"
        result = run_floor(release, out, args.processes, args.images_per_chunk)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"floor: {result['images']} images, {result['regions']} regions, "
            f"{result['processes']} processes: {result['wall_s']:.1f} s, "
            f"{result['images_per_s']:.0f} images/s, "
            f"{1000 * result['chunk_cpu_s'] / result['images']:.2f} CPU ms/image in chunks, "
            f"peak RSS {result['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
