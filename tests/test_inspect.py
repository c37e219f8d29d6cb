"""``medgrit inspect`` counts what a build would read, and ``medgrit build --no-prefect`` builds
the same tables as the Prefect flow without starting Prefect.

The sources are tiny and written here, so every count is known by hand: an nnU-Net dataset of
three 32x32x8 CT cases (labels 1 ``liver``, 2 ``kidney_left``) and an SA-Med2D-20M release of two
volumes; the bundled demo gives the other kinds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medgrit.adapters.inspect import sample_sizes, spread

TINY_NNUNET = "Dataset903_TinyLiver"
SHAPE = (24, 32)  # SA-Med2D slices: rows, columns


def _nifti(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def write_tiny_nnunet(root: Path) -> Path:
    """case_a: liver (6x6 px) on slices 3-5, left kidney (5x5) on slice 4: three images.
    case_b: liver on slice 2 beside a 2x2 px left kidney (under --min-area 16): one image and a
    ``below_min_area`` reject. case_c: a label map of 7 slices for an image of 8."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    image = (np.arange(32 * 32 * 8) % 200 - 100).reshape(32, 32, 8).astype(np.int16)
    labels = {
        "case_a": np.zeros((32, 32, 8), np.uint8),
        "case_b": np.zeros((32, 32, 8), np.uint8),
        "case_c": np.zeros((32, 32, 7), np.uint8),
    }
    labels["case_a"][4:10, 4:10, 3:6] = 1
    labels["case_a"][20:25, 20:25, 4] = 2
    labels["case_b"][4:10, 4:10, 2] = 1
    labels["case_b"][20:22, 20:22, 2] = 2
    labels["case_c"][4:10, 4:10, 3] = 1
    for case, label in labels.items():
        _nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image)
        _nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "kidney_left": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
        "name": "TinyLiver",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _png(path: Path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return f"{path.parent.name}/{path.name}"


def write_tiny_samed2d(root: Path) -> Path:
    """Two CT volumes of dataset TinyAbd: case01 slices 3 (liver) and 4 (liver, spleen),
    case02 slice 1 (liver, and a spleen mask of another size: ``mask_shape_mismatch``)."""
    grey = ((np.arange(SHAPE[0] * SHAPE[1]) * 7) % 256).astype(np.uint8).reshape(SHAPE)

    def box(y0: int, x0: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        mask[y0 : y0 + 6, x0 : x0 + 6] = 255
        return mask

    slices = {
        "ct_00--TinyAbd--case01--z_0003": [(0, box(2, 2))],
        "ct_00--TinyAbd--case01--z_0004": [(0, box(2, 2)), (1, box(14, 20))],
        "ct_00--TinyAbd--case02--z_0001": [(0, box(2, 2)), (1, box(2, 2, (10, 10)))],
    }
    index = {}
    for stem, masks in slices.items():
        image = _png(root / "images" / f"{stem}.png", grey)
        index[image] = [
            _png(root / "masks" / f"{stem}--{c:04d}_001.png", mask) for c, mask in masks
        ]
    (root / "SAMed2D_v1.json").write_text(json.dumps(index))
    mapping = {"TinyAbd": {"liver": 0, "spleen": 1}}
    (root / "SAMed2D_v1_class_mapping_id.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The two tiny sources, as KIND:PATH."""
    root = tmp_path_factory.mktemp("tiny")
    nnunet = write_tiny_nnunet(root / TINY_NNUNET)
    samed2d = write_tiny_samed2d(root / "SAMed2Dv1")
    return [f"nnunet:{nnunet}", f"samed2d:{samed2d}"]


def _labels(summary: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """(label, written) -> (images, instances)."""
    return {(x["label"], x["written"]): (x["images"], x["instances"]) for x in summary["labels"]}


def _rejects(summary: dict) -> dict[tuple[str, str], int]:
    return {(r["reason"], r["stage"]): r["count"] for r in summary["rejects"]}


def test_samples_are_shared_over_sources_and_spread() -> None:
    assert sample_sizes([5, 5], 20) == [5, 5]  # few cases: all of them
    assert sample_sizes([30, 10], 8) == [6, 2]
    assert sample_sizes([100, 1, 0], 10) == [9, 1, 0]  # the small source is read too
    assert spread(3, 2) == [0, 2]
    assert spread(10, 1) == [5]
    assert spread(4, 4) == [0, 1, 2, 3]


def test_inspect_counts_every_source_kind(medgrit_offline, demo_dir: Path, tiny) -> None:
    # At most 4 slices of a volume: the demo's large volumes are read in a moment.
    result = medgrit_offline("inspect", "demo", *tiny, "--json", "--max-slices-per-case", "4")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["format"] == "medgrit-inspect/1" and found["sampled"] is False
    by_kind: dict[str, list[dict]] = {}
    for source in found["sources"]:
        by_kind.setdefault(source["kind"], []).append(source)
    assert set(by_kind) == {"msd", "nnunet", "totalseg", "dicom", "images", "samed2d"}

    liver = next(s for s in by_kind["nnunet"] if TINY_NNUNET in s["spec"])
    assert liver["datasets"] == ["TinyLiver"]
    assert liver["cases"] == {"listed": 3, "taken": 3, "read": 3, "train": 2, "test": 1}
    assert liver["images"] == {"total": 4, "by_plane": {"axial": 4}, "listed": 12}
    assert liver["modalities"] == [{"modality": "ct", "sequence": None, "cases": 3, "images": 4}]
    assert _labels(liver) == {("liver", "liver"): (4, 4), ("left kidney", "kidney_left"): (1, 1)}
    assert _rejects(liver) == {("below_min_area", "regions"): 1, ("shape_mismatch", "load"): 1}
    shape = next(r for r in liver["rejects"] if r["reason"] == "shape_mismatch")
    assert shape["examples"][0]["source"] == "TinyLiver/case_c.nii.gz"
    assert "(32, 32, 7)" in shape["examples"][0]["detail"]

    (abd,) = by_kind["samed2d"]
    assert abd["datasets"] == ["TinyAbd"]
    assert abd["cases"]["listed"] == 2 and abd["images"]["total"] == 3
    assert _labels(abd) == {("liver", "liver"): (3, 3), ("spleen", "spleen"): (1, 1)}
    assert _rejects(abd) == {("mask_shape_mismatch", "load"): 1}

    demo = [s for s in found["sources"] if s not in (liver, abd)]
    on_disk = {
        "Task900_MNI152BrainMR": len(list(demo_dir.glob("Task900_*/labelsTr/*.nii.gz"))),
        "Dataset901_SyntheticCTPhantom": len(list(demo_dir.glob("Dataset901_*/labelsTr/*"))),
        "Dataset902_SyntheticBraTSStyleMR": len(list(demo_dir.glob("Dataset902_*/imagesTr/*"))),
        "SyntheticTotalSegmentatorPhantom": len(list(demo_dir.glob("SyntheticTotal*/s*/"))),
        "SyntheticChestXrayPhantom": len(list(demo_dir.glob("SyntheticChestX*/*_mask.png"))),
        "SyntheticEndoscopyPhantom": len(list(demo_dir.glob("SyntheticEndo*/masks/*.png"))),
    }
    for source in demo:
        folder = Path(source["spec"].partition(":")[2]).name
        if folder in on_disk:
            assert source["cases"]["listed"] == on_disk[folder], folder
        assert source["cases"]["read"] == source["cases"]["listed"] > 0
        assert source["images"]["total"] > 0, folder
        for label in source["labels"]:
            assert label["images"] <= label["instances"]
    modalities = {m["modality"] for s in demo for m in s["modalities"]}
    assert modalities == {
        "ct",
        "mr",
        "pet",
        "xray",
        "ultrasound",
        "endoscopy",
        "dermoscopy",
        "fundus",
    }
    sequences = {m["sequence"] for s in demo if "BraTS" in s["spec"] for m in s["modalities"]}
    assert sequences == {"FLAIR", "T1", "T1Gd", "T2"}
    ct = next(s for s in demo if "Dataset901" in s["spec"])
    assert ("left kidney", "kidney_left") in _labels(ct)
    # DICOM case folders and file names are never shown: only the build's pseudonyms.
    for source in by_kind["dicom"]:
        shown = json.dumps(source["rejects"])
        assert "case_0" not in shown and ".dcm" not in shown
    total = found["total"]
    assert total["images"]["total"] == sum(s["images"]["total"] for s in found["sources"])
    assert total["cases"]["listed"] == sum(s["cases"]["listed"] for s in found["sources"])


def test_inspect_reads_as_text_samples_and_refuses_like_build(
    medgrit_offline, tiny, tmp_path: Path
) -> None:
    # A folder name with a terminal's escape code and a byte that is not UTF-8.
    folder = tmp_path / os.fsdecode(b"Dataset903_Tiny\x1b[31m\xffLiver")
    shutil.copytree(tiny[0].partition(":")[2], folder)
    result = medgrit_offline("inspect", f"nnunet:{folder}", "--sample", "2")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "\x1b" not in text  # not a terminal: plain text, and names escaped
    assert "Dataset903_Tiny\\x1b[31m\\xffLiver" in text
    assert "counts from 2 of 3 cases" in text.splitlines()[0]
    # The sample is the first and the last case (the middles of two halves): a and c.
    lines = [line.split() for line in text.splitlines()]
    assert ["TinyLiver", "liver", "liver", "3", "3"] in lines
    assert ["TinyLiver", "left", "kidney", "kidney_left", "1", "1"] in lines
    assert any(line[:3] == ["shape_mismatch", "load", "1"] for line in lines)
    assert not any(line and line[0] == "below_min_area" for line in lines)

    missing = medgrit_offline("inspect", "nnunet:/nonexistent/Dataset001_X")
    assert missing.returncode == 2 and missing.stdout == ""
    errors = [line for line in missing.stderr.splitlines() if line.startswith("medgrit: error:")]
    assert errors == [missing.stderr.splitlines()[-1]]  # one line, as build's
    assert "source path does not exist: /nonexistent/Dataset001_X" in errors[0]


def _files(dataset: Path) -> dict[str, str]:
    manifest = json.loads((dataset / "dataset.json").read_text())
    return {rel: sha for shard in manifest["shards"] for rel, sha in shard["files"].items()}


def test_no_prefect_build_is_the_prefect_build_and_what_inspect_said(
    medgrit, cli_env: dict[str, str], tmp_path: Path, tiny
) -> None:
    import pyarrow.parquet as pq

    here, flow = tmp_path / "here", tmp_path / "flow"
    # Without Prefect, in a process that reports whether anything imported it.
    wrapper = (
        "import sys\nfrom medgrit.cli import main\nsys.argv = ['medgrit', *sys.argv[1:]]\n"
        "try:\n    main()\nfinally:\n"
        "    print('prefect imported:', 'prefect' in sys.modules, file=sys.stderr)\n"
    )
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    build = ["build", *tiny, "--cases-per-shard", "3"]  # two shards

    def without() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", wrapper, *build, "--no-prefect", "--out", str(here)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    with ThreadPoolExecutor(3) as pool:
        runs = [
            pool.submit(without),
            pool.submit(medgrit, *build, "--out", str(flow)),
            pool.submit(medgrit, "inspect", *tiny, "--json"),
        ]
        trial, prefect, inspected = (run.result() for run in runs)
    assert trial.returncode == 0, trial.stderr
    assert "prefect imported: False" in trial.stderr
    assert prefect.returncode == 0, prefect.stderr
    assert _files(here) == _files(flow) and len(_files(here)) == 8  # byte for byte
    for rel, sha in _files(here).items():
        assert hashlib.sha256((here / rel).read_bytes()).hexdigest() == sha

    # inspect's counts are the build's rows.
    total = json.loads(inspected.stdout)["total"]
    images = pq.read_table(here / "images").to_pylist()
    regions = pq.read_table(here / "regions").to_pylist()
    rejects = pq.read_table(here / "rejects").to_pylist()
    assert total["images"]["total"] == len(images) == 7
    dataset_of = {row["image_id"]: row["dataset"] for row in images}
    built: dict[tuple[str, str, str], list[str]] = {}
    for row in regions:
        key = (dataset_of[row["image_id"]], row["label"], row["source_label"])
        built.setdefault(key, []).append(row["image_id"])
    assert {
        (x["dataset"], x["label"], x["written"]): (x["images"], x["instances"])
        for x in total["labels"]
    } == {key: (len(set(on)), len(on)) for key, on in built.items()}
    read = [(row["reason"], row["stage"]) for row in rejects if row["stage"] in ("load", "regions")]
    assert _rejects(total) == {key: read.count(key) for key in set(read)}


def test_no_prefect_build_ends_in_the_lines_of_the_flow(monkeypatch, tmp_path: Path, capsys):
    """Each end a build raises becomes the one line and exit code a Prefect build gives."""
    import errno

    import typer

    import medgrit.adapters.build
    from medgrit.adapters.runtime.interrupt import BuildInterrupted
    from medgrit.adapters.store.bookkeeping import DatasetMismatch
    from medgrit.adapters.store.dataset_dir import DatasetBusy
    from medgrit.cli.running import run_flow
    from medgrit.schemas.config import BuildConfig

    out = tmp_path / "ds"
    ends = [
        (DatasetMismatch("ds holds another build"), 2, "ds holds another build"),
        (DatasetBusy("another medgrit writes ds"), 2, "another medgrit writes ds"),
        (BuildInterrupted("stop"), 1, f"the build stopped; run `medgrit resume {out}`"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "no space left on /"),
        (OSError(errno.EIO, "Input/output error", "x.parquet"), 1, "Input/output error (x."),
    ]
    for raised, code, line in ends:

        def run_build(*args: object, raised: Exception = raised, **kwargs: object) -> dict:
            raise raised

        monkeypatch.setattr(medgrit.adapters.build, "run_build", run_build)
        with pytest.raises(typer.Exit) as ended:
            run_flow(BuildConfig(out=str(out)), prefect=False)
        assert ended.value.exit_code == code
        err = capsys.readouterr().err
        assert err.startswith("medgrit: error: ") and line in err and err.count("\n") == 1
