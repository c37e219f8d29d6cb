"""Nothing is ever lost: the ``medgrit`` CLI in subprocesses, as a user would run it.

Sources are never touched, one process writes a dataset at a time, an overwrite swaps in only a
complete dataset, NaN voxels never blacken images, names may hold any bytes, user errors are one
line, a full disk and SIGTERM stop cleanly, and every interrupted build resumes to exactly the
tables of an uninterrupted one. Full disks and read-only folders are real tmpfs mounts in a
private mount namespace (``unshare``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from catalogue import tree_digest, write_ct_source
from conftest import run_cli

from medgrit.schemas.tables import TABLES
from medgrit_testing.openai_server import ServerConfig, serve

pytestmark = pytest.mark.slow


def _read(part: Path) -> list[dict]:
    with part.open("rb") as handle:  # pyarrow's own paths must be UTF-8; these may not be
        return pq.read_table(handle).to_pylist()


def _tables(out: Path) -> dict[str, list[dict]]:
    return {
        t: [r for p in sorted((out / t).glob("part-*.parquet")) for r in _read(p)] for t in TABLES
    }


def _contents(out: Path) -> dict[str, str]:
    """A dataset's files and their sha256, less the lock files (they name the last writer)."""
    return {k: v for k, v in tree_digest(out).items() if not k.endswith(".lock")}


def _copy_of(reference: Path, out: Path) -> tuple[Path, dict]:
    """A copy of the reference dataset at ``out``, and its contents to compare with later."""
    shutil.copytree(reference, out)
    return out, _contents(out)


def _one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("medgrit:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def ct_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct_source(tmp_path_factory.mktemp("src") / "Dataset080_CT", cases=6)


@pytest.fixture(scope="module")
def reference(ct_source: Path, medgrit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted build of ``ct_source`` (one case per shard)."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    result = medgrit("build", f"nnunet:{ct_source}", "--out", str(out), "--cases-per-shard", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _namespace_prefix() -> list[str]:
    """Run a command in a private mount namespace (root, or an unprivileged user namespace)."""
    if shutil.which("unshare") is None:
        pytest.fail("these tests need util-linux's unshare")
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]


def _in_namespace(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_namespace_prefix(), "bash", "-ec", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


# --------------------------------------------------------------------------- sources are safe


@pytest.mark.parametrize("where", ["is", "contains", "inside"])
def test_out_is_never_a_source_folder(
    ct_source: Path, demo_dir: Path, medgrit_offline, where: str
) -> None:
    for spec, root in (
        (f"nnunet:{ct_source}", ct_source),
        (f"msd:{demo_dir / 'Task900_MNI152BrainMR'}", demo_dir / "Task900_MNI152BrainMR"),
    ):
        before = tree_digest(root.parent)
        out = {"is": root, "contains": root.parent, "inside": root / "labelsTr"}[where]
        result = medgrit_offline("build", spec, "--out", str(out), "--overwrite")
        assert result.returncode == 2
        assert "source folder" in _one_line(result)
        assert tree_digest(root.parent) == before


def test_a_failed_overwrite_keeps_the_old_dataset_and_says_so(
    reference: Path, ct_source: Path, medgrit, tmp_path: Path
) -> None:
    out, before = _copy_of(reference, tmp_path / "ds")
    with serve(ServerConfig(api_key="sk-the-right-one")) as refusing:
        llm = ["--generator", "llm", "--llm-model", "m", "--llm-base-url", refusing.base_url]
        result = medgrit(
            *("build", f"nnunet:{ct_source}", "--out", str(out), "--overwrite", *llm),
            env={"OPENAI_API_KEY": "sk-wrong"},
        )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert f"{out} is unchanged; run the same command again" in result.stderr
    assert _contents(out) == before


def test_overwrite_refuses_a_dataset_holding_files_of_yours(
    reference: Path, ct_source: Path, medgrit, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    (out / "NOTES.txt").write_text("my notes about this dataset")
    before = _contents(out)
    result = medgrit("build", f"nnunet:{ct_source}", "--out", str(out), "--overwrite")
    assert result.returncode == 2 and "NOTES.txt" in _one_line(result)
    assert _contents(out) == before
    nnunet_like = tmp_path / "other"
    nnunet_like.mkdir()
    (nnunet_like / "dataset.json").write_text(json.dumps({"labels": {"liver": 1}}))
    result = medgrit("build", f"nnunet:{ct_source}", "--out", str(nnunet_like), "--overwrite")
    assert result.returncode == 2 and "holds no medgrit dataset" in _one_line(result)
    assert (nnunet_like / "dataset.json").is_file()


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the build ended first ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the build")
        time.sleep(0.05)


def _done_shards(out: Path) -> int:
    try:
        manifest = json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(s.get("status") == "done" for s in manifest.get("shards", []))


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [shutil.which("medgrit") or "medgrit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def test_a_killed_overwrite_loses_nothing_and_the_same_command_finishes(
    reference: Path, ct_source: Path, medgrit, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out, before = _copy_of(reference, tmp_path / "ds")
    args = ["build", f"nnunet:{ct_source}", "--out", str(out), "--overwrite", "--seed", "5"]
    args += ["--cases-per-shard", "1", "--workers", "1"]
    proc = _popen(args, cli_env)
    staging = tmp_path / ".ds.medgrit-overwrite"
    _wait_for(lambda: _done_shards(staging) >= 1, proc)
    proc.kill()
    proc.wait()
    assert _contents(out) == before  # the old dataset is whole
    assert medgrit("validate", str(out)).returncode == 0

    again = medgrit(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not staging.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    fresh = tmp_path.parent / f"{tmp_path.name}-fresh"
    expected = medgrit(
        "build", f"nnunet:{ct_source}", "--out", str(fresh), "--seed", "5", "--cases-per-shard", "3"
    )
    assert expected.returncode == 0
    assert _tables(out) == _tables(fresh)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["config"]["seed"] == 5 and manifest["config"]["out"] == str(out)
    assert medgrit("validate", str(out)).returncode == 0


# --------------------------------------------------------------------------- one writer


SLOW = ServerConfig(rpm=6000, tpm=10_000_000, latency_ms=(700, 700))


@pytest.fixture(scope="module")
def slow_llm():
    """An OpenAI-compatible server slow enough that a build takes several seconds."""
    with serve(SLOW) as server:
        yield server


@contextmanager
def answering_at_once(server) -> Iterator[None]:
    """``server`` without its latency while the block runs: a build needs to be slow only until
    it has been caught mid-way; what it does after is the same, sooner."""
    server.configure(SLOW.model_copy(update={"latency_ms": (0.0, 0.0)}))
    try:
        yield
    finally:
        server.configure(SLOW)


def test_a_second_writer_is_refused_while_the_first_builds(
    ct_source: Path, slow_llm, medgrit, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    llm = ["--generator", "llm", "--llm-model", "m", "--llm-base-url", slow_llm.base_url]
    llm += ["--llm-concurrency", "1", "--cases-per-shard", "1"]
    env = {**cli_env, "OPENAI_API_KEY": "sk-test"}
    first = _popen(["build", f"nnunet:{ct_source}", "--out", str(out), *llm], env)
    _wait_for(lambda: (out / "dataset.json").is_file(), first)
    for args in (
        ["resume", str(out)],
        ["build", f"nnunet:{ct_source}", "--out", str(out), "--overwrite"],
    ):
        second = medgrit(*args, env={"OPENAI_API_KEY": "sk-test"})
        assert second.returncode == 2
        assert f"another medgrit process (pid {first.pid}" in _one_line(second)
    with answering_at_once(slow_llm):
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert medgrit("validate", str(out)).returncode == 0


# --------------------------------------------------------------------------- values


def _mr_source(root: Path, nan_share: float, all_nan_case: bool) -> tuple[Path, int]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0, "brain": 1}})
    )
    rng = np.random.default_rng(3)
    shape = (48, 48, 4)
    image = rng.normal(500, 120, shape).astype(np.float32)
    holes = rng.random(shape) < nan_share
    image[holes] = np.nan
    labels = np.zeros(shape, np.uint8)
    labels[8:40, 10:38, :] = 1
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / "holes_0000.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / "holes.nii.gz")
    if all_nan_case:
        nib.save(
            nib.Nifti1Image(np.full(shape, np.nan, np.float32), affine),
            root / "imagesTr" / "void_0000.nii.gz",
        )
        nib.save(nib.Nifti1Image(labels, affine), root / "labelsTr" / "void.nii.gz")
    return root, int(holes.sum())


def _strict(name: str) -> float:
    raise ValueError(f"dataset.json holds {name}")


def test_nan_voxels_are_left_out_of_the_mapping_not_painted_black(medgrit, tmp_path: Path) -> None:
    from medgrit.adapters.store.png import decode_png

    root, holes = _mr_source(tmp_path / "Dataset081_MR", 0.03, all_nan_case=True)
    out = tmp_path / "ds"
    result = medgrit("build", f"nnunet:{root}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    tables = _tables(out)
    assert len(tables["images"]) == 4  # the all-NaN case gives none
    for row in tables["images"]:
        pixels = decode_png(row["image"]["bytes"])
        assert pixels.mean() > 60 and pixels.std() > 20  # a real image, not black
    blank = [r for r in tables["rejects"] if r["reason"] == "blank_image"]
    assert len(blank) == 4 and all("void" in r["source"] for r in blank)
    manifest = json.loads((out / "dataset.json").read_text(), parse_constant=_strict)
    assert manifest["totals"]["non_finite_values"] == holes + 48 * 48 * 4
    assert "non-finite" in result.stdout
    assert medgrit("validate", str(out)).returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--ct-window", "40,nan"],
        ["--ct-window", "inf,400"],
        ["--percentiles", "0.5,nan"],
        ["--test-fraction", "nan"],
        ["--seed", "abc"],
        ["--generator", "llm", "--llm-model", "m", "--llm-temperature", "nan"],
    ],
    ids=["window-nan", "window-inf", "percentile-nan", "fraction-nan", "seed", "temperature"],
)
def test_bad_flag_values_are_one_line_and_write_nothing(
    medgrit_offline, tmp_path: Path, args: list[str]
) -> None:
    out = tmp_path / "never"
    result = medgrit_offline("build", "demo", "--out", str(out), *args)
    assert result.returncode == 2
    _one_line(result)
    assert not out.exists()


# --------------------------------------------------------------------------- names


def test_names_that_are_not_utf8_are_carried_and_shown_escaped(medgrit, tmp_path: Path) -> None:
    from PIL import Image

    base = os.fsencode(tmp_path)
    root = Path(os.fsdecode(base + b"/Fotos_M\xfcller"))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labels.json").write_text(
        json.dumps({"modality": "dermoscopy", "labels": {"1": "lesion"}, "masks": "label_map"})
    )
    rng = np.random.default_rng(0)
    for stem in (b"plain", b"scan\xff", b"caf\xe9"):
        name = os.fsdecode(stem + b".png")
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
        mask = np.zeros((40, 50), np.uint8)
        mask[8:30, 10:40] = 1
        Image.fromarray(mask).save(root / "masks" / name)
    (root / "images" / os.fsdecode(b"lost\xfe.png")).write_bytes(b"not an image")
    Image.fromarray(mask).save(root / "masks" / os.fsdecode(b"lost\xfe.png"))
    out = Path(os.fsdecode(base + b"/out\xfd"))
    result = medgrit("build", f"images:{root}", "--out", str(out), "--cases-per-shard", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "out\\xfd" in result.stdout and "Traceback" not in result.stderr
    tables = _tables(out)
    assert len(tables["images"]) == 3
    assert {r["dataset"] for r in tables["images"]} == {"Fotos_M\\xfcller"}
    (reject,) = tables["rejects"]
    assert reject["reason"] == "image_unreadable"
    assert reject["source"] == "Fotos_M\\xfcller/lost\\xfe#slice=0"
    manifest_text = (out / "dataset.json").read_text(encoding="utf-8")
    json.loads(manifest_text, parse_constant=_strict)
    assert medgrit("validate", str(out)).returncode == 0
    assert medgrit("status", str(out)).returncode == 0
    manifest = json.loads(manifest_text)
    lost = manifest["shards"][0]
    for rel in lost["files"]:
        (out / rel).unlink()
    before = tables
    resumed = medgrit("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _tables(out) == before


# --------------------------------------------------------------------------- messages


def test_out_that_cannot_be_written_is_one_line(
    ct_source: Path, medgrit_offline, tmp_path: Path
) -> None:
    plain = tmp_path / "a-file"
    plain.write_text("x")
    for out, words in ((plain, "is a file"), (plain / "ds", "which is a file")):
        result = medgrit_offline("build", f"nnunet:{ct_source}", "--out", str(out))
        assert result.returncode == 2 and words in _one_line(result)
    assert plain.read_text() == "x"
    result = medgrit_offline("demo-data", str(plain))
    assert result.returncode == 2 and "is a file" in _one_line(result)


def test_read_only_out_is_one_line_and_writes_nothing(
    ct_source: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    exe = shlex.quote(shutil.which("medgrit") or "medgrit")
    script = f"""
        mount -t tmpfs -o ro,size=1m tmpfs {shlex.quote(str(mount))}
        set +e
        {exe} build nnunet:{shlex.quote(str(ct_source))} --out {shlex.quote(str(mount / "ds"))}
        echo "exit=$?"
        ls -A {shlex.quote(str(mount))} | wc -l
    """
    result = _in_namespace(script, cli_env)
    assert "exit=2" in result.stdout, result.stderr[-3000:]
    assert "Read-only file system" in _one_line(result)
    assert result.stdout.strip().splitlines()[-1] == "0"


def test_a_folder_of_the_dataset_that_cannot_be_written_is_one_line_before_any_work(
    ct_source: Path, reference: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["shards"][-1]["status"] = "failed"  # one shard left to build
    (out / "dataset.json").write_text(json.dumps(manifest))
    exe = shlex.quote(shutil.which("medgrit") or "medgrit")
    ds = shlex.quote(str(out))
    resume = f"{exe} resume {ds}"
    build = f"{exe} build nnunet:{shlex.quote(str(ct_source))} --out {ds} --cases-per-shard 1"
    cases = (  # a read-only mount binds root too; "file" and "link" take the folder's place
        ("", "read-only", resume, "Read-only file system"),
        ("images", "read-only", resume, "Read-only file system"),
        ("shards", "read-only", build, "Read-only file system"),
        ("regions", "file", resume, "it is a file, not a folder"),
        ("conversations", "link", build, "it is a symbolic link that cannot be followed"),
    )
    for folder, how, command, reason in cases:
        path, aside = (out / folder if folder else out), tmp_path / folder
        if how == "file":
            path.rename(aside)
            path.write_text("")
        elif how == "link":
            path.rename(aside)
            path.symlink_to(tmp_path / "gone")
        before = _contents(out)
        target = shlex.quote(str(path))
        mount = f"mount --bind {target} {target}; mount -o remount,bind,ro {target}"
        script = f"""
            {mount if how == "read-only" else ""}
            set +e
            {command}
            echo "exit=$?"
        """
        result = _in_namespace(script, cli_env)
        assert "exit=2" in result.stdout, (folder, result.stderr[-3000:])
        line = _one_line(result)
        where = f"{path} in the dataset {out}" if folder else str(out)
        assert f"cannot write to {where}: {reason}" in line, line
        assert _contents(out) == before
        if how != "read-only":
            path.unlink()
            aside.rename(path)


def test_a_part_that_cannot_be_written_during_the_build_is_one_line(
    reference: Path, medgrit, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "dataset.json").read_text())
    lost = manifest["shards"][-1]
    lost["status"] = "failed"
    for rel in lost["files"]:
        (out / rel).unlink()
    (out / "images" / f"part-{lost['id']}.parquet").mkdir()  # the part cannot be put in place
    (out / "dataset.json").write_text(json.dumps(manifest))
    result = medgrit("resume", str(out))
    assert result.returncode == 1, result.stderr[-3000:]
    line = _one_line(result)
    assert f"1 shard(s) failed ({lost['id']})" in line and "medgrit resume" in line
    assert "IsADirectoryError" in result.stderr  # the shard's own line says why


def test_a_manifest_that_cannot_be_written_is_one_line(
    reference: Path, medgrit, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    lock = out / ".dataset.json.lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()  # the manifest's update lock cannot be opened
    result = medgrit("resume", str(out))
    assert result.returncode == 1, result.stderr[-3000:]
    line = _one_line(result)
    assert f"Is a directory ({lock})" in line and "medgrit resume" in line, line


def test_a_demo_folder_holding_something_else_is_never_replaced(
    medgrit_offline, tmp_path: Path
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    result = run_cli(
        "build",
        "--out",
        str(tmp_path / "ds"),
        env={**os.environ, "MEDGRIT_DEMO_DIR": str(mine), "PREFECT_API_URL": "http://127.0.0.1:9"},
    )
    assert result.returncode == 2 and "holds something else" in _one_line(result)
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_build_that_keeps_no_image_says_so(medgrit, tmp_path: Path) -> None:
    root = write_ct_source(tmp_path / "Dataset082_Gone", cases=3)
    shutil.rmtree(root / "imagesTr")
    out = tmp_path / "ds"
    result = medgrit("build", f"nnunet:{root}", "--out", str(out))
    assert result.returncode == 1
    line = _one_line(result)
    assert "kept no image" in line and "file_missing: 3" in line


def test_an_empty_dicom_file_is_a_reject_not_skipped(medgrit, tmp_path: Path) -> None:
    from medgrit.adapters.synthetic.dicom_writer import write_mask_png, write_single_image

    root = tmp_path / "CXR"
    root.mkdir()
    (root / "labels.json").write_text(json.dumps({"1": "left lung"}))
    pixels = (np.random.default_rng(0).random((40, 32)) * 3000).astype(np.uint16)
    write_single_image(pixels, root / "good.dcm", modality="DX")
    mask = np.zeros((40, 32), np.uint8)
    mask[5:30, 4:20] = 1
    write_mask_png(mask, root / "good_mask.png")
    (root / "zero.dcm").write_bytes(b"")
    (root / "IM0002").write_bytes(b"")
    out = tmp_path / "ds"
    result = medgrit("build", f"dicom:{root}", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    tables = _tables(out)
    assert len(tables["images"]) == 1
    assert [r["reason"] for r in tables["rejects"]] == ["dicom_unreadable"] * 2


# --------------------------------------------------------------------------- stopping


def test_a_full_disk_is_one_line_and_resume_finishes_the_same_dataset(
    ct_source: Path, reference: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    mount, kept = tmp_path / "disk", tmp_path / "kept"
    mount.mkdir()
    exe = shlex.quote(shutil.which("medgrit") or "medgrit")
    ds = shlex.quote(str(mount / "ds"))
    script = f"""
        mount -t tmpfs -o size=160k tmpfs {shlex.quote(str(mount))}
        set +e
        {exe} build nnunet:{shlex.quote(str(ct_source))} --out {ds} --cases-per-shard 1
        echo "build=$?"
        mount -o remount,size=64m {shlex.quote(str(mount))}
        {exe} resume {ds} > /dev/null
        echo "resume=$?"
        cp -a {ds} {shlex.quote(str(kept))}
    """
    result = _in_namespace(script, cli_env)
    assert "build=1" in result.stdout, (result.stdout, result.stderr[-3000:])
    line = next(x for x in result.stderr.splitlines() if x.startswith("medgrit:"))
    assert f"no space left on {mount}" in line and "medgrit resume" in line
    assert "Traceback" not in result.stderr
    assert "resume=0" in result.stdout, result.stderr[-3000:]
    assert _tables(kept) == _tables(reference)
    assert not list(kept.rglob("*.tmp-*"))


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_sigterm_stops_cleanly_stops_prefect_and_resume_gives_the_same_tables(
    ct_source: Path, reference: Path, demo_dir: Path, medgrit, tmp_path: Path
) -> None:
    # No PREFECT_API_URL: the CLI starts Prefect's ephemeral server, which must not outlive it.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), MEDGRIT_DEMO_DIR=str(demo_dir))
    out = tmp_path / "ds"
    proc = _popen(
        [
            "build",
            f"nnunet:{ct_source}",
            "--out",
            str(out),
            "--cases-per-shard",
            "1",
            "--workers",
            "1",
        ],
        env,
    )
    _wait_for(lambda: (out / "dataset.json").is_file(), proc, timeout=240)
    servers = [
        c for c in _children(proc.pid) if b"uvicorn" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]
    assert servers, "the ephemeral Prefect server runs as a child of the CLI"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "medgrit resume" in stderr and "Traceback" not in stderr
    deadline = time.monotonic() + 10
    while any(_alive(s) for s in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(s) for s in servers), "Prefect's server outlived the CLI"
    assert not list(out.rglob("*.tmp-*"))
    manifest = json.loads((out / "dataset.json").read_text())
    assert all(s["status"] in ("done", "pending") for s in manifest["shards"])
    resumed = medgrit("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _tables(out) == _tables(reference)


def test_ctrl_c_during_an_overwrite_keeps_the_old_dataset(
    reference: Path, ct_source: Path, slow_llm, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out, before = _copy_of(reference, tmp_path / "ds")
    llm = ["--generator", "llm", "--llm-model", "m", "--llm-base-url", slow_llm.base_url]
    proc = _popen(
        ["build", f"nnunet:{ct_source}", "--out", str(out), "--overwrite", *llm],
        {**cli_env, "OPENAI_API_KEY": "sk-test"},
    )
    staging = tmp_path / ".ds.medgrit-overwrite"
    _wait_for(lambda: (staging / "dataset.json").is_file(), proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert len([x for x in stderr.splitlines() if x.startswith("medgrit:")]) == 1, stderr
    assert _contents(out) == before


def test_sigint_stops_with_130(
    ct_source: Path, slow_llm, cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    llm = ["--generator", "llm", "--llm-model", "m", "--llm-base-url", slow_llm.base_url]
    proc = _popen(
        ["build", f"nnunet:{ct_source}", "--out", str(out), *llm, "--llm-concurrency", "1"],
        {**cli_env, "OPENAI_API_KEY": "sk-test"},
    )
    _wait_for(lambda: (out / "dataset.json").is_file(), proc)
    time.sleep(1.0)  # requests in flight
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert time.monotonic() - started < 15  # it does not wait for the shard's other requests
    assert not list(out.rglob("*.tmp-*"))
    with answering_at_once(slow_llm):
        resumed = run_cli("resume", str(out), env={**cli_env, "OPENAI_API_KEY": "sk-test"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]


# --------------------------------------------------------------------------- resume is safe


def _run_in(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("medgrit") or "medgrit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_resume_reads_the_sources_it_was_built_from_wherever_it_runs(
    ct_source: Path, reference: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    here = tmp_path / "here"
    (here / "src").mkdir(parents=True)
    shutil.copytree(ct_source, here / "src" / ct_source.name)
    elsewhere = tmp_path / "elsewhere"
    write_ct_source(elsewhere / "src" / ct_source.name, cases=2)  # same relative name
    out = tmp_path / "ds"
    built = _run_in(
        here,
        "build",
        f"nnunet:src/{ct_source.name}",
        "--out",
        str(out),
        "--cases-per-shard",
        "1",
        env=cli_env,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["config"]["sources"] == [f"nnunet:{here / 'src' / ct_source.name}"]
    shard = manifest["shards"][2]
    for rel in shard["files"]:
        (out / rel).unlink()
    resumed = _run_in(elsewhere, "resume", str(out), env=cli_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _tables(out) == _tables(reference)


def test_resume_never_throws_away_finished_shards_when_the_sources_changed(
    ct_source: Path, reference: Path, medgrit, tmp_path: Path
) -> None:
    source = tmp_path / "Dataset080_CT"
    shutil.copytree(ct_source, source)
    out = tmp_path / "ds"
    assert (
        medgrit("build", f"nnunet:{source}", "--out", str(out), "--cases-per-shard", "1").returncode
        == 0
    )
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["shards"][-1]["status"] = "failed"
    (out / "dataset.json").write_text(json.dumps(manifest))
    before = _contents(out)

    extra = write_ct_source(tmp_path / "more", cases=7)  # the source gains a case
    shutil.copy(extra / "imagesTr" / "case006_0000.nii.gz", source / "imagesTr")
    shutil.copy(extra / "labelsTr" / "case006.nii.gz", source / "labelsTr")
    changed = medgrit("resume", str(out))
    assert changed.returncode == 2 and "its sources changed" in _one_line(changed)
    assert _contents(out) == before

    shutil.rmtree(source / "labelsTr")
    (source / "labelsTr").mkdir()  # a share that is not mounted
    empty = medgrit("resume", str(out))
    assert empty.returncode == 2 and "hold no cases" in _one_line(empty)
    shutil.rmtree(source)
    gone = medgrit("resume", str(out))
    assert gone.returncode == 2 and "does not exist" in _one_line(gone)
    assert _contents(out) == before


def test_a_build_stopped_before_its_manifest_can_be_run_again(
    ct_source: Path, reference: Path, medgrit, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / ".medgrit.lock").write_text("pid 1 on elsewhere\n")  # all a very early stop leaves
    result = medgrit("build", f"nnunet:{ct_source}", "--out", str(out), "--cases-per-shard", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _tables(out) == _tables(reference)


def test_overlapping_sources_are_refused(ct_source: Path, medgrit_offline, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(ct_source)
    copy = tmp_path / "copy" / ct_source.name
    shutil.copytree(ct_source, copy)
    for second, words in (
        (ct_source, "same folder"),
        (link, "same folder"),
        (copy, "both hold case"),
    ):
        out = tmp_path / "never"
        result = medgrit_offline(
            "build", f"nnunet:{ct_source}", f"nnunet:{second}", "--out", str(out)
        )
        assert result.returncode == 2 and words in _one_line(result)
        assert not out.exists()


def test_a_key_is_never_written_into_a_source_or_by_a_failed_command(
    ct_source: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    inside = ct_source / "labelsTr" / "pseudonym.key"
    result = run_cli(
        "build",
        f"nnunet:{ct_source}",
        "--out",
        str(tmp_path / "ds"),
        env={**env, "MEDGRIT_KEY_FILE": str(inside)},
    )
    assert result.returncode == 2 and "inside the source folder" in _one_line(result)
    assert not inside.exists()
    fresh_key = tmp_path / "keys" / "k"
    result = run_cli(
        "build",
        "nnunet:/no/such/source",
        "--out",
        str(tmp_path / "ds"),
        env={**env, "MEDGRIT_KEY_FILE": str(fresh_key)},
    )
    assert result.returncode == 2 and not fresh_key.parent.exists()


@pytest.mark.parametrize(
    "labels",
    [
        {"background": 0, "liver": 1, "spleen": 1},
        {"background": 0, "": 1},
        {"background": 0, "liver": -1},
        {"background": 0, "liver": 2**40},
    ],
    ids=["same-id-twice", "empty-name", "negative-id", "huge-id"],
)
def test_a_label_list_that_would_mislabel_is_refused(
    medgrit_offline, tmp_path: Path, labels: dict
) -> None:
    root = write_ct_source(tmp_path / "Dataset083_Bad", cases=1)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    result = medgrit_offline("build", f"nnunet:{root}", "--out", str(tmp_path / "never"))
    assert result.returncode == 2 and "malformed dataset.json" in _one_line(result)
