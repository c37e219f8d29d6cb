"""Shared fixtures: real data converted to source layouts, and one real Prefect server.

The Prefect server is started once per test session (``prefect server start`` on a free port
with its own PREFECT_HOME); CLI runs in subprocesses reach it through PREFECT_API_URL.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from medgrit_testing.prefect_server import running_prefect_server

MRICRON = Path("/usr/share/mricron/templates")

# Under pytest-xdist each worker gets a Prefect home of its own: a CLI run without
# PREFECT_API_URL starts Prefect's ephemeral server on PREFECT_HOME's database, which two workers
# must not share.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and not os.environ.get("MEDGRIT_TESTS_PREFECT_HOME"):  # once: tests import conftest
    _home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect") / "xdist" / _WORKER
    _home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = os.environ["MEDGRIT_TESTS_PREFECT_HOME"] = str(_home)


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pseudonymisation key for the session, outside every dataset directory."""
    path = tmp_path_factory.mktemp("key") / "pseudonym.key"
    os.environ["MEDGRIT_KEY_FILE"] = str(path)
    return path


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo sources (read only), written once per test run: pytest-xdist's workers
    share one copy, which the first to need it writes while the others wait."""
    from medgrit.adapters.synthetic.demo import ensure_demo_data

    root = tmp_path_factory.getbasetemp()
    if _WORKER:
        root = root.parent  # the run's folder, above each worker's own
    folder = root / "demo"
    folder.mkdir(exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_demo_data(folder / "demo-data")


@pytest.fixture(scope="session")
def aal_nnunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian mricron-data's AAL atlas on the Colin27 T1, as an nnU-Net v2 raw dataset."""
    atlas, t1, names = MRICRON / "aal.nii.gz", MRICRON / "ch2.nii.gz", MRICRON / "aal.nii.txt"
    if not atlas.is_file():
        pytest.fail("Debian's mricron-data is missing: apt-get install mricron-data")
    root = tmp_path_factory.mktemp("nnunet") / "Dataset101_AAL"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(t1, root / "imagesTr" / "colin27_0000.nii.gz")
    shutil.copy(atlas, root / "labelsTr" / "colin27.nii.gz")
    labels = {"background": 0}
    for line in names.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            labels[parts[1]] = int(parts[0])
    meta = {
        "channel_names": {"0": "T1"},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": "AAL_Colin27",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 for the whole session; yields its API URL."""
    with running_prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


def build_demo_dataset(
    out: Path, demo_dir: Path, max_images: int, key_file: Path | None = None
) -> Path:
    """A template build of ``max_images`` demo images into ``out``, in this process (no
    Prefect), with MEDGRIT_DEMO_DIR pointed at ``demo_dir`` only while it builds; ``key_file``
    fixes the pseudonyms, and with them the text (else the session's key)."""
    from medgrit.adapters.build import run_build
    from medgrit.adapters.runtime.mappers import LoopMapper
    from medgrit.schemas.config import BuildConfig

    before = os.environ.get("MEDGRIT_DEMO_DIR")
    os.environ["MEDGRIT_DEMO_DIR"] = str(demo_dir)
    try:
        key = str(key_file) if key_file else None
        run_build(BuildConfig(out=str(out), max_images=max_images, key_file=key), LoopMapper())
    finally:
        if before is None:
            os.environ.pop("MEDGRIT_DEMO_DIR", None)
        else:
            os.environ["MEDGRIT_DEMO_DIR"] = before
    return out


@pytest.fixture(scope="session")
def finetune_dataset(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """An 80-image demo build that the fine-tune tests share (read only)."""
    return build_demo_dataset(tmp_path_factory.mktemp("ft") / "ds", demo_dir, 80)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory, finetune_dataset: Path) -> Path:
    """A tiny Qwen2.5-VL (random weights) whose tokenizer is trained on that build's text."""
    from medgrit.adapters.export.records import read_records
    from medgrit_testing.tiny_vlm import write_model

    records = read_records(finetune_dataset)
    texts = [q.question + " " + q.answer for s in records.splits.values() for r in s for q in r.qa]
    return write_model(tmp_path_factory.mktemp("tiny") / "model", texts, max_pixels=112 * 112)


@pytest.fixture(scope="session")
def finetune_records(finetune_dataset: Path):
    """That build's records, as the fine-tune reads them."""
    from medgrit.adapters.export.records import read_records

    return read_records(finetune_dataset)


@pytest.fixture(scope="session")
def tiny_processor(tiny_vlm: Path):
    """The tiny model's tokenizer and image processor."""
    from medgrit.adapters.training.processor import VisionChatProcessor

    return VisionChatProcessor.from_pretrained(tiny_vlm)


@pytest.fixture(scope="session")
def cli_env(prefect_server: str, demo_dir: Path) -> dict[str, str]:
    """Environment for ``medgrit`` subprocesses: the session's Prefect server and demo data."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "MEDGRIT_DEMO_DIR": str(demo_dir),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed ``medgrit`` console script in a subprocess."""
    exe = shutil.which("medgrit") or "medgrit"
    return subprocess.run(
        [exe, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="session")
def medgrit(cli_env: dict[str, str]):
    """Run ``medgrit ARGS`` against the session's Prefect server; returns the CompletedProcess."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, env={**cli_env, **(env or {})})

    return run


@pytest.fixture(scope="session")
def medgrit_offline(demo_dir: Path):
    """Run ``medgrit ARGS`` with no Prefect server (for user errors that exit before Prefect)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["MEDGRIT_DEMO_DIR"] = str(demo_dir)

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_cli(*args, env=env, timeout=120)

    return run
