"""Planning and bookkeeping at scale: a plan held in arrays that reads as the plan drawn case by
case, a large plan's case lists kept out of ``dataset.json``, and LLM batch ids recorded beside
the manifest. Builds run in-process on tiny synthetic SA-Med2D releases (no Prefect server).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from medgrit.adapters import planning
from medgrit.adapters.build import run_build
from medgrit.adapters.store import bookkeeping
from medgrit.adapters.store.bookkeeping import DatasetMismatch, compact_manifest, load_dataset
from medgrit.adapters.store.manifest import ManifestError, record_batch
from medgrit.adapters.store.validate import validate_dataset
from medgrit.adapters.synthetic.samed2d import write_samed2d_release
from medgrit.adapters.synthetic.scale import simulated_source
from medgrit.core.cases import Case
from medgrit.core.ids import pseudonymise_case, unit_hash
from medgrit.core.sharding import allocate_images, plan_cases, plan_shards
from medgrit.schemas.config import BuildConfig

KEY = b"k" * 32
LABELS = (((1, "liver"),), ((1, "liver"), (2, "spleen")), ((3, "lesion"),))


@dataclass(frozen=True)
class Settings:
    test_fraction: float
    split_seed: int
    max_images: int | None
    images_per_shard: int
    cases_per_shard: int | None


def _listing(rng: random.Random, n: int) -> list[Case]:
    """Cases of up to three datasets; patients with several cases; some splits given."""
    cases = []
    for i in range(n):
        cases.append(
            Case(
                source=f"nnunet:/d{i % 2}",
                dataset=rng.choice("ABC"),
                case=f"case{i}",
                modality="ct",
                labels=rng.choice(LABELS),
                patient=rng.choice(["", f"p{rng.randrange(1 + n // 3)}"]),
                split=rng.choice(["", "", "", "test", "train"]),
            )
        )
    return cases


def _expected_plan(cases, settings, counts, listed) -> list[tuple[str, list[tuple]]]:
    """The plan as the docs of ``plan_build`` draw it, one case at a time."""
    ids = [pseudonymise_case(c.dataset, c.case, KEY) for c in cases]
    patients = [(c.dataset, pseudonymise_case(c.dataset, c.patient or c.case, KEY)) for c in cases]
    split: dict[tuple[str, str], str] = {}
    for case, patient in zip(cases, patients, strict=True):  # a source's test wins
        if case.split and split.get(patient) != "test":
            split[patient] = "test" if case.split == "test" else "train"
    for dataset in sorted({c.dataset for c in cases}):
        kept = [s for (d, _), s in split.items() if d == dataset]
        new = sorted({p for d, p in patients if d == dataset and (d, p) not in split})
        total, tests = len(kept) + len(new), kept.count("test")
        want = 0  # the fraction rounded, at least one from two patients on, never all
        if total >= 2 and settings.test_fraction:
            want = min(max(1, round(total * settings.test_fraction)), total - 1)
        k = max(0, min(want - tests, len(new)))
        if tests + k == total and total > 1:
            k -= 1
        ranked = sorted(new, key=lambda p: (unit_hash("split", settings.split_seed, p), p))
        for p in new:
            split[(dataset, p)] = "test" if p in ranked[:k] else "train"
    quotas: list[int | None] = [None] * len(cases)
    if settings.max_images is not None:
        taken = allocate_images([counts[c.case] for c in cases], len(cases), settings.max_images)
        quotas = [*taken, *[0] * (len(cases) - len(taken))]
    tasks = [
        (c.case, ids[i], split[patients[i]], quotas[i], listed[c.case])
        for i, c in enumerate(cases)
        if quotas[i] != 0
    ]
    work = [t[3] if t[3] is not None else (t[4] or 1) for t in tasks]
    ranges = plan_shards(work, settings.images_per_shard, settings.cases_per_shard)
    return [(f"{n:05d}", tasks[a:b]) for n, (a, b) in enumerate(ranges)]


def test_a_compact_plan_is_the_plan_drawn_case_by_case() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        cases = _listing(rng, rng.choice([0, 1, 2, 7, 30, 120]))
        settings = Settings(
            rng.choice([0.0, 0.1, 0.25, 0.6]),
            rng.randrange(3),
            rng.choice([None, None, 4, 40]),
            rng.choice([1, 3, 10]),
            rng.choice([None, 2]),
        )
        counts = {c.case: rng.randrange(0, 6) for c in cases}
        listed = {c.case: rng.choice([0, 1, 4, 12]) for c in cases}
        count, estimate = (lambda c, n=n: n[c.case] for n in (counts, listed))
        plan = plan_cases(cases, settings, KEY, count, estimate)
        drawn = [
            (shard, [(t.ref.case, t.case_id, t.split, t.quota, t.listed) for t in tasks])
            for shard, tasks in plan
        ]
        assert drawn == _expected_plan(cases, settings, counts, listed), seed


def test_a_compact_plan_holds_a_few_bytes_per_case_and_reads_as_a_list() -> None:
    source = simulated_source(35_000)  # 9,800 cases of 7 datasets, made as they are read
    assert len(source.cases) == 9_800 and source.cases[5] == source.cases[5]
    settings = Settings(0.2, 0, None, 200, None)
    stamps = lambda cases: [(f"fp-{c.case}", None) for c in cases]  # noqa: E731
    plan = plan_cases(source.cases, settings, KEY, lambda c: 1, lambda c: len(c.slices), stamps)
    arrays = (plan.index, plan.case_ids, plan.test, plan.listed, plan.bounds)
    held = sum(a.nbytes for a in arrays if a is not None)
    assert held / len(plan.case_ids) < 20  # no object per case
    listed = list(plan)
    assert len(plan) == len(listed) == 175  # 35,000 images, 200 a shard
    assert plan[-1] == listed[-1] and plan[3:5] == listed[3:5]
    assert sum(t.listed for _, tasks in listed for t in tasks) == 35_000
    first = listed[0][1][0]
    assert first.case_id == pseudonymise_case(first.ref.dataset, first.ref.case, KEY)
    assert first.fingerprint == f"fp-{first.ref.case}"
    assert plan.tasks(0, fingerprints=False)[0].fingerprint is None
    tests = {t.ref.patient for _, tasks in listed for t in tasks if t.split == "test"}
    assert 0.15 < len(tests) / 9_800 < 0.25  # each case is its own patient here


def _release(tmp_path: Path) -> Path:
    return write_samed2d_release(tmp_path / "release", 40, pool=2, size=32)


def _parts(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*.parquet"))
    }


def test_a_large_plan_keeps_its_case_lists_out_of_dataset_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release(tmp_path)
    inline, large = tmp_path / "inline", tmp_path / "large"
    config = BuildConfig(sources=[f"samed2d:{release}"], out=str(large), images_per_shard=8)
    run_build(config.model_copy(update={"out": str(inline)}))
    monkeypatch.setattr(bookkeeping, "INLINE_CASES", 0)  # every plan is large
    run_build(config)

    text = (large / "dataset.json").read_text()
    data = json.loads(text)
    names = data["case_lists"]
    assert names and all(name.startswith("shards/cases-") for name in names)
    shards = data["shards"]
    assert len(shards) > 3 and all("cases" not in s and s["case_count"] > 0 for s in shards)
    assert sum(line.lstrip().startswith('{"id":') for line in text.splitlines()) == len(shards)
    assert _parts(large) == _parts(inline)  # the same tables
    cases = lambda out: [[c.to_json() for c in s.cases] for s in load_dataset(out).shards]  # noqa: E731
    assert cases(large) == cases(inline)
    assert validate_dataset(large) == []

    before = {p: p.stat().st_mtime_ns for p in large.rglob("*") if p.is_file()}
    with monkeypatch.context() as patched:  # an unchanged plan is kept as the lists hold it
        patched.setattr(planning, "extend_plan", _not_called)
        assert run_build(config)["status"] == "complete"  # resumed: nothing built again
    assert {p: p.stat().st_mtime_ns for p in before if p.suffix == ".parquet"} == {
        p: t for p, t in before.items() if p.suffix == ".parquet"
    }
    assert sorted(f"shards/{p.name}" for p in (large / "shards").iterdir()) == sorted(names)

    # A record is valid for its shard's cases as the case lists hold them.
    light = load_dataset(large, cases=False)
    entry = light.shards[0]
    assert entry.cases == [] and entry.n_cases == shards[0]["case_count"]
    bookkeeping.write_record(large, light.config, entry.evolve(seconds=99.0))
    bookkeeping.write_record(large, light.config, light.shards[1].evolve(plan_sha256="0" * 64))
    merged = load_dataset(large)
    assert merged.shards[0].seconds == 99.0  # taken
    assert merged.shards[1].plan_sha256 == shards[1]["plan_sha256"]  # another plan's: not

    # Another build into it is refused and leaves it as it was.
    files = {p: p.read_bytes() for p in large.rglob("*") if p.is_file()}
    with pytest.raises(DatasetMismatch):
        run_build(config.model_copy(update={"images_per_shard": 5}))
    assert {p: p.read_bytes() for p in large.rglob("*") if p.is_file()} == files

    # A case list that does not hold what dataset.json says is refused in one line.
    first = large / data["case_lists"][0]
    listed = json.loads(first.read_text())
    case = listed["shards"][0]["cases"][0]
    case["split"] = "test" if case["split"] == "train" else "train"
    first.write_text(json.dumps(listed))
    with pytest.raises(ManifestError, match="does not hold the cases"):
        load_dataset(large)
    assert len(load_dataset(large, cases=False).shards) == len(shards)


def _not_called(*args, **kwargs):
    raise AssertionError("the recorded plan was reviewed case by case")


def test_a_large_plan_whose_sources_changed_is_refused_or_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bookkeeping, "INLINE_CASES", 0)
    release = _release(tmp_path)
    out = tmp_path / "ds"
    config = BuildConfig(sources=[f"samed2d:{release}"], out=str(out), images_per_shard=8)
    run_build(config)
    key = planning.build_key(config)
    listed = lambda: planning.open_build_sources(config, key).sources  # noqa: E731
    with monkeypatch.context() as patched:  # the checks before a build keep it as it is
        patched.setattr(planning, "extend_plan", _not_called)
        assert planning.check_sources_unchanged(config, out, listed(), key) is None
    mask = sorted((release / "masks").iterdir())[0]
    data = mask.read_bytes()
    mask.unlink()  # a link to a pooled file: written anew, this case's mask alone changes
    mask.write_bytes(data)
    refused = planning.check_sources_unchanged(config, out, listed(), key)
    assert refused is not None and "1 of its cases changed" in refused
    with pytest.raises(DatasetMismatch, match="changed since it was built"):
        run_build(config)
    rebuilt = run_build(config.model_copy(update={"rebuild_changed": True}))
    assert rebuilt["status"] == "complete" and len(rebuilt["retired"]) == 1
    assert validate_dataset(out) == []
    assert "cases" not in json.loads((out / "dataset.json").read_text())["shards"][-1]


def test_batch_ids_are_recorded_beside_the_manifest_and_folded_in(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    run_build(BuildConfig(sources=[f"samed2d:{_release(tmp_path)}"], out=str(out)))
    manifest = (out / "dataset.json").read_bytes()
    shard = load_dataset(out).shards[0].id
    for batch in ("batch_a", "batch_b", "batch_a"):
        record_batch(out, shard, batch)
    assert (out / "dataset.json").read_bytes() == manifest  # O(1): the manifest is not rewritten
    assert load_dataset(out).shards[0].batches == ["batch_a", "batch_b"]
    compact_manifest(out, load_dataset(out))
    assert json.loads((out / "dataset.json").read_text())["shards"][0]["batches"] == [
        "batch_a",
        "batch_b",
    ]
    assert not any((out / "shards").iterdir())
