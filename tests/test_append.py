"""A dataset whose sources gained cases is extended, never rewritten: the recorded shards stay
as they are, the new cases become new shards after them, and old cases keep their splits."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from catalogue import tree_digest, write_ct_source

from medgrit.adapters.store.bookkeeping import plan_manifest
from medgrit.adapters.store.validate import validate_dataset
from medgrit.core.cases import Case
from medgrit.core.plan_extension import PlanConflict, RecordedPlan, extend_plan
from medgrit.core.sharding import assign_new_splits, assign_splits, plan_build
from medgrit.schemas.config import BuildConfig

KEY = b"k" * 32


def _cases(names: list[str], patients: dict[str, str] | None = None) -> list[Case]:
    patients = patients or {}
    return [
        Case(
            source="nnunet:/data/D", dataset="D", case=n, modality="ct", patient=patients.get(n, "")
        )
        for n in names
    ]


def _recorded(config: BuildConfig, plan) -> list[dict]:
    return plan_manifest(config, [], plan, None).to_json()["shards"]


def _one(case: Case) -> int:
    return 1


def test_recorded_shards_stay_and_new_cases_become_new_shards(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=2, test_fraction=0.3)
    old = _cases([f"c{i:02d}" for i in range(9)])
    recorded = _recorded(config, plan_build(old, config, KEY, _one, _one))
    # New cases arrive anywhere in the listing (here before, between and after the old ones).
    grown = _cases(["a00", *[f"c{i:02d}" for i in range(9)], "c04b", "z99"])
    grown = [grown[0], *grown[1:6], grown[10], *grown[6:10], grown[11]]

    extended = extend_plan(RecordedPlan(recorded), grown, config, KEY, _one, _one)

    assert extended is not None and extended.new_cases == 3
    kept = _recorded(config, extended.plan)[: len(recorded)]
    assert kept == recorded  # ids, cases, splits and quotas as recorded
    added = extended.plan[len(recorded) :]
    assert [shard for shard, _ in added] == ["00005", "00006"]
    assert sorted(t.ref.case for _, tasks in added for t in tasks) == ["a00", "c04b", "z99"]
    assert {extended.generations[s] for s, _ in added} == {1}
    assert {extended.generations[s] for s, _ in extended.plan[: len(recorded)]} == {0}
    every = [t.case_id for _, tasks in extended.plan for t in tasks]
    assert len(every) == len(set(every)) == len(grown)


def test_nothing_new_gives_the_recorded_plan_back(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=3)
    cases = _cases([f"c{i}" for i in range(7)])
    recorded = _recorded(config, plan_build(cases, config, KEY, _one, _one))
    extended = extend_plan(RecordedPlan(recorded), cases, config, KEY, _one, _one)
    assert extended is not None and extended.new_cases == 0
    assert _recorded(config, extended.plan) == recorded


def test_a_dataset_whose_sources_lost_a_case_cannot_be_extended(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=3)
    cases = _cases([f"c{i}" for i in range(7)])
    recorded = _recorded(config, plan_build(cases, config, KEY, _one, _one))
    with pytest.raises(PlanConflict, match="7 cases then, 6 now: 1 gone, 0 new"):
        extend_plan(RecordedPlan(recorded), [*cases[:3], *cases[4:]], config, KEY, _one, _one)
    with pytest.raises(PlanConflict, match="another pseudonymisation key"):
        other_key = b"x" * 32  # other pseudonyms
        extend_plan(RecordedPlan(recorded), cases, config, other_key, _one, _one)


def test_a_case_whose_images_changed_is_named(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=3)
    cases = _cases([f"c{i}" for i in range(4)])
    recorded = _recorded(config, plan_build(cases, config, KEY, _one, _one))

    def grown(case: Case) -> int:
        return 2 if case.case == "c2" else 1  # an image added to c2 since

    with pytest.raises(PlanConflict, match=r"1 of its cases changed .*c2: 1 images then, 2 now"):
        extend_plan(RecordedPlan(recorded), cases, config, KEY, _one, grown)


def test_new_cases_of_a_known_patient_take_its_split(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=1, test_fraction=0.5)
    names = [f"c{i}" for i in range(8)]
    patients = {n: f"p{n}" for n in names}
    old = _cases(names, patients)
    recorded = _recorded(config, plan_build(old, config, KEY, _one, _one))
    split_of = {c["case"]: c["split"] for s in recorded for c in s["cases"]}
    assert set(split_of.values()) == {"train", "test"}
    later = {f"{n}-followup": f"p{n}" for n in names}  # a second study of every patient
    grown = _cases([*names, *later], {**patients, **later})
    extended = extend_plan(RecordedPlan(recorded), grown, config, KEY, _one, _one)
    assert extended is not None
    for _, tasks in extended.plan[len(recorded) :]:
        for t in tasks:
            assert t.split == split_of[t.ref.case.removesuffix("-followup")]


def test_new_patients_keep_each_datasets_test_share_near_its_fraction() -> None:
    rng = random.Random(3)
    for _ in range(200):
        fraction = rng.choice([0.1, 0.11, 0.25, 0.5])
        n_old, n_new = rng.randrange(0, 40), rng.randrange(1, 40)
        ids = [f"p{i}" for i in range(n_old + n_new)]
        old = assign_splits(ids[:n_old], ["D"] * n_old, fraction, seed=1)
        new = assign_new_splits(ids[n_old:], ["D"] * n_new, {"D": old}, fraction, seed=1)
        n, kept_test = n_old + n_new, Counter(old)["test"]
        test = kept_test + Counter(new)["test"]
        if n >= 2:
            assert test < n  # never a whole dataset held out
        target = min(max(1, round(n * fraction)), n - 1) if n >= 2 else 0
        if kept_test <= target <= kept_test + n_new:
            assert test == target
        # With nothing kept it is the first build's split.
        assert assign_new_splits(ids, ["D"] * n, {}, fraction, 1) == assign_splits(
            ids, ["D"] * n, fraction, 1
        )


def test_the_image_cap_left_by_the_recorded_quotas_goes_to_new_cases(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=4, max_images=10)
    cases = _cases([f"c{i}" for i in range(3)])

    def three(case: Case) -> int:
        return 3

    recorded = _recorded(config, plan_build(cases, config, KEY, three, three))
    assert sum(c["quota"] for s in recorded for c in s["cases"]) == 9
    grown = _cases([f"c{i}" for i in range(6)])
    extended = extend_plan(RecordedPlan(recorded), grown, config, KEY, three, three)
    assert extended is not None
    new = [t for _, tasks in extended.plan[len(recorded) :] for t in tasks]
    assert [t.quota for t in new] == [1]  # 10 - 9: one more image, from the first new case


# -- end to end ------------------------------------------------------------------------------


def _rows(out: Path, table: str) -> list[dict]:
    return [
        r for p in sorted((out / table).glob("*.parquet")) for r in pq.read_table(p).to_pylist()
    ]


def _parts(out: Path) -> dict[str, str]:
    tables = ("images", "regions", "conversations", "rejects")
    return {k: v for k, v in tree_digest(out).items() if k.split("/")[0] in tables}


def _grow(source: Path, spare: Path, names: list[str]) -> None:
    for name in names:
        case = name.split(":")[0]
        as_name = name.split(":")[-1]
        shutil.copy(
            spare / "imagesTr" / f"{case}_0000.nii.gz",
            source / "imagesTr" / f"{as_name}_0000.nii.gz",
        )
        shutil.copy(
            spare / "labelsTr" / f"{case}.nii.gz", source / "labelsTr" / f"{as_name}.nii.gz"
        )


def test_building_again_after_the_source_grew_appends_only_the_new_cases(
    medgrit, tmp_path: Path
) -> None:
    source = write_ct_source(tmp_path / "Dataset081_Growing", cases=4)
    spare = write_ct_source(tmp_path / "spare", cases=8)
    out = tmp_path / "ds"
    build = ("build", f"nnunet:{source}", "--out", str(out), "--images-per-shard", "6")
    first = medgrit(*build)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((out / "dataset.json").read_text())
    files_before = _parts(out)
    splits_before = {c["case_id"]: c["split"] for s in before["shards"] for c in s["cases"]}

    # Three new cases: two after the old ones, one whose name sorts between them.
    _grow(source, spare, ["case004", "case005", "case006:case001b"])

    resumed = medgrit("resume", str(out))
    assert resumed.returncode == 2
    assert "3 new" in resumed.stderr and "medgrit build" in resumed.stderr
    assert {k: v for k, v in tree_digest(out).items() if k in files_before} == files_before

    again = medgrit(*build)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "the sources gained 3 cases" in again.stderr
    after = json.loads((out / "dataset.json").read_text())
    assert after["status"] == "complete"
    old_ids = [s["id"] for s in before["shards"]]
    assert [s["id"] for s in after["shards"]][: len(old_ids)] == old_ids
    for old, now in zip(before["shards"], after["shards"], strict=False):
        assert (now["cases"], now["files"], now["rows"]) == (
            old["cases"],
            old["files"],
            old["rows"],
        )
    digest = tree_digest(out)
    assert {k: digest[k] for k in files_before} == files_before  # old parts untouched
    new_shards = after["shards"][len(old_ids) :]
    assert len(new_shards) == 3 and all(s.get("generation") == 1 for s in new_shards)
    new_cases = [c["case"] for s in new_shards for c in s["cases"]]
    assert sorted(new_cases) == ["case001b", "case004", "case005"]
    now_splits = {c["case_id"]: c["split"] for s in after["shards"] for c in s["cases"]}
    assert {k: now_splits[k] for k in splits_before} == splits_before
    images = _rows(out, "images")
    assert len({r["image_id"] for r in images}) == len(images) == 7 * 6  # no image twice
    assert after["totals"]["rows"]["images"] == len(images)
    assert validate_dataset(out) == []

    # The appended rows are what a build of the grown source gives for those cases.
    fresh = tmp_path / "fresh"
    built = medgrit("build", f"nnunet:{source}", "--out", str(fresh), "--images-per-shard", "6")
    assert built.returncode == 0, built.stderr[-2000:]
    new_ids = {c["case_id"] for s in new_shards for c in s["cases"]}

    def of_new(rows: list[dict], key: str = "image_id") -> list[dict]:
        picked = [
            {k: v for k, v in r.items() if k != "split"}
            for r in rows
            if r[key].rsplit("-", 1)[0] in new_ids
        ]
        return sorted(picked, key=lambda r: json.dumps(r, sort_keys=True, default=str))

    for table in ("images", "regions", "conversations"):
        assert of_new(_rows(out, table)) == of_new(_rows(fresh, table)), table

    # Nothing new: nothing is built, nothing changes.
    settled = _parts(out)
    third = medgrit(*build)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "0 to build" in third.stderr
    assert _parts(out) == settled


def test_a_build_with_other_settings_into_a_dataset_is_refused(medgrit, tmp_path: Path) -> None:
    source = write_ct_source(tmp_path / "Dataset082_Other", cases=2)
    out = tmp_path / "ds"
    assert medgrit("build", f"nnunet:{source}", "--out", str(out)).returncode == 0
    before = _parts(out), (out / "dataset.json").read_bytes()
    other = medgrit("build", f"nnunet:{source}", "--out", str(out), "--min-area", "3")
    assert other.returncode == 2
    assert "settings differ" in other.stderr and "--overwrite" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1 and "min-area" in other.stderr
    assert (_parts(out), (out / "dataset.json").read_bytes()) == before


def test_a_source_that_lost_a_case_is_refused_and_nothing_changes(medgrit, tmp_path: Path) -> None:
    source = write_ct_source(tmp_path / "Dataset083_Shrinking", cases=3)
    out = tmp_path / "ds"
    assert medgrit("build", f"nnunet:{source}", "--out", str(out)).returncode == 0
    before = _parts(out), (out / "dataset.json").read_bytes()
    (source / "imagesTr" / "case001_0000.nii.gz").unlink()
    (source / "labelsTr" / "case001.nii.gz").unlink()
    shrunk = medgrit("build", f"nnunet:{source}", "--out", str(out))
    assert shrunk.returncode == 2 and "1 gone" in shrunk.stderr
    assert (_parts(out), (out / "dataset.json").read_bytes()) == before


def test_an_extension_that_failed_is_finished_by_resume(medgrit, tmp_path: Path) -> None:
    source = write_ct_source(tmp_path / "Dataset084_Resumed", cases=4)
    spare = write_ct_source(tmp_path / "spare", cases=6)
    out = tmp_path / "ds"
    build = ("build", f"nnunet:{source}", "--out", str(out), "--images-per-shard", "6")
    assert medgrit(*build).returncode == 0
    # New cases that sort among the old ones: a plan drawn afresh would differ from the dataset's.
    _grow(source, spare, ["case004:case000b", "case005:case002b"])
    blocker = out / "images" / "part-00005.parquet"
    blocker.mkdir()  # the second new shard cannot be written: an infrastructure failure
    failed = medgrit(*build)
    assert failed.returncode == 1 and "medgrit resume" in failed.stderr
    status = medgrit("status", str(out))
    assert status.returncode == 1 and "00005" in status.stdout
    blocker.rmdir()
    resumed = medgrit("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "6 shards planned, 1 to build" in resumed.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["shards"]) == 6
    assert validate_dataset(out) == []
    assert medgrit("status", str(out)).returncode == 0


def test_a_case_that_changed_since_it_was_built_is_refused(medgrit, tmp_path: Path) -> None:
    source = write_ct_source(tmp_path / "Dataset085_Changed", cases=3)
    out = tmp_path / "ds"
    assert medgrit("build", f"nnunet:{source}", "--out", str(out)).returncode == 0
    before = _parts(out), (out / "dataset.json").read_bytes()
    longer = write_ct_source(tmp_path / "longer", cases=2, shape=(64, 56, 9))  # more slices
    _grow(source, longer, ["case001"])
    changed = medgrit("build", f"nnunet:{source}", "--out", str(out))
    assert changed.returncode == 2
    assert "1 of its cases changed" in changed.stderr and "case001: 6 images then, 9 now" in (
        changed.stderr
    )
    assert (_parts(out), (out / "dataset.json").read_bytes()) == before


# -- changed sources -------------------------------------------------------------------------


def _stamps(changed: frozenset[str] = frozenset()) -> Callable[[Case], tuple[str, None]]:
    """A fingerprint per case: its name, or another value for the ``changed`` cases."""
    return lambda case: (f"{case.case}{'*' if case.case in changed else ''}", None)


def test_a_changed_case_is_refused_or_its_shard_retired_and_planned_again(
    tmp_path: Path,
) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=2, test_fraction=0.3)
    cases = _cases([f"c{i}" for i in range(6)])
    recorded = _recorded(config, plan_build(cases, config, KEY, _one, _one, _stamps()))
    assert all(c["fingerprint"] == c["case"] for s in recorded for c in s["cases"])
    changed = _stamps(frozenset({"c3"}))

    with pytest.raises(PlanConflict, match=r"1 of its cases changed .*c3: its files or labels"):
        extend_plan(RecordedPlan(recorded), cases, config, KEY, _one, _one, changed)

    earlier = [{"id": "00003", "generation": 1}]  # retired by an earlier build
    plan = RecordedPlan(recorded, retired=earlier)
    extended = extend_plan(plan, cases, config, KEY, _one, _one, changed, rebuild_changed=True)
    assert extended is not None and extended.new_cases == 0 and extended.rebuilt == 2
    (gone,) = extended.retired
    assert gone.id == "00001" and gone.reason.startswith("a case changed")
    kept = [shard for shard, _ in extended.plan[:2]]
    assert kept == ["00000", "00002"]
    (added, tasks) = extended.plan[2]
    assert added == "00004" and extended.generations[added] == 2  # ids and generations go on
    assert [t.ref.case for t in tasks] == ["c2", "c3"]
    split_of = {c["case"]: c["split"] for s in recorded for c in s["cases"]}
    assert [t.split for t in tasks] == [split_of["c2"], split_of["c3"]]
    assert [t.fingerprint for t in tasks] == ["c2", "c3*"]  # what they are now


def test_a_changed_label_map_names_its_ids(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=2)

    def labelled(names: dict[int, str]) -> list[Case]:
        return [
            Case(
                source="nnunet:/data/D",
                dataset="D",
                case=f"c{i}",
                modality="ct",
                labels=tuple(sorted(names.items())),
            )
            for i in range(3)
        ]

    before = labelled({1: "liver", 2: "spleen"})
    plan = plan_build(before, config, KEY, _one, _one)
    written = {"D": {"1": "liver", "2": "spleen"}}
    sources = [
        {"spec": "nnunet:/data/D", "kind": "nnunet", "label_maps": written, "label_words": written}
    ]
    recorded = RecordedPlan(_recorded(config, plan), sources)
    now = labelled({1: "spleen", 2: "liver", 3: "tumour"})
    with pytest.raises(PlanConflict) as error:
        extend_plan(recorded, now, config, KEY, _one, _one)
    assert str(error.value) == (
        "the label map of nnunet:/data/D (D) changed: 1: 'liver' then, 'spleen' now; "
        "2: 'spleen' then, 'liver' now; 3: new 'tumour'"
    )
    extended = extend_plan(recorded, now, config, KEY, _one, _one, rebuild_changed=True)
    assert extended is not None and len(extended.retired) == 2 and extended.rebuilt == 3
    assert {r.reason for r in extended.retired} == {"its source's label map changed"}
    # The same map again: no change. A label added is one (its pixels were rejected, or read
    # as the only label, before).
    assert extend_plan(recorded, before, config, KEY, _one, _one).retired == ()
    grown = labelled({1: "liver", 2: "spleen", 3: "tumour"})
    with pytest.raises(PlanConflict, match="3: new 'tumour'"):
        extend_plan(recorded, grown, config, KEY, _one, _one)

    # The same label file, worded otherwise by the medgrit that built the dataset.
    older = {"D": {"1": "hepar", "2": "spleen"}}
    worded = RecordedPlan(recorded.shards, [{**sources[0], "label_words": older}])
    with pytest.raises(PlanConflict, match=r"medgrit words the labels of .*1: 'hepar' then"):
        extend_plan(worded, before, config, KEY, _one, _one)
    again = extend_plan(worded, before, config, KEY, _one, _one, rebuild_changed=True)
    assert {r.reason for r in again.retired} == {"its labels are worded otherwise now"}
    # A manifest that recorded only each dataset's words: a difference is a label map change.
    plain = [
        {"spec": "nnunet:/data/D", "kind": "nnunet", "datasets": {"D": {"labels": older["D"]}}}
    ]
    with pytest.raises(PlanConflict, match=r"the label map of .*1: 'hepar' then, 'liver' now"):
        extend_plan(RecordedPlan(recorded.shards, plain), before, config, KEY, _one, _one)


def test_gone_or_unreadable_cases_are_refused_even_when_rebuilding(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=2)
    cases = _cases([f"c{i}" for i in range(4)])
    recorded = RecordedPlan(
        _recorded(config, plan_build(cases, config, KEY, _one, _one, _stamps()))
    )
    with pytest.raises(PlanConflict, match="4 cases then, 3 now: 1 gone"):
        extend_plan(recorded, cases[1:], config, KEY, _one, _one, _stamps(), rebuild_changed=True)

    def unmounted(case: Case) -> tuple[str, None]:
        return (f"missing-{case.case}" if case.case == "c2" else case.case), None

    with pytest.raises(PlanConflict, match=r"1 of its cases cannot be read now .*c2"):
        extend_plan(recorded, cases, config, KEY, _one, _one, unmounted, rebuild_changed=True)


def test_a_rebuilt_case_keeps_its_share_of_the_image_cap(tmp_path: Path) -> None:
    config = BuildConfig(out=str(tmp_path), images_per_shard=1, max_images=4)
    cases = _cases(["c0", "c1", "c2", "c3"])

    def three(case: Case) -> int:
        return 3

    recorded = _recorded(config, plan_build(cases, config, KEY, three, three, _stamps()))
    quota_of = {c["case"]: c["quota"] for s in recorded for c in s["cases"]}
    assert sum(quota_of.values()) == 4
    grown = _cases(["c0", "c0a", "c1", "c2", "c3"])  # a new case, and c1 changed
    extended = extend_plan(
        RecordedPlan(recorded),
        grown,
        config,
        KEY,
        three,
        three,
        _stamps(frozenset({"c1"})),
        rebuild_changed=True,
    )
    assert extended is not None and extended.rebuilt == 1
    planned = {t.ref.case: t.quota for _, tasks in extended.plan for t in tasks}
    assert planned["c1"] == quota_of["c1"]  # rebuilt with the images it had
    assert sum(planned.values()) == 4 and "c0a" not in planned  # nothing left for c0a
