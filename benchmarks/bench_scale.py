"""Benchmark planning and bookkeeping at MedTrinity scale (25 million images), without images.

What it measures
----------------
Planning, on a simulated SA-Med2D-20M listing (``medgrit.adapters.synthetic.scale``: cases
made as they are read, no files; 25 images per 7 cases, so 25M images are 7M cases) of each
size in ``--images`` (default 250,000 and 2,500,000; 25,000,000 projected from the largest
measured one, linearly; ``--images 250000 2500000 25000000`` measures it: about 9 minutes of
CPU and 1 GB), each in a fresh process, default settings (200 images a shard):

- **plan s**: ``prepare_build`` (the listing read once, ids, splits by patient, shards);
- **write s**: ``BuildBook.open``, the plan written as a build writes it before any shard runs
  (each case's fingerprint, its manifest entry; a plan of more than ``INLINE_CASES`` cases
  keeps its case lists in ``shards/cases-*.json``), and ``dataset.json``;
- **cpu s**: the process's CPU seconds for both (the machine is shared: wall time varies with
  its load, CPU time much less);
- **resume s**, **resume cpu s**: the same plan taken up again from OUT as ``medgrit resume``
  does (the manifest read, the listing planned and compared with the recorded case lists, the
  book opened);
- **peak RSS MB** of the process, and **B/case**: what it grew by over the process after its
  imports, per case (the projected row: what the two largest rows grew by per case between
  them). What bounds it: the plan's arrays (about 100 bytes a case while splits are drawn, 17
  kept), per shard its manifest entry, and one shard's or one case-list file's objects at a
  time (``medgrit.adapters.store.manifest.CASES_PER_LIST_FILE``);
- **µs/image**: (plan + write) CPU seconds per image; its ratio to the smallest size says
  whether planning is linear.

Bookkeeping, at ``--shards`` (default 1,000, 10,000 and 100,000 shards of ``--shard-images``
images, default 20, so that the plan is made in seconds): the plan is written, then
``--record`` shards (default 2,000) are recorded done as a build records them
(``BuildBook.record``: the shard's completion record, ``shards/{id}.json``), then an LLM batch
id for as many shards (``record_batch``), then the build's end (``finish``: ``dataset.json``
compacted with every record). Per size:

- **record ms** and **batch ms**: per shard (mean); they must not grow with the number of
  shards;
- **finish s**: the compaction at the build's end (once per build: it grows with the shards);
- **pending B/shard**, **done B/shard**: ``dataset.json`` bytes per pending and per done shard;
  **record B**: one completion record; **case lists B/case** where the plan has them.

Ratios are against the smallest size of the same run. ``uptime``'s load is printed before and
after.

Run (from the repository root)::

    python benchmarks/bench_scale.py                      # 2-4 minutes on 2 cores
    python benchmarks/bench_scale.py --images 250000 2500000 25000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SPEC = "samed2d:/simulated"
TARGET = 25_000_000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open_book(out: Path, n_images: int, shard_images: int, resume: bool = False) -> dict:
    """The plan of ``n_images`` simulated images prepared and written into ``out`` as a build
    does before its first shard (``resume``: then taken up again, as a resume does): the
    book (not kept for a resume), the plan's cases, shards and layout, and each step's wall
    and CPU seconds."""
    from medgrit.adapters.book import BuildBook, planned_cases
    from medgrit.adapters.planning import SourceListing, build_key, prepare_build, previous_build
    from medgrit.adapters.synthetic.scale import simulated_source
    from medgrit.schemas.config import BuildConfig
    from medgrit.schemas.manifest import GeneratorEntry

    config = BuildConfig(
        sources=[SPEC],
        out=str(out),
        key_file=str(out.parent / "pseudonym.key"),
        images_per_shard=shard_images,
    )
    listing = SourceListing(config, build_key(config), [simulated_source(n_images, SPEC)])
    logger = logging.getLogger("bench_scale")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    generator = GeneratorEntry(name="template")
    found: dict = {}

    def timed(name: str, work: Callable[[], object]) -> object:
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        found[name] = (time.perf_counter() - wall, time.process_time() - cpu)
        return result

    prepared = timed("plan", lambda: prepare_build(config, None, listing))
    found["book"] = timed(
        "write", lambda: BuildBook.open(config, prepared, generator, None, False, True, logger)
    )
    found["cases"], found["shards"] = planned_cases(prepared.plan), len(prepared.plan)
    found["layout"] = "case lists" if found["book"].plan.case_lists else "inline"
    if resume:  # as a new process would: without the plan and book of the build
        del prepared, found["book"]

        def again() -> object:
            previous = previous_build(out, config)
            prepared = prepare_build(config, previous, listing)
            return BuildBook.open(config, prepared, generator, previous, False, False, logger)

        timed("resume", again)
    return found


def _plan_row(out: Path, n_images: int) -> dict:
    """Plan, write and resume ``n_images`` simulated images (in a fresh process)."""
    import medgrit.adapters.book
    import medgrit.adapters.synthetic.scale  # noqa: F401 - imported before the base is taken

    base = _rss_mb()
    found = _open_book(out, n_images, 200, resume=True)
    peak = _rss_mb()
    cases = found["cases"]
    return {
        "images": n_images,
        "cases": cases,
        "shards": found["shards"],
        "plan_s": found["plan"][0],
        "write_s": found["write"][0],
        "cpu_s": found["plan"][1] + found["write"][1],
        "resume_s": found["resume"][0],
        "resume_cpu_s": found["resume"][1],
        "peak_mb": peak,
        "bytes_per_case": (peak - base) * 2**20 / max(1, cases),
        "manifest_bytes": (out / "dataset.json").stat().st_size,
        "case_list_bytes": sum(p.stat().st_size for p in (out / "shards").glob("cases-*")),
        "layout": found["layout"],
    }


def _outcome(shard: str) -> dict:
    """What a template shard of 200 images returns (the sizes of a real one)."""
    tables = ("images", "regions", "conversations", "rejects")
    return {
        "rows": {"images": 200, "regions": 640, "conversations": 200, "rejects": 14},
        "files": {f"{t}/part-{shard}.parquet": f"{i:064x}" for i, t in enumerate(tables)},
        "stats": {
            "images_by_modality": {"ct": 120, "xray": 80},
            "images_by_split": {"train": 180, "test": 20},
            "qa_by_modality_task": {
                "ct": {"MIA": 120, "RC": 110, "ROC": 130, "VG": 115},
                "xray": {"MIA": 80, "RC": 70, "ROC": 75, "VG": 77},
            },
            "rejects_by_reason": {"below_min_area": 10, "empty_mask": 4},
            "non_finite_values": 0,
        },
        "tokens": {"prompt": 0, "completion": 0},
        "seconds": 12.34,
    }


def _book_row(out: Path, n_shards: int, shard_images: int, records: int) -> dict:
    """Record ``records`` shards of a plan of ``n_shards`` (in a fresh process)."""
    from medgrit.adapters.store.manifest import record_batch

    book = _open_book(out, n_shards * shard_images, shard_images)["book"]
    shards = book.plan_ids
    pending = (out / "dataset.json").stat().st_size
    done = shards[:: max(1, len(shards) // records)][:records]
    started = time.perf_counter()
    for shard in done:
        book.record(shard, _outcome(shard))
    record = (time.perf_counter() - started) / len(done)
    started = time.perf_counter()
    for shard in done:
        record_batch(out, shard, f"batch_{shard}")
    batch = (time.perf_counter() - started) / len(done)
    started = time.perf_counter()
    book.finish()
    finish = time.perf_counter() - started
    after = (out / "dataset.json").stat().st_size
    lists = sum(p.stat().st_size for p in (out / "shards").glob("cases-*"))
    return {
        "shards": len(shards),
        "cases": sum(book.entries[s].n_cases for s in shards),
        "recorded": len(done),
        "record_ms": record * 1e3,
        "batch_ms": batch * 1e3,
        "finish_s": finish,
        "pending_b": pending / len(shards),
        "done_b": (after - pending) / len(done) + pending / len(shards),
        "record_b": len(json.dumps({"id": done[0], "key": "0" * 64, **_outcome(done[0])})),
        "case_list_b": lists / max(1, sum(book.entries[s].n_cases for s in shards)),
        "layout": "case lists" if book.plan.case_lists else "inline",
    }


def _child(kind: str, root: Path, size: int, shard_images: int, records: int) -> dict:
    """Run one row in a fresh process (its own peak RSS); returns the row."""
    out = root / f"{kind}-{size}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = [sys.executable, __file__, "--child", kind, str(out), str(size)]
    args += ["--shard-images", str(shard_images), "--record", str(records)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _print_plans(rows: list[dict], projected: dict | None) -> None:
    print("\n## Planning (simulated SA-Med2D listing, 200 images a shard)\n")
    print(
        "| images | cases | shards | layout | plan s | write s | cpu s | µs/image (cpu) | ratio "
        "| resume s | resume cpu s | peak RSS MB | B/case |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = rows[0]["cpu_s"] / rows[0]["images"]
    for r in [*rows, *([projected] if projected else [])]:
        per = r["cpu_s"] / r["images"]
        name = f"{r['images']:,}" + (" (projected)" if r is projected else "")
        print(
            f"| {name} | {r['cases']:,} | {r['shards']:,} | {r['layout']} | {r['plan_s']:.1f} "
            f"| {r['write_s']:.1f} | {r['cpu_s']:.1f} | {per * 1e6:.2f} | {per / first:.2f} "
            f"| {r['resume_s']:.1f} | {r['resume_cpu_s']:.1f} | {r['peak_mb']:.0f} "
            f"| {r['bytes_per_case']:.0f} |"
        )


def _print_books(rows: list[dict]) -> None:
    print("\n## Bookkeeping (records of done shards; dataset.json bytes per shard)\n")
    print(
        "| shards | cases | layout | record ms | ratio | batch ms | ratio | finish s "
        "| pending B/shard | done B/shard | record B | case lists B/case |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = rows[0]
    for r in rows:
        print(
            f"| {r['shards']:,} | {r['cases']:,} | {r['layout']} | {r['record_ms']:.2f} "
            f"| {r['record_ms'] / first['record_ms']:.2f} | {r['batch_ms']:.2f} "
            f"| {r['batch_ms'] / first['batch_ms']:.2f} | {r['finish_s']:.1f} "
            f"| {r['pending_b']:.0f} | {r['done_b']:.0f} | {r['record_b']} "
            f"| {r['case_list_b']:.0f} |"
        )


def _projected(rows: list[dict], images: int) -> dict:
    """The row of ``images`` projected from the rows measured: times linearly from the
    largest; memory by what the two largest (of one layout) grew per case between them."""
    big = rows[-1]
    k = images / big["images"]
    cases = round(big["cases"] * k)
    per_case = big["bytes_per_case"]
    if len(rows) > 1 and rows[-2]["layout"] == big["layout"]:
        grew = (big["peak_mb"] - rows[-2]["peak_mb"]) * 2**20
        per_case = max(0.0, grew / max(1, big["cases"] - rows[-2]["cases"]))
    return {
        **big,
        "images": images,
        "cases": cases,
        "shards": round(big["shards"] * k),
        "plan_s": big["plan_s"] * k,
        "write_s": big["write_s"] * k,
        "cpu_s": big["cpu_s"] * k,
        "resume_s": big["resume_s"] * k,
        "resume_cpu_s": big["resume_cpu_s"] * k,
        "peak_mb": big["peak_mb"] + per_case * (cases - big["cases"]) / 2**20,
        "bytes_per_case": per_case,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[250_000, 2_500_000])
    parser.add_argument("--shards", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--shard-images", type=int, default=20)
    parser.add_argument("--record", type=int, default=2_000, help="shards recorded per size")
    parser.add_argument("--skip-plans", action="store_true")
    parser.add_argument("--skip-books", action="store_true")
    parser.add_argument("--keep", type=Path, help="work here (default: a temporary folder)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, out, size = args.child[0], Path(args.child[1]), int(args.child[2])
        row = (
            _plan_row(out, size)
            if kind == "plan"
            else _book_row(out, size, args.shard_images, args.record)
        )
        print(json.dumps(row))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="medgrit-bench-scale-"))
    print(
        f"# medgrit planning and bookkeeping at scale ({platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores, Python {platform.python_version()}); load before: {_load()}"
    )
    try:
        plans = [] if args.skip_plans else sorted(args.images)
        rows = [_child("plan", root, n, 200, 0) for n in plans]
        books = [] if args.skip_books else sorted(args.shards)
        book_rows = [_child("book", root, n, args.shard_images, args.record) for n in books]
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if rows:
        projected = _projected(rows, TARGET) if rows[-1]["images"] < TARGET else None
        _print_plans(rows, projected)
    if book_rows:
        _print_books(book_rows)
    print(f"\nload after: {_load()}")


if __name__ == "__main__":
    sys.exit(main())
