"""Every command ends with its own exit code and one line on a damaged dataset, never on a signal.

A process that exits while pyarrow threads still read one of its file objects is aborted
(SIGABRT, "terminate called without an active exception"), and only now and then: most likely
when the machine is busy. So each command's error path runs many times, several commands at
once, while busy loops hold every core, on table parts damaged in the ways disks and copies
damage them: cut short, replaced by other bytes, pages overwritten with the footer intact.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import build_demo_dataset, run_cli

pytestmark = pytest.mark.slow

TIMES = 4  # runs of each command
CONCURRENT = 4
# What a command off a terminal says of its progress before it ends (``images: 20/20 (100%)``).
PROGRESS = re.compile(r"^images: \d+(/\d+ \(\d+%\)| \(estimated \d+\))?(, .*)?$")


def _ending(stderr: str) -> list[str]:
    """The lines of stderr that end a command: those after its progress lines."""
    return [line for line in stderr.strip().splitlines() if not PROGRESS.match(line)]


def _first_part(ds: Path, table: str) -> Path:
    return sorted((ds / table).glob("part-*.parquet"))[0]


def _truncate(ds: Path) -> None:
    part = _first_part(ds, "images")
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])


def _garbage(ds: Path) -> None:
    _first_part(ds, "regions").write_bytes(b"not a parquet file at all\n" * 40)


def _overwrite_pages(ds: Path, table: str, columns: set[str]) -> None:
    """Overwrite the pages of ``columns`` in the first part; the footer stays readable."""
    part = _first_part(ds, table)
    data = bytearray(part.read_bytes())
    meta = pq.ParquetFile(part).metadata
    for group in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(group).column(c)
            if chunk.path_in_schema in columns:
                start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o)
                data[start : start + chunk.total_compressed_size] = b"\xff" * (
                    chunk.total_compressed_size
                )
    part.write_bytes(bytes(data))


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "garbage": _garbage,
    "damaged pages": lambda ds: _overwrite_pages(ds, "images", {"modality", "plane", "split"}),
    "damaged image bytes": lambda ds: _overwrite_pages(ds, "images", {"image.bytes"}),
}
TEXT_DAMAGES = ("truncated", "garbage", "damaged pages")  # what every dataset reader reads


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, Path]:
    """One small demo build, and a copy of it per damage."""
    root = tmp_path_factory.mktemp("exit-paths")
    dataset = build_demo_dataset(root / "ds", demo_dir, 20)
    copies = {}
    for name, damage in DAMAGES.items():
        copy = root / name.replace(" ", "-")
        shutil.copytree(dataset, copy)
        damage(copy)
        copies[name] = copy
    return copies


@dataclass(frozen=True)
class Run:
    """One command line, the exit code it must end with, and a word its stderr line holds."""

    args: tuple[str, ...]
    code: int
    says: str
    writes: Path | None = None  # what must not exist afterwards


def _finetune_config(folder: Path, dataset: Path) -> Path:
    """A fine-tune of ``dataset`` whose every other setting would pass the checks."""
    model = folder / "model"
    model.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json", "tokenizer.json"):
        (model / name).write_text("{}", encoding="utf-8")
    config = folder / "finetune.toml"
    config.write_text(
        f'dataset = {json.dumps(str(dataset))}\noutput_dir = "run"\n'
        f"model_name_or_path = {json.dumps(str(model))}\n",
        encoding="utf-8",
    )
    return config


def _runs(damaged: dict[str, Path], tmp: Path) -> Iterator[Run]:
    """Each command ``TIMES`` times, taking its damages in turn."""
    count = itertools.count()

    def out(suffix: str = "") -> Path:
        return tmp / f"out-{next(count)}{suffix}"

    unreadable = "not readable Parquet"
    every, text = list(DAMAGES), list(TEXT_DAMAGES)
    for i in range(TIMES):
        ds = str(damaged[every[i % len(every)]])
        yield Run(("validate", ds), 1, "problem(s) found")
        for fmt in ("bird", "trl"):
            target = out()
            yield Run(("export", ds, "-f", fmt, "--out", str(target)), 2, unreadable, target)
        target = out(".html")
        yield Run(("report", ds, "--out", str(target)), 2, unreadable, target)
        ds = str(damaged[text[i % len(text)]])  # these two never read image bytes
        target = out(".jsonl")
        yield Run(("predict-baseline", ds, "--out", str(target)), 2, unreadable, target)
        config = _finetune_config(out(), Path(ds))
        yield Run(("finetune", "--config", str(config)), 2, unreadable, config.parent / "run")
        predictions = out(".jsonl")
        predictions.write_bytes((b"\x00\xff{garbage", b'{"id": 1, "image": "a.png"')[i % 2])
        yield Run(("evaluate", str(predictions)), 2, predictions.name)
        manifest = out()
        manifest.mkdir()
        (manifest / "dataset.json").write_bytes(b"\x00not json")
        yield Run(("status", str(manifest)), 2, "dataset.json")


@pytest.fixture
def busy_cores() -> Iterator[None]:
    """A busy loop on every core while the test runs."""
    loops = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def test_every_command_ends_with_its_code_on_damaged_tables_under_load(
    damaged: dict[str, Path], tmp_path: Path, busy_cores: None
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    runs = list(_runs(damaged, tmp_path))
    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(lambda r: run_cli(*r.args, env=env, timeout=300), runs))
    signalled = [
        (r.args, p.returncode) for r, p in zip(runs, results, strict=True) if p.returncode < 0
    ]
    assert not signalled, f"{len(signalled)} of {len(runs)} runs ended on a signal: {signalled}"
    for run, done in zip(runs, results, strict=True):
        lines = _ending(done.stderr)
        assert done.returncode == run.code, (run.args, done.returncode, done.stderr[-2000:])
        assert len(lines) == 1 and run.says in lines[0], (run.args, done.stderr[-2000:])
        if run.code == 2:
            assert lines[0].startswith("medgrit: error: "), (run.args, lines)
        if run.writes is not None:
            assert not run.writes.exists(), run.args
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_missing_table_part_is_refused_before_anything_is_written(
    damaged: dict[str, Path], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    ds = tmp_path / "ds"
    shutil.copytree(damaged["garbage"], ds)
    lost = _first_part(ds, "regions")
    lost.unlink()
    targets = {
        "export": tmp_path / "bird",
        "predict-baseline": tmp_path / "p.jsonl",
        "report": tmp_path / "r.html",
    }
    for command, target in targets.items():
        args = [command, str(ds), "--out", str(target)]
        done = run_cli(*args, *(["-f", "bird"] if command == "export" else []), env=env)
        lines = _ending(done.stderr)
        assert done.returncode == 2 and len(lines) == 1, (command, done.stderr)
        assert f"lacks regions/{lost.name}" in lines[0], lines
        assert f"medgrit validate {ds}" in lines[0], lines
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporaries either
