"""What verification costs per turn, against the verifier of an earlier commit in the same run.

Two sets of turns, both verified as a build verifies them (one :class:`ImageTruth` per image,
then ``check_turn`` per turn, names read with the build's label vocabulary):

- template turns: the template generator's conversations about random images (1-8 regions of
  60 labels, with boxes, areas and positions as the pipeline computes them);
- natural turns: ``benchmarks/data/natural_honest*.json`` (free clinical prose, see
  ``medgrit_testing.natural_turns``).

Each text is read afresh in every pass (the cache of read texts is cleared), as a build meets
it; the best pass counts.

Each verifier runs in a subprocess of its own with the same turns: this checkout's, and the
``core`` package of ``--baseline`` (a commit; default the last one before the claims of free
prose) unpacked from git history. Reported as microseconds per turn and the ratio, for all
turns and for the turns both keep (a turn one verifier rejects at its first untrue word costs
it less than a turn it reads to the end).

Run (from the repository root)::

    python benchmarks/bench_verify_cost.py [--turns 60000] [--passes 5] [--baseline 606dff8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "606dff8"
NATURAL = ROOT / "benchmarks" / "data"

# Runs in a subprocess: times one verifier over the turns in a JSON file (argv[1]).
TIMER = r"""
import dataclasses, json, sys, time
from medgrit.core.generation import QA, ImageFacts, RegionFacts
from medgrit.core.lexicon import lexicon_for
from medgrit.core.verify import ImageTruth, check_turn

work = json.load(open(sys.argv[1]))
fields = {f.name for f in dataclasses.fields(RegionFacts)}
images = []
for item in work["images"]:
    image = ImageFacts(**item["image"])
    regions = []
    for r in item["regions"]:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k in fields}
        regions.append(RegionFacts(**values))
    turns = [QA(t[0], t[1], t[2], tuple(t[3])) for t in item["turns"]]
    images.append((image, regions, turns))
lexicon = lexicon_for(frozenset(work["vocabulary"]))
from medgrit.core import claims
best = None
for _ in range(int(sys.argv[2])):
    claims._read_cached.cache_clear()  # each text read afresh, as a build meets it
    start = time.perf_counter()
    failed = 0
    for image, regions, turns in images:
        truth = ImageTruth(regions, image, lexicon)
        failed += sum(check_turn(qa, truth) is not None for qa in turns)
    elapsed = time.perf_counter() - start
    best = elapsed if best is None else min(best, elapsed)
total = sum(len(t) for _, _, t in images)
kept = [
    [check_turn(qa, ImageTruth(regions, image, lexicon)) is None for qa in turns]
    for image, regions, turns in images
]
print(json.dumps({"seconds": best, "turns": total, "failed": failed, "kept": kept}))
"""


def template_work(turns_wanted: int) -> dict:
    """Template conversations about random images, as plain JSON."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_truth import VOCABULARY, random_images

    from medgrit.adapters.text.templates import TemplateGenerator

    generator = TemplateGenerator(seed=1, max_region_turns=3)
    images, total = [], 0
    for image, regions in random_images(turns_wanted // 3):
        turns = generator.generate(image, regions)
        images.append(_item(image, regions, turns))
        total += len(turns)
        if total >= turns_wanted:
            break
    return {"vocabulary": list(VOCABULARY), "images": images}


def natural_work() -> dict:
    """The hand-written natural turns of every ``natural_honest*.json`` set."""
    from medgrit_testing.natural_turns import load_turns

    images: dict[str, dict] = {}
    vocabulary: set[str] = set()
    for path in sorted(NATURAL.glob("natural_honest*.json")):
        for t in load_turns(path):
            key = f"{path.name}:{t.image.image_id}"
            item = images.setdefault(key, _item(t.image, t.regions, []))
            item["turns"].append([t.qa.task, t.qa.question, t.qa.answer, list(t.qa.region_ids)])
            vocabulary.update(r.label for r in t.regions)
    return {"vocabulary": sorted(vocabulary), "images": list(images.values())}


def _item(image, regions, turns) -> dict:
    return {
        "image": dataclasses.asdict(image),
        "regions": [dataclasses.asdict(r) for r in regions],
        "turns": [[qa.task, qa.question, qa.answer, list(qa.region_ids)] for qa in turns],
    }


def baseline_tree(commit: str, into: Path) -> Path | None:
    """A folder where ``import medgrit.core`` is the ``core`` package of ``commit``."""
    try:
        archive = subprocess.run(
            ["git", "archive", commit, "core"], cwd=ROOT, check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    package = into / "medgrit"
    package.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(package, filter="data")
    return into


def timed(work_file: Path, path: Path | None, passes: int) -> dict:
    env_path = [str(path)] if path is not None else []
    code = (
        f"import sys; sys.path[:0] = {env_path!r}; "
        + "exec(compile("
        + repr(TIMER)
        + ", 't', 'exec'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(work_file), str(passes)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=60_000, help="template turns to verify")
    parser.add_argument("--passes", type=int, default=5, help="timed passes (the best counts)")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="commit to compare with")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline_tree(args.baseline, Path(tmp) / "base")
        for name, work in (
            ("template", template_work(args.turns)),
            ("natural", natural_work()),
        ):
            work_file = Path(tmp) / f"{name}.json"
            work_file.write_text(json.dumps(work))
            passes = args.passes if name == "template" else 4 * args.passes
            new = timed(work_file, None, passes)
            per_turn = 1e6 * new["seconds"] / new["turns"]
            line = f"{name}: {new['turns']} turns, this checkout {per_turn:.1f} us/turn"
            line += f" ({new['failed']} untrue)"
            if base is not None:
                old = timed(work_file, base, passes)
                line += (
                    f"; {args.baseline} {1e6 * old['seconds'] / old['turns']:.1f} us/turn "
                    f"({old['failed']} untrue); ratio {new['seconds'] / old['seconds']:.2f}"
                )
            print(line)
            if base is not None:
                both = _kept_by_both(work, new["kept"], old["kept"])
                work_file.write_text(json.dumps(both))
                new, old = timed(work_file, None, passes), timed(work_file, base, passes)
                print(
                    f"{name}, the {new['turns']} turns both keep: this checkout "
                    f"{1e6 * new['seconds'] / new['turns']:.1f} us/turn; {args.baseline} "
                    f"{1e6 * old['seconds'] / old['turns']:.1f} us/turn; "
                    f"ratio {new['seconds'] / old['seconds']:.2f}"
                )
    return 0


def _kept_by_both(work: dict, new: list[list[bool]], old: list[list[bool]]) -> dict:
    """The work with only the turns both verifiers keep (both read and check them whole)."""
    images = []
    for item, new_kept, old_kept in zip(work["images"], new, old, strict=True):
        turns = [t for t, a, b in zip(item["turns"], new_kept, old_kept, strict=True) if a and b]
        if turns:
            images.append({**item, "turns": turns})
    return {**work, "images": images}


if __name__ == "__main__":
    sys.exit(main())
