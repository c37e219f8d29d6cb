"""What the terminal shows while medgrit works: plain progress lines off a terminal (at each 10%
step, never by time), rich bars and tables on one, nothing with ``--quiet``, words of sources
shown as written (never as rich markup), ``--version`` and the choices in ``--help``."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from catalogue import write_ct_source
from conftest import run_cli
from rich.console import Console
from typer.testing import CliRunner

from medgrit.adapters.runtime import progress
from medgrit.cli import app
from medgrit.cli.tables import summary_tables
from medgrit.cli.terminal import LiveProgress, PlainProgress
from medgrit.core.summary import BuildSummary, SummaryTable

ESCAPE = "\x1b"
PROGRESS_LINE = re.compile(r"^images: \d+/24 \((\d+)%\)(, [a-z ]+ \d+)*$")


def test_plain_lines_come_at_each_tenth_and_at_the_end() -> None:
    out = io.StringIO()
    display = PlainProgress(out)
    with progress.listening(display):
        progress.phase("building 20 images in 2 shards")
        progress.expect("images", 20)
        for _ in range(20):
            progress.advance("rejects", 1, unit="00000")
            progress.advance("images", 1, unit="00000")
        progress.advance("qa_pairs", 57, unit="00000")
        display.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "building 20 images in 2 shards"
    assert lines[1] == "images: 2/20 (10%), rejects 2"
    assert lines[5] == "images: 10/20 (50%), rejects 10"
    assert lines[10] == "images: 20/20 (100%), rejects 20"
    assert lines[11:] == ["images: 20/20 (100%), qa pairs 57, rejects 20"]  # the end


def test_a_count_short_of_its_estimate_ends_saying_so_and_a_stop_prints_nothing() -> None:
    out = io.StringIO()
    display = PlainProgress(out)
    with progress.listening(display):
        progress.expect("images", 100, done=35)  # a resume: 35 were done before
        progress.advance("images", 4)  # 39: no new step
        progress.advance("images", 2)  # 41: the 40% step
        display.finish()
        progress.advance("images", 50)  # after the end: not shown
    assert out.getvalue().splitlines() == ["images: 41/100 (41%)", "images: 41 (estimated 100)"]

    stopped = io.StringIO()
    display = PlainProgress(stopped)
    with progress.listening(display):
        progress.expect("images", 10)
        display.halt(erase=True)
        progress.advance("images", 10)
        progress.phase("never shown")
        display.finish()
    assert stopped.getvalue() == ""


def test_settle_counts_each_shard_once_and_forget_withdraws_a_failed_one() -> None:
    display = PlainProgress(io.StringIO())
    with progress.listening(display):
        progress.expect("images", 30)
        progress.advance("images", 7, unit="00000")  # seen here (a thread of this process)
        progress.settle("images", "00000", 9)  # recorded with 9: conversations kept 9
        progress.settle("images", "00001", 12)  # built elsewhere (a Dask worker): all unseen
        progress.advance("images", 5, unit="00002")
        progress.forget("00002")  # failed: its 5 no more
        progress.settle("images", "00000", 0)  # already settled: nothing seen is left
        assert display.counts["images"].done == 9 + 12


def test_held_phases_wait_for_the_checks_and_vanish_with_an_error() -> None:
    checking = [True]
    out = io.StringIO()
    display = PlainProgress(out, hold=lambda: checking[0])
    with progress.listening(display):
        progress.phase("reading 2 sources")
        assert out.getvalue() == ""
        checking[0] = False
        progress.phase("starting a temporary Prefect server")
    assert out.getvalue().splitlines() == [
        "reading 2 sources",
        "starting a temporary Prefect server",
    ]
    for end in ("halt", "finish"):  # a check failed; the checks were all the command did
        ended = io.StringIO()
        display = PlainProgress(ended, hold=lambda: True)
        with progress.listening(display):
            progress.phase("reading 2 sources")
            getattr(display, end)()
        assert ended.getvalue() == ""


class _ClosedStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_display_that_cannot_write_stops_showing_and_never_fails_the_work() -> None:
    display = PlainProgress(_ClosedStream())
    with progress.listening(display):
        progress.phase("reading 2 sources")  # the pipe is gone: the display is dropped
        assert not progress.active()
        progress.expect("images", 10)
        progress.advance("images", 5, unit="00000")
        progress.settle("images", "00000", 10)
        progress.forget("00001")
    live = LiveProgress(Console(file=io.StringIO(), force_terminal=True), hold=lambda: True)
    with progress.listening(live):
        progress.phase("reading 2 sources")  # held on a terminal too while checks run
        live.halt()
    assert "reading" not in live.console.file.getvalue()


def test_the_terminal_shows_words_of_sources_as_written_never_as_markup() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)
    display = LiveProgress(console)
    with progress.listening(display):
        progress.phase("reading [bold]x[/bold] and \x1b[31mred")
        progress.expect("images", 4)
        progress.advance("images", 4)
        progress.advance("spend_usd", 0.25)
        display.finish()
    shown = screen.getvalue()
    assert "reading [bold]x[/bold] and \\x1b[31mred" in shown
    assert "4/4" in shown and "spend $0.2500" in shown

    summary = BuildSummary(
        "/data/[red]out",
        (("shards", "1/1 done"), ("images", "3 (train 3)")),
        (
            SummaryTable(
                ("modality", "images", "QA"), (("[bold]ct", 3, 9),), ("left", "right", "right")
            ),
        ),
    )
    table = io.StringIO()
    Console(file=table, force_terminal=True, width=80).print(*summary_tables(summary))
    text = re.sub(r"\x1b\[[0-9;]*m", "", table.getvalue())
    assert "medgrit dataset /data/[red]out" in text
    assert re.search(r"\[bold\]ct\s+3\s+9", text)
    assert "|---" not in text and "─" in text  # a rich table, not Markdown


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 24-image build of three 32x32x8 CT cases through the CLI, off a terminal."""
    root = tmp_path_factory.mktemp("terminal")
    source = write_ct_source(root / "Dataset077_Tiny", cases=3, shape=(32, 32, 8))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "NO_COLOR")}
    out = root / "[bold]ds"
    done = run_cli(
        "build", f"nnunet:{source}", "--out", str(out), "--no-prefect", "--test-fraction", "0",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_a_build_off_a_terminal_prints_phases_steps_and_a_plain_summary(tiny_build) -> None:
    out, done = tiny_build
    assert ESCAPE not in done.stderr and ESCAPE not in done.stdout
    err = done.stderr.splitlines()
    for phase in (
        "reading 1 source",
        "planning shards for 3 cases",
        "building 24 images in 1 shard",
    ):
        assert phase in err, done.stderr
    steps = [PROGRESS_LINE.match(line) for line in err if line.startswith("images:")]
    assert steps and all(steps), err
    percents = [int(m.group(1)) for m in steps]
    assert percents == sorted(percents) and percents[-1] == 100
    assert err.index("building 24 images in 1 shard") < err.index(steps[0].group(0))
    lines = done.stdout.splitlines()
    assert lines[0] == f"medgrit dataset {out}"  # the folder's name as written, not markup
    assert "- images: 24 (train 24)" in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("modality"))
    assert lines[header].split() == "modality images VG ROC RC MIA QA".split()
    assert set(lines[header + 1]) == {"-", " "}  # a rule of dashes, no Markdown bars
    assert lines[header + 2].split()[:2] == ["ct", "24"]
    assert "|" not in done.stdout
    assert lines[-1] == f"dataset written to {out.resolve()} (complete)"


def test_quiet_leaves_the_progress_out_and_version_and_help_say_what_they_should(
    tiny_build,
) -> None:
    out, _ = tiny_build
    cli = CliRunner()
    checked = cli.invoke(app, ["validate", str(out)])
    assert checked.exit_code == 0 and checked.stderr.splitlines() == ["images: 24/24 (100%)"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    quiet = run_cli("--quiet", "validate", str(out), env=env)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == checked.stdout

    version = cli.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"medgrit \d+\.\d+\.\d+\S*\n", version.stdout)
    assert cli.invoke(app, ["-V"]).stdout == version.stdout

    shown = cli.invoke(app, ["build", "--help"], env={"COLUMNS": "200"}).stdout
    for choices in ("<axial|coronal|sagittal>", "<processes|threads|dask>", "<template|llm>"):
        assert choices in shown
    assert "--overwrite" in shown and not re.search(r"--no-overwrite\s+<bool>", shown)
    wrong = cli.invoke(app, ["build", "demo", "--plane", "oblique", "--out", str(out)])
    assert wrong.exit_code == 2 and "oblique" in wrong.stderr
