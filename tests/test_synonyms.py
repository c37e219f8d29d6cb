"""Synonyms a label file gives its labels: carried with the cases into the build's vocabulary,
recorded in ``dataset.json`` with the version of the packaged words, and read back by
``validate``; a dataset keeps the vocabulary each of its generations was built with."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from catalogue import write_ct_source

from medgrit.adapters.build import run_build
from medgrit.adapters.planning import PreparedBuild
from medgrit.adapters.runtime.mappers import LoopMapper
from medgrit.adapters.store.bookkeeping import load_dataset, plan_manifest
from medgrit.adapters.store.validate import validate_dataset, vocabulary_note
from medgrit.core.cases import Case, Vocabulary
from medgrit.core.lexicon import VOCABULARY_VERSION
from medgrit.core.pipeline import CaseTask, build_vocabulary
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.manifest import Manifest
from medgrit.schemas.tables import TABLES

SYNONYMS = {"liver": ["hepar", "Hepatic  Parenchyma"], "spleen": ["lien"]}


def _task(case: str, labels: tuple[str, ...], synonyms: tuple[tuple[str, str], ...]) -> CaseTask:
    ref = Case(
        source="nnunet:/data/D",
        dataset="D",
        case=case,
        modality="ct",
        labels=tuple(enumerate(labels, 1)),
        synonyms=synonyms,
    )
    return CaseTask(ref, f"id-{case}", "train")


def _source(root: Path, cases: int, synonyms: dict | None = None) -> Path:
    source = write_ct_source(root, cases=cases, shape=(48, 40, 2))
    if synonyms is not None:
        meta = json.loads((source / "dataset.json").read_text())
        (source / "dataset.json").write_text(json.dumps({**meta, "synonyms": synonyms}))
    return source


def _build(source: Path, out: Path, key: Path) -> Manifest:
    config = BuildConfig(out=str(out), sources=[f"nnunet:{source}"], key_file=str(key))
    run_build(config, LoopMapper())
    return load_dataset(out)


def test_the_vocabulary_holds_every_cases_synonyms_sorted_whatever_the_plan() -> None:
    tasks = [
        _task("a", ("liver", "spleen"), (("lien", "spleen"), ("hepar", "liver"))),
        _task("b", ("liver", "kidney"), (("hepar", "liver"), ("renal unit", "kidney"))),
        _task("c", ("liver",), ()),
    ]
    vocabulary = build_vocabulary(tasks)
    assert vocabulary.names == ("kidney", "liver", "spleen")
    assert vocabulary.synonyms == (("hepar", "liver"), ("lien", "spleen"), ("renal unit", "kidney"))
    assert build_vocabulary(tasks[::-1]) == build_vocabulary([tasks[2], tasks[0], tasks[1]])
    assert build_vocabulary(tasks[::-1]) == vocabulary
    # The lexicon of the build reads a synonym as its label.
    lexicon = vocabulary.lexicon()
    assert lexicon.canonical(("hepar",)) == lexicon.canonical(("liver",)) is not None
    assert Vocabulary(vocabulary.names).lexicon().canonical(("hepar",)) is None


def test_a_plan_records_each_generations_vocabulary_and_reads_it_back(tmp_path: Path) -> None:
    first = Vocabulary(("liver", "spleen"), (("hepar", "liver"),))
    grown = Vocabulary(("liver", "spleen"), (("hepar", "liver"), ("lien", "spleen")))
    plan = [("00000", [_task("a", ("liver",), ())]), ("00001", [_task("b", ("spleen",), ())])]
    config = BuildConfig(out=str(tmp_path))
    written = plan_manifest(config, [], plan, None, first, {"00001": (1, grown)}).to_json()

    assert written["synonyms"] == {"liver": ["hepar"]}
    assert written["vocabulary_version"] == VOCABULARY_VERSION
    assert "synonyms" not in written["shards"][0]  # read with the top level's
    assert written["shards"][1]["synonyms"] == {"liver": ["hepar"], "spleen": ["lien"]}
    manifest = Manifest.model_validate(json.loads(json.dumps(written)))
    assert Vocabulary.recorded(manifest.vocabulary or [], manifest.synonyms) == first
    appended = manifest.shards[1]
    assert Vocabulary.recorded(appended.vocabulary or [], appended.synonyms) == grown


def test_a_recorded_generation_keeps_its_synonyms_and_a_new_one_takes_the_label_files() -> None:
    now = (("hepar", "liver"),)  # what the label file says today
    plan = [
        ("00000", [_task("a", ("liver",), now)]),
        ("00001", [_task("b", ("liver", "spleen"), (*now, ("lien", "spleen")))]),
    ]
    recorded = Vocabulary(("liver",))  # generation 0 was built before the synonyms were given
    prepared = PreparedBuild([], plan, {"00001": 1}, recorded_vocabularies={0: recorded})
    today = Vocabulary(("liver", "spleen"), (("hepar", "liver"), ("lien", "spleen")))
    assert prepared.vocabularies == {0: recorded, 1: today}
    assert PreparedBuild([], plan).vocabularies == {0: today}  # a fresh plan


def _name_by_synonym(out: Path, shard: str = "00000") -> int:
    """Write the first MIA answer of ``shard`` with the liver named "hepar", recording the new
    part's sha256; returns the row of its conversation."""
    rel = f"conversations/part-{shard}.parquet"
    rows = pq.read_table(out / rel).to_pylist()
    row, turn = next(
        (n, t) for n, r in enumerate(rows) for t in r["qa"] if "<ref>liver</ref>" in t["answer"]
    )
    assert turn["task"] == "MIA"
    turn["answer"] = turn["answer"].replace("<ref>liver</ref>", "<ref>hepar</ref>")
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLES["conversations"]), out / rel)
    manifest = json.loads((out / "dataset.json").read_text())
    entry = next(s for s in manifest["shards"] if rel in s["files"])
    entry["files"][rel] = hashlib.sha256((out / rel).read_bytes()).hexdigest()
    (out / "dataset.json").write_text(json.dumps(manifest))
    return row


def test_validate_reads_the_turns_with_the_recorded_synonyms(
    tmp_path: Path, medgrit_offline
) -> None:
    source = _source(tmp_path / "Dataset070_Synonyms", cases=2, synonyms=SYNONYMS)
    out = tmp_path / "ds"
    manifest = _build(source, out, tmp_path / "key")
    assert manifest.vocabulary == ["liver", "spleen"]
    assert manifest.synonyms == {"liver": ["hepar", "hepatic parenchyma"], "spleen": ["lien"]}
    assert manifest.vocabulary_version == VOCABULARY_VERSION
    row = _name_by_synonym(out)
    checked = medgrit_offline("validate", str(out))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert vocabulary_note(load_dataset(out)) is None

    recorded = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**recorded, "synonyms": {}}))
    checked = medgrit_offline("validate", str(out))
    assert checked.returncode == 1
    (line,) = checked.stdout.splitlines()
    assert f"row {row} " in line and "turn 1 (MIA): invented_structure" in line and "hepar" in line


def test_a_build_keeps_the_synonyms_it_recorded_and_appends_with_the_label_files(
    tmp_path: Path,
) -> None:
    source = _source(tmp_path / "Dataset071_Later", cases=2)
    out, key = tmp_path / "ds", tmp_path / "key"
    before = _build(source, out, key)
    assert before.synonyms == {} and [s.status for s in before.shards] == ["done"]

    # Synonyms given since: the shards built stay read as they were built.
    meta = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**meta, "synonyms": SYNONYMS}))
    again = _build(source, out, key)
    assert again.synonyms == {} and again.shards[0].files == before.shards[0].files

    # New cases: their shard is read with the names and synonyms the label file gives now.
    older = {**json.loads((out / "dataset.json").read_text()), "vocabulary_version": 1}
    (out / "dataset.json").write_text(json.dumps(older))  # as an older medgrit built it
    spare = write_ct_source(tmp_path / "spare", cases=3, shape=(48, 40, 2))
    for name in ("imagesTr/case002_0000.nii.gz", "labelsTr/case002.nii.gz"):
        shutil.copy(spare / name, source / name)
    grown = _build(source, out, key)
    assert grown.synonyms == {}
    assert grown.vocabulary_version == 1  # the version its first shard was read with
    appended = grown.shards[-1]
    assert appended.generation == 1 and appended.status == "done"
    assert appended.synonyms == {"liver": ["hepar", "hepatic parenchyma"], "spleen": ["lien"]}
    assert validate_dataset(out) == []
    # Each shard is read with the synonyms of its generation.
    _name_by_synonym(out, appended.id)
    assert validate_dataset(out) == []
    _name_by_synonym(out, grown.shards[0].id)
    (problem,) = validate_dataset(out)
    assert f"part-{grown.shards[0].id}.parquet" in problem and "invented_structure" in problem


@pytest.mark.parametrize(
    ("recorded", "said"),
    [
        (VOCABULARY_VERSION, None),
        (VOCABULARY_VERSION - 1, f"records vocabulary version {VOCABULARY_VERSION - 1};"),
        (None, "records no vocabulary version"),
    ],
)
def test_validate_says_which_vocabulary_version_a_dataset_records(
    tmp_path: Path, recorded: int | None, said: str | None
) -> None:
    written = plan_manifest(BuildConfig(out=str(tmp_path)), [], [], None).to_json()
    written.pop("vocabulary_version")
    if recorded is not None:
        written["vocabulary_version"] = recorded
    note = vocabulary_note(Manifest.model_validate(written))
    if said is None:
        assert note is None
    else:
        assert note is not None and said in note and "\n" not in note
        assert note.endswith(f"read with version {VOCABULARY_VERSION}")


def test_a_bad_synonyms_entry_exits_2_before_anything_is_built(
    tmp_path: Path, medgrit_offline
) -> None:
    source = _source(tmp_path / "Dataset072_Bad", cases=1, synonyms={"kidney": ["renal unit"]})
    out = tmp_path / "ds"
    result = medgrit_offline("build", f"nnunet:{source}", "--out", str(out))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "dataset.json" in line and "'kidney', which is no label of the file" in line
    assert not out.exists()
