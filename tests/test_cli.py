"""End-to-end: the ``medgrit`` CLI in a subprocess against a real Prefect server.

Outputs are re-read with pyarrow and checked against the data contract of DESIGN.md.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from catalogue import EIGHT_MODALITIES

from medgrit.adapters.store.png import decode_png
from medgrit.adapters.synthetic.demo import CT_LABELS, make_ct_phantom
from medgrit.core.regions import to_bbox_1000
from medgrit.core.text import parse_boxes
from medgrit.schemas.tables import TABLES

pytestmark = pytest.mark.slow


def _read(out: Path, table: str):
    parts = sorted((out / table).glob("part-*.parquet"))
    assert parts, f"no {table} parts"
    for part in parts:
        assert pq.read_schema(part).equals(TABLES[table], check_metadata=False), part
    return [row for part in parts for row in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def demo_build(medgrit, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("builds") / "demo"
    result = medgrit("build", "--out", str(out), "--max-images", "60", "--cases-per-shard", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_demo_build_meets_the_data_contract(demo_build) -> None:
    out, result = demo_build
    assert "images: 60" in result.stdout
    assert f"dataset written to {out.resolve()}" in result.stdout
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["schema_version"] == 3 and manifest["status"] == "complete"
    assert manifest["config"]["max_images"] == 60
    images = _read(out, "images")
    regions = _read(out, "regions")
    conversations = _read(out, "conversations")
    assert len(images) == 60
    assert {i["modality"] for i in images} == EIGHT_MODALITIES
    by_image = {}
    for image in images:
        pixels = decode_png(image["image"]["bytes"])
        assert pixels.shape[:2] == (image["height"], image["width"])
        assert image["image"]["path"] == f"{image['image_id']}.png"
    for r in regions:
        image = next(i for i in images if i["image_id"] == r["image_id"])
        w, h = image["width"], image["height"]
        x0, y0, x1, y1 = r["bbox"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert r["bbox_1000"] == to_bbox_1000(np.array(r["bbox"]), w, h).tolist()
        by_image.setdefault(r["image_id"], set()).add(tuple(r["bbox_1000"]))
    tasks = Counter()
    for conv in conversations:
        assert conv["qa"][0]["task"] == "MIA"
        for turn in conv["qa"]:
            tasks[turn["task"]] += 1
            boxes, malformed = parse_boxes(turn["answer"])
            assert malformed == 0
            assert set(boxes) <= by_image[conv["image_id"]]
    assert set(tasks) == {"VG", "ROC", "RC", "MIA"}
    # Every sha256 in the manifest matches the file on disk.
    import hashlib

    for shard in manifest["shards"]:
        for rel, digest in shard["files"].items():
            assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest


def test_split_is_by_case(demo_build) -> None:
    out, _ = demo_build
    images = _read(out, "images")
    splits: dict[str, set] = {}
    for image in images:
        splits.setdefault(image["case_id"], set()).add(image["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "test"}


def test_left_kidney_lies_on_the_image_right(demo_build) -> None:
    out, _ = demo_build
    widths = {i["image_id"]: i["width"] for i in _read(out, "images")}
    sides = [
        (r["label"], (r["bbox"][0] + r["bbox"][2]) / 2 / widths[r["image_id"]])
        for r in _read(out, "regions")
        if r["label"].endswith("kidney")
    ]
    assert sides
    assert all(x > 0.5 for label, x in sides if label == "left kidney")
    assert all(x < 0.5 for label, x in sides if label == "right kidney")


def test_validate_accepts_a_build(demo_build, medgrit) -> None:
    out, _ = demo_build
    result = medgrit("validate", str(out))
    assert result.returncode == 0, result.stdout
    assert "valid" in result.stdout


def test_same_config_gives_identical_tables(demo_build, medgrit, tmp_path: Path) -> None:
    out, _ = demo_build
    again = tmp_path / "again"
    result = medgrit("build", "--out", str(again), "--max-images", "60", "--cases-per-shard", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    for table in TABLES:
        first = sorted(p.name for p in (out / table).glob("*.parquet"))
        assert first == sorted(p.name for p in (again / table).glob("*.parquet"))
        for name in first:
            assert pq.read_table(out / table / name).equals(pq.read_table(again / table / name))
    other_seed = tmp_path / "seed"
    result = medgrit(
        "build",
        "--out",
        str(other_seed),
        "--max-images",
        "60",
        "--cases-per-shard",
        "3",
        "--seed",
        "7",
    )
    assert result.returncode == 0
    assert _read(other_seed, "images") == _read(out, "images")
    assert _read(other_seed, "conversations") != _read(out, "conversations")


def test_resume_rebuilds_only_missing_shards(demo_build, medgrit, tmp_path: Path) -> None:
    out, _ = demo_build
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "dataset.json").read_text())
    lost = manifest["shards"][1]
    for rel in lost["files"]:
        (copy / rel).unlink()
    lost["status"] = "failed"
    stale = copy / "images" / f".part-{lost['id']}.parquet.tmp-12345"
    stale.write_bytes(b"half a file")
    kept = manifest["shards"][0]["files"]
    mtimes = {rel: (copy / rel).stat().st_mtime_ns for rel in kept}
    (copy / "dataset.json").write_text(json.dumps(manifest))

    status = medgrit("status", str(copy))
    assert "1 failed" in status.stdout
    result = medgrit("resume", str(copy))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{len(manifest['shards'])} shards planned, 1 to build" in result.stderr
    assert {rel: (copy / rel).stat().st_mtime_ns for rel in kept} == mtimes
    assert not stale.exists()
    for table in TABLES:
        assert _read(copy, table) == _read(out, table)


def _write_case(root: Path, case: str, image: np.ndarray, labels: np.ndarray) -> None:
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"{case}_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / f"{case}.nii.gz")


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An nnU-Net dataset with two good cases and one of each record-level problem."""
    root = tmp_path_factory.mktemp("broken") / "Dataset050_Broken"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": CT_LABELS, "file_ending": ".nii.gz"})
    )
    for i, case in enumerate(["good_a", "good_b", "truncated", "mismatch", "empty"]):
        image, lab = make_ct_phantom(seed=i, shape=(96, 96, 12))
        if case == "mismatch":
            lab = lab[:, :, :10]
        if case == "empty":
            lab = np.zeros_like(lab)
        _write_case(root, case, image, lab)
    path = root / "imagesTr" / "truncated_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:2000])
    # A label file whose image is missing.
    shutil.copy(root / "labelsTr" / "good_a.nii.gz", root / "labelsTr" / "orphan.nii.gz")
    return root


def test_bad_records_become_rejects_and_the_build_completes(
    broken_dataset: Path, medgrit, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = medgrit("build", f"nnunet:{broken_dataset}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rejects = _read(out, "rejects")
    load = {r["reason"] for r in rejects if r["stage"] == "load"}
    assert load == {"nifti_unreadable", "shape_mismatch", "empty_label_map", "file_missing"}
    assert all(r["detail"] and r["source"] for r in rejects)
    images = _read(out, "images")
    assert len({i["case_id"] for i in images}) == 2
    assert "nifti_unreadable" in result.stdout  # the summary lists rejects by reason


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "nnunet:/no/such/dataset"], "source path does not exist: /no/such/dataset"),
        (["build", "zip:/data"], "unknown source kind 'zip'"),
        (["build", "demo", "--plane", "oblique"], "plane"),
        (["build", "demo", "--ct-window", "40"], "--ct-window takes two numbers"),
        (["build", "demo", "--max-images", "0"], "max-images"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    medgrit_offline, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "never"
    result = medgrit_offline(*args, "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def test_malformed_dataset_json_exits_2_and_writes_nothing(medgrit_offline, tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Bad"
    (root / "labelsTr").mkdir(parents=True)
    (root / "dataset.json").write_text('{"labels": {"liver": 1}, "channel_names": ')
    out = tmp_path / "out"
    result = medgrit_offline("build", f"nnunet:{root}", "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "malformed dataset.json" in result.stderr
    assert not out.exists()


def test_existing_dataset_is_not_overwritten_by_accident(demo_build, medgrit_offline) -> None:
    out, _ = demo_build
    before = (out / "dataset.json").read_bytes()
    result = medgrit_offline("build", "--out", str(out))  # other settings than it was built with
    assert result.returncode == 2 and "settings differ" in result.stderr
    assert "max-images" in result.stderr and "--overwrite" in result.stderr
    assert result.stderr.count("\n") == 1
    assert (out / "dataset.json").read_bytes() == before


def test_every_command_is_documented(medgrit_offline) -> None:
    result = medgrit_offline("--help")
    assert result.returncode == 0
    from medgrit.cli import app

    names = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    assert {"build", "resume", "status", "validate", "serve"} <= set(names)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for command in names:
        assert command in result.stdout
        sub = medgrit_offline(command, "--help")
        assert sub.returncode == 0 and "Usage" in sub.stdout
        assert f"medgrit {command}" in readme, command
    assert "--max-images" in medgrit_offline("build", "--help").stdout


def test_aal_atlas_build_names_structures(aal_nnunet: Path, medgrit, tmp_path: Path) -> None:
    out = tmp_path / "aal"
    result = medgrit(
        "build",
        f"nnunet:{aal_nnunet}",
        "--out",
        str(out),
        "--max-images",
        "8",
        "--plane",
        "coronal",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    regions = _read(out, "regions")
    labels = {r["label"] for r in regions}
    assert {"left precentral", "right precentral"} <= labels
    assert {r["laterality"] for r in regions if r["label"] == "left precentral"} == {"left"}
    assert all(i["plane"] == "coronal" for i in _read(out, "images"))


def test_build_runs_on_an_ephemeral_prefect_server(demo_dir: Path, tmp_path: Path) -> None:
    """With no PREFECT_API_URL the CLI starts Prefect's ephemeral server on a fresh database."""
    import os

    from conftest import run_cli

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MEDGRIT_DEMO_DIR=str(demo_dir), PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = tmp_path / "out"
    # (several shards: the build starts its worker processes while the server starts)
    args = ["--max-images", "5", "--images-per-shard", "2"]
    result = run_cli("build", "--out", str(out), *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_read(out, "images")) == 5
    assert "shards run on 2 worker processes" in result.stderr
    # medgrit started the server when its checks passed, not Prefect at the flow's start
    assert "Starting temporary server" not in result.stderr
    # The flow ran on the temporary server of that home: its database records the run.
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:
        states = db.execute("SELECT state_type FROM flow_run").fetchall()
    assert states == [("COMPLETED",)]
    assert "View at" not in result.stdout + result.stderr  # the server serves no UI
    assert not _processes_on(tmp_path / "prefect-home")  # the server ended with the command


def _processes_on(home: Path) -> list[str]:
    """The processes whose environment names ``home`` as PREFECT_HOME."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PREFECT_HOME={home}".encode() in environ:
            found.append(entry.name)
    return found


def test_a_build_refused_after_the_server_started_leaves_no_server(
    demo_dir: Path, tmp_path: Path
) -> None:
    """The temporary server starts once the checks of sources and --out pass; a build refused
    after that (its dataset held by another writer) stops it before it ends."""
    import os

    from conftest import run_cli

    from medgrit.adapters.store.dataset_dir import hold_dataset

    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(MEDGRIT_DEMO_DIR=str(demo_dir), PREFECT_HOME=str(home))
    out = tmp_path / "out"
    out.mkdir()
    with hold_dataset(out):
        result = run_cli("build", "--out", str(out), "--max-images", "5", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("medgrit:")]
    assert len(lines) == 1 and "medgrit: error: " in lines[0], result.stderr[-3000:]
    assert not _processes_on(home)
    assert not (out / "dataset.json").exists()


def test_demo_data_writes_every_layout(medgrit_offline, tmp_path: Path) -> None:
    out = tmp_path / "demo-sources"
    result = medgrit_offline("demo-data", str(out))
    assert result.returncode == 0, result.stderr
    assert "medgrit build" in result.stdout
    expected = {
        "Task900_MNI152BrainMR": "dataset.json",
        "Dataset901_SyntheticCTPhantom": "dataset.json",
        "SyntheticPETPhantom": "case_000/seg.dcm",
        "SyntheticChestXrayPhantom": "labels.json",
        "SyntheticUltrasoundPhantom": "labels.json",
        "SyntheticEndoscopyPhantom": "labels.json",
        "SyntheticDermoscopyPhantom": "labels.json",
        "SyntheticFundusPhantom": "labels.json",
        "RetinaPhotograph": "labels.json",
    }
    for folder, marker in expected.items():
        assert (out / folder / marker).is_file(), folder
        assert str(out / folder) in result.stdout
    again = medgrit_offline("demo-data", str(out))
    assert again.returncode == 0
