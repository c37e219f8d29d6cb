"""Benchmark what watching a build costs, and what building again into a grown dataset costs.

What it measures
----------------
1. **Dashboard**: the build flow (``medgrit.flows.build.build_dataset``, threads runner, on
   Prefect's ephemeral server started once for all rows) over a synthetic SA-Med2D release of
   ``--images`` images (default 7,500) cut into ``--images-per-shard`` (default 20) images per
   shard, so that the build has about as many shards as a Med-GRIT-size build at the default
   shard size (75,000 / 200 = 375). Rows, measured in the same run and alternated:

   - **dashboard**: as users run it, the artifacts published as shards finish;
   - **baseline**: the same build with the dashboard's publishing turned off.

   For each: wall seconds, and the Prefect artifact calls made (progress updates and table
   versions). The ratio dashboard/baseline of wall time follows (target: under 1.05).
2. **Append planning**: opening the release and planning it, fresh (``plan_build``) against
   extending the recorded plan of the same release minus its last 10% of cases
   (``extend_plan``), at ``--plan-images`` (default 75,000) images.

Run (from the repository root)::

    python benchmarks/bench_dashboard.py
    python benchmarks/bench_dashboard.py --images 2000 --repeat 1
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

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _build_once(release: Path, out: Path, per_shard: int, dashboard: bool) -> dict:
    from medgrit.flows import dashboard as board
    from medgrit.flows.build import build_dataset
    from medgrit.schemas.config import BuildConfig

    calls = {"progress": 0, "table": 0}
    original = board.PrefectArtifacts

    class Counting(original):  # type: ignore[misc, valid-type]
        def progress(self, key: str, percent: float, description: str) -> None:
            calls["progress"] += 1
            super().progress(key, percent, description)

        def table(self, key: str, rows: list, description: str) -> None:
            calls["table"] += 1
            super().table(key, rows, description)

    original_publish = board.BuildDashboard.publish
    board.PrefectArtifacts = Counting  # type: ignore[misc]
    if not dashboard:
        board.BuildDashboard.publish = lambda self, tables=True: None  # type: ignore[method-assign]
    try:
        shutil.rmtree(out, ignore_errors=True)
        config = BuildConfig(
            sources=[f"samed2d:{release}"], out=str(out), images_per_shard=per_shard
        )
        started = time.perf_counter()
        manifest = build_dataset(config)
        wall = time.perf_counter() - started
    finally:
        board.PrefectArtifacts = original  # type: ignore[misc]
        board.BuildDashboard.publish = original_publish  # type: ignore[method-assign]
    assert manifest["status"] == "complete"
    return {
        "wall_s": wall,
        "shards": len(manifest["shards"]),
        "images": manifest["totals"]["rows"]["images"],
        **calls,
    }


def _plan_rows(release: Path, key_file: Path) -> dict:
    from medgrit.adapters.planning import prepare_build
    from medgrit.adapters.store.bookkeeping import plan_manifest
    from medgrit.schemas.config import BuildConfig

    config = BuildConfig(sources=[f"samed2d:{release}"], out="unused", key_file=str(key_file))
    started = time.perf_counter()
    fresh = prepare_build(config)
    fresh_s = time.perf_counter() - started
    # The recorded plan of the release without its last 10% of cases.
    cases = [t for _, tasks in fresh.plan for t in tasks]
    keep = len(cases) * 9 // 10
    kept_ids = {t.case_id for t in cases[:keep]}
    recorded_plan = [
        (shard, [t for t in tasks if t.case_id in kept_ids]) for shard, tasks in fresh.plan
    ]
    recorded_plan = [(s, t) for s, t in recorded_plan if t]
    previous = plan_manifest(config, [], recorded_plan, None)
    started = time.perf_counter()
    extended = prepare_build(config, previous)
    extend_s = time.perf_counter() - started
    return {
        "cases": len(cases),
        "fresh_s": fresh_s,
        "extend_s": extend_s,
        "new_cases": extended.new_cases,
        "new_shards": len(extended.plan) - len(recorded_plan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=7500)
    parser.add_argument("--images-per-shard", type=int, default=20)
    parser.add_argument("--plan-images", type=int, default=75000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    from medgrit.adapters.synthetic.samed2d import write_samed2d_release

    work = Path(tempfile.mkdtemp(prefix="medgrit-bench-dashboard-"))
    os.environ["MEDGRIT_KEY_FILE"] = str(work / "pseudonym.key")
    try:
        release = write_samed2d_release(work / "release", args.images, seed=0)
        print(f"# {platform.node()} · {os.cpu_count()} CPUs · Python {sys.version.split()[0]}")
        print(f"# {args.images} images, {args.images_per_shard} images per shard")
        # Prefect's ephemeral server starts with the first flow run: not part of any row.
        warm = write_samed2d_release(work / "warm", 20, seed=2)
        _build_once(warm, work / "warm-out", args.images_per_shard, True)
        rows: dict[str, list[dict]] = {"dashboard": [], "baseline": []}
        for i in range(args.repeat):
            order = ("dashboard", "baseline") if i % 2 == 0 else ("baseline", "dashboard")
            for name in order:
                result = _build_once(
                    release, work / "out", args.images_per_shard, name == "dashboard"
                )
                rows[name].append(result)
                print(
                    f"{name:9s}  wall {result['wall_s']:7.1f} s  shards {result['shards']:4d}  "
                    f"images {result['images']:6d}  progress calls {result['progress']:4d}  "
                    f"table versions {result['table']:4d}",
                    flush=True,
                )
        best = {k: min(r["wall_s"] for r in v) for k, v in rows.items()}
        print(
            f"dashboard / baseline wall (best of {args.repeat}): "
            f"{best['dashboard'] / best['baseline']:.3f}"
        )
        shutil.rmtree(work / "out", ignore_errors=True)
        shutil.rmtree(release, ignore_errors=True)

        big = write_samed2d_release(work / "big", args.plan_images, seed=1)
        plan = _plan_rows(big, work / "pseudonym.key")
        print(
            f"planning {plan['cases']} cases: fresh {plan['fresh_s']:.2f} s, extending a plan "
            f"of 90% of them {plan['extend_s']:.2f} s ({plan['new_cases']} new cases, "
            f"{plan['new_shards']} new shards)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
