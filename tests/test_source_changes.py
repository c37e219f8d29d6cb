"""A dataset is built from one label map per source, forever: a build, resume or scheduled append
into a dataset whose sources changed since (a label map, a case's files) is refused in one line,
or, with ``--rebuild-changed``, rebuilds what changed as new shards and retires the old ones; a
label id never means two things, and ``validate`` checks that it does not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from catalogue import tree_digest, write_ct_source
from PIL import Image

from medgrit.adapters.build import run_build
from medgrit.adapters.runtime.mappers import LoopMapper
from medgrit.adapters.store.bookkeeping import DatasetMismatch
from medgrit.adapters.store.validate import read_table, validate_dataset
from medgrit.schemas.config import BuildConfig


def _build(source: Path, out: Path, append: bool = True, **settings: object) -> dict:
    config = BuildConfig(sources=[f"nnunet:{source}"], out=str(out), **settings)
    return run_build(config, LoopMapper(), append=append)


def _swap_liver_and_spleen(source: Path) -> None:
    meta = json.loads((source / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "spleen": 1, "liver": 2}
    (source / "dataset.json").write_text(json.dumps(meta))


def _add_case(source: Path, spare: Path, name: str) -> None:
    shutil.copy(
        spare / "imagesTr" / "case000_0000.nii.gz", source / "imagesTr" / f"{name}_0000.nii.gz"
    )
    shutil.copy(spare / "labelsTr" / "case000.nii.gz", source / "labelsTr" / f"{name}.nii.gz")


def _relabel_in_place(label_file: Path) -> None:
    """Swap the values 1 and 2 of a label map, keeping its size, and move its time on."""
    image = nib.load(label_file)
    data = np.asarray(image.dataobj)
    swapped = np.where(data == 1, 2, np.where(data == 2, 1, data)).astype(data.dtype)
    nib.save(nib.Nifti1Image(swapped, image.affine, image.header), label_file)
    later = label_file.stat().st_mtime + 10
    os.utime(label_file, (later, later))


def _parts(out: Path) -> dict[str, str]:
    tables = ("images", "regions", "conversations", "rejects")
    return {k: v for k, v in tree_digest(out).items() if k.split("/")[0] in tables}


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(source, dataset, a spare source): a 3-case CT source built into a dataset."""
    source = write_ct_source(tmp_path / "Dataset090_Abdomen", cases=3)
    spare = write_ct_source(tmp_path / "spare", cases=1)
    out = tmp_path / "ds"
    _build(source, out, images_per_shard=6)
    return source, out, spare


def test_a_swapped_label_map_is_refused_naming_the_ids(built, medgrit_offline) -> None:
    source, out, spare = built
    before = tree_digest(out)
    _swap_liver_and_spleen(source)
    _add_case(source, spare, "case003")
    for command in (("build", f"nnunet:{source}", "--images-per-shard", "6", "--out"), ("resume",)):
        result = medgrit_offline(*command, str(out))
        assert result.returncode == 2, result.stderr
        line = _one_line(result)
        assert "label map of" in line and "1: 'liver' then, 'spleen' now" in line, line
        assert "2: 'spleen' then, 'liver' now" in line and "--rebuild-changed" in line
    assert tree_digest(out) == before  # nothing was changed


def test_a_resume_after_the_label_map_changed_is_refused(built) -> None:
    source, out, _ = built
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["shards"][-1]["status"] = "pending"  # as a build killed before its last shard
    (out / "dataset.json").write_text(json.dumps(manifest))
    _swap_liver_and_spleen(source)
    with pytest.raises(DatasetMismatch, match="1: 'liver' then, 'spleen' now"):
        _build(source, out, images_per_shard=6, append=False)


def test_a_mask_relabelled_in_place_is_refused(built, medgrit_offline) -> None:
    source, out, _ = built
    before = tree_digest(out)
    _relabel_in_place(source / "labelsTr" / "case001.nii.gz")
    result = medgrit_offline(
        "build", f"nnunet:{source}", "--images-per-shard", "6", "--out", str(out)
    )
    assert result.returncode == 2, result.stderr
    line = _one_line(result)
    assert "1 of its cases changed" in line and "case001: its files or labels changed" in line
    assert tree_digest(out) == before


def test_verified_content_tells_a_touched_file_from_a_changed_one(tmp_path: Path) -> None:
    source = write_ct_source(tmp_path / "Dataset091_Verified", cases=2)
    out = tmp_path / "ds"
    _build(source, out, verify_sources=True)
    label = source / "labelsTr" / "case001.nii.gz"
    later = label.stat().st_mtime + 10
    os.utime(label, (later, later))  # the same bytes, another time (a copy without -p)
    with pytest.raises(DatasetMismatch, match="case001: its files or labels changed"):
        _build(source, out)
    settled = _parts(out)
    _build(source, out, verify_sources=True)  # the bytes decide: nothing changed
    assert _parts(out) == settled
    _relabel_in_place(label)
    with pytest.raises(DatasetMismatch, match="case001: its files or labels changed"):
        _build(source, out, verify_sources=True)


def _rows(out: Path, table: str, key: str) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k != "split"} for r in read_table(out, table)]
    return sorted(rows, key=lambda r: r[key])


def test_rebuild_changed_retires_the_old_shards_and_builds_them_again(
    built, tmp_path, medgrit_offline
) -> None:
    source, out, spare = built
    before = json.loads((out / "dataset.json").read_text())
    _swap_liver_and_spleen(source)
    _add_case(source, spare, "case003")

    manifest = _build(source, out, images_per_shard=6, rebuild_changed=True)

    old_ids = [s["id"] for s in before["shards"]]
    assert [r["id"] for r in manifest["retired"]] == old_ids
    assert {r["reason"] for r in manifest["retired"]} == {"its source's label map changed"}
    ids = [s["id"] for s in manifest["shards"]]
    assert not set(ids) & set(old_ids) and all(s.get("generation") == 1 for s in manifest["shards"])
    assert validate_dataset(out) == []
    listed = {p.name for p in (out / "images").iterdir()}
    assert listed == {f"part-{i}.parquet" for i in ids}  # the retired parts are gone
    names = {(r["label_id"], r["label"]) for r in read_table(out, "regions")}
    assert names == {(1, "spleen"), (2, "liver")}
    splits = {c["case_id"]: c["split"] for s in before["shards"] for c in s["cases"]}
    for shard in manifest["shards"]:
        for case in shard["cases"]:
            assert splits.get(case["case_id"], case["split"]) == case["split"]  # kept

    status = medgrit_offline("status", str(out))
    assert status.returncode == 0 and f"retired: {len(old_ids)} shard(s) (00000" in status.stdout

    # What it holds is what a fresh build of the changed source gives.
    fresh = tmp_path / "fresh"
    _build(source, fresh, images_per_shard=6)
    assert _rows(out, "regions", "region_id") == _rows(fresh, "regions", "region_id")
    assert _rows(out, "conversations", "conversation_id") == _rows(
        fresh, "conversations", "conversation_id"
    )

    # Built again: nothing is left to rebuild, and no table part changes.
    settled = _parts(out)
    again = _build(source, out, images_per_shard=6, rebuild_changed=True)
    assert _parts(out) == settled and again["retired"] == manifest["retired"]


def test_validate_finds_a_label_id_with_two_names(built) -> None:
    """A dataset appended to under another label map (as a build that recorded neither label
    maps nor fingerprints allowed) says so in validate."""
    source, out, spare = built
    manifest = json.loads((out / "dataset.json").read_text())
    for entry in manifest["sources"]:
        for key in ("datasets", "label_maps", "label_map_sha256", "label_words"):
            entry.pop(key)
    for shard in manifest["shards"]:
        for case in shard["cases"]:
            case.pop("fingerprint")
    (out / "dataset.json").write_text(json.dumps(manifest))
    _swap_liver_and_spleen(source)
    _add_case(source, spare, "case003")
    _build(source, out, images_per_shard=6)
    problems = validate_dataset(out)
    assert any(
        "label id 1 of dataset Dataset090_Abdomen has 2 names: 'liver'" in p and "'spleen'" in p
        for p in problems
    ), problems


def test_a_dicom_seg_dataset_written_before_label_maps_were_recorded_resumes(
    tmp_path: Path,
) -> None:
    """Two SEGs number their segments each their own way (1 is the liver in one, the spleen in
    the other): a dataset of them, whose manifest predates label maps and fingerprints, is
    resumed and validates."""
    from medgrit.adapters.synthetic.dicom_writer import write_seg, write_series

    root = tmp_path / "Segs"
    for n, names in enumerate(({1: "liver", 2: "spleen"}, {1: "spleen", 2: "liver"})):
        image = np.random.default_rng(n).normal(40, 80, (40, 36, 3)).astype(np.float32)
        labels = np.zeros((40, 36, 3), np.uint8)
        labels[4:18, 5:20, :] = 1
        labels[22:36, 14:30, :] = 2
        series = write_series(image, (1.0, 1.0, 3.0), root / f"s{n}", seed=f"s{n}")
        write_seg(labels, names, series, root / f"s{n}_seg.dcm", seed=f"seg{n}")
    out = tmp_path / "ds"
    config = BuildConfig(sources=[f"dicom:{root}"], out=str(out), cases_per_shard=1)
    run_build(config, LoopMapper())
    manifest = json.loads((out / "dataset.json").read_text())
    for entry in manifest["sources"]:
        for key in ("label_maps", "label_map_sha256", "label_words"):
            entry.pop(key)
    for shard in manifest["shards"]:
        for case in shard["cases"]:
            case.pop("fingerprint")
            case.pop("labels_per_case")
    manifest["shards"][-1]["status"] = "pending"  # as a build killed before its last shard
    (out / "dataset.json").write_text(json.dumps(manifest))

    finished = run_build(config, LoopMapper(), append=False)

    assert finished["status"] == "complete" and validate_dataset(out) == []
    names = {(r["label_id"], r["label"]) for r in read_table(out, "regions")}
    assert names == {(1, "liver"), (2, "spleen"), (1, "spleen"), (2, "liver")}


def test_files_that_cannot_be_read_now_are_refused_even_when_rebuilding(built, tmp_path) -> None:
    """An unmounted folder is not a change to rebuild from: nothing finished is thrown away."""
    source, out, _ = built
    before = _parts(out)
    away = tmp_path / "unmounted"
    (source / "imagesTr").rename(away)
    with pytest.raises(DatasetMismatch, match="3 of its cases cannot be read now"):
        _build(source, out, images_per_shard=6, rebuild_changed=True)
    assert _parts(out) == before
    away.rename(source / "imagesTr")

    folder = tmp_path / "polyps"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for stem in ("a", "b"):
        pixels = np.random.default_rng(len(stem)).integers(0, 255, (32, 32, 3), np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{stem}.png")
        Image.fromarray(np.eye(32, dtype=np.uint8)).save(folder / "masks" / f"{stem}.png")
    meta = {"modality": "endoscopy", "labels": {"1": "polyp"}, "masks": "label_map"}
    (folder / "labels.json").write_text(json.dumps(meta))
    polyps = tmp_path / "polyp-ds"
    config = BuildConfig(sources=[f"images:{folder}"], out=str(polyps), rebuild_changed=True)
    run_build(config, LoopMapper())
    kept = _parts(polyps)
    (folder / "masks").rename(tmp_path / "masks-elsewhere")
    with pytest.raises(DatasetMismatch, match="a: 2 files then, 1 now"):
        run_build(config, LoopMapper())
    assert _parts(polyps) == kept


def test_verify_sources_guards_a_dataset_first_built_without_it(built) -> None:
    source, out, _ = built
    label = source / "labelsTr" / "case000.nii.gz"
    _build(source, out, images_per_shard=6, verify_sources=True)  # records the bytes now
    manifest = json.loads((out / "dataset.json").read_text())
    assert all("content_sha256" in c for s in manifest["shards"] for c in s["cases"])
    info = label.stat()
    _relabel_in_place(label)
    with label.open("r+b") as handle:  # the same size as before, and the same time
        handle.truncate(info.st_size)
    os.utime(label, ns=(info.st_atime_ns, info.st_mtime_ns))
    _build(source, out, images_per_shard=6)  # sizes and times alone cannot tell
    with pytest.raises(DatasetMismatch, match="case000: its files or labels changed"):
        _build(source, out, images_per_shard=6, verify_sources=True)


@pytest.mark.parametrize(
    "edit",
    [
        {"retired": [{"id": "abc"}]},
        {"retired": [{"id": "00007", "generation": "x"}]},
        {"sources": 5},
        {"sources": [{"spec": "nnunet:/x", "label_maps": {"D": "x"}}]},
    ],
    ids=["retired-id", "retired-generation", "sources", "label-maps"],
)
def test_a_hand_edited_manifest_is_one_line(built, medgrit_offline, edit: dict) -> None:
    source, out, _ = built
    manifest = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**manifest, **edit}))
    before = tree_digest(out)
    for command in (("validate", str(out)), ("build", f"nnunet:{source}", "--out", str(out))):
        result = medgrit_offline(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "dataset.json" in _one_line(result)
    assert tree_digest(out) == before
