"""What the terminal shows while a command works (its tables: ``medgrit.cli.tables``).

Commands say what they do through ``medgrit.adapters.runtime.progress`` (phases, expected
totals, advances); :func:`showing_progress` installs the display for the length of a command:

- On a terminal (stderr is one, and not ``TERM=dumb``): a ``rich`` progress display on stderr,
  refreshed by rich's own thread, with one bar per expected counter (count, percent and time
  left) and the counters nobody expected (QA pairs, rejects, LLM requests, spend) as counts
  beside the first. Each phase is one line above it. Log lines of Prefect and medgrit go above
  the bars too while they show.
- Elsewhere (CI, logs, pipes): plain lines on stderr and no escape codes: each phase, then a
  line at each 10% step of an expected counter and at its end (by counts, never by time), e.g.
  ``images: 350/699 (50%), qa pairs 1204, rejects 31``. A command's checks may hold phase
  lines back until they pass (``hold``), so that a user error stays the only line it prints.
  Progress lines from work that then fails stay: they are what was done.

A stop (a signal) takes the display away at once: the command's own line is then all there
is. What a source wrote is shown with control characters escaped
(:func:`~medgrit.core.markdown.printable_text`) and never read as rich markup.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.interrupt import signalled
from medgrit.core.markdown import printable_text

LABELS = {
    "images": "images",
    "qa_pairs": "qa pairs",
    "rejects": "rejects",
    "llm_requests": "LLM requests",
    "spend_usd": "spend",
}
"""How each counter is named on the terminal (others: their name, underscores as spaces)."""


def label(counter: str) -> str:
    """A counter's name as the terminal shows it."""
    return LABELS.get(counter, counter.replace("_", " "))


def shown_value(counter: str, value: float) -> str:
    """A counter's value as the terminal shows it: dollars to 4 places for spend, else whole."""
    if counter == "spend_usd":
        return f"${value:.4f}"
    return str(round(value))


@dataclass
class _Count:
    total: float | None = None
    done: float = 0.0
    expected: bool = False
    step: int = 0  # the last 10% step a plain line was printed at
    shown: str | None = None  # the last plain line printed of it


class _Tally:
    """The counters of one command, shared by both displays (advances come from any thread)."""

    def __init__(self, hold: Callable[[], bool] | None = None) -> None:
        self.lock = threading.RLock()
        self.counts: dict[str, _Count] = {}
        self.over = False  # finished or halted: nothing more is shown
        self.hold = hold  # see PlainProgress
        self.held: list[str] = []

    def _write(self, line: str) -> None:
        """Show one line (each display says where)."""
        raise NotImplementedError

    def _release(self) -> None:
        held, self.held = self.held, []
        for line in held:
            self._write(line)

    def phase(self, text: str) -> None:
        with self.lock:
            if self._stopping():
                return
            if self.hold is not None and self.hold():
                self.held.append(printable_text(text))
                return
            self._release()
            self._write(printable_text(text))

    def _count(self, counter: str) -> _Count:
        return self.counts.setdefault(counter, _Count())

    def halt(self, erase: bool = False) -> None:
        """Show nothing more (each display says how it goes away)."""
        raise NotImplementedError

    def _stopping(self) -> bool:
        """Whether nothing more is shown: ended, or a signal asked to stop (the display is
        then taken away at once, so the command's own line is all that follows)."""
        if not self.over and signalled():
            self.halt(erase=True)
        return self.over

    def _set(self, counter: str, total: float | None, done: float) -> _Count:
        count = self._count(counter)
        count.total, count.done, count.expected = total, done, True
        count.step = _step(done, total)
        return count

    def beside(self) -> str:
        """The counters nobody expected, as ``name value`` (those at zero left out), in the
        order of :data:`LABELS`, then as they came."""
        order = list(LABELS)
        ranked = sorted(
            self.counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)
        )
        return ", ".join(
            f"{label(name)} {shown_value(name, c.done)}"
            for name, c in ranked
            if not c.expected and round(c.done, 6)
        )

    def line(self, counter: str, end: bool = False) -> str:
        """The plain line of an expected counter (``end``: its last, which says when the total
        was an estimate the count did not meet)."""
        count = self.counts[counter]
        done = shown_value(counter, count.done)
        if count.total is None:
            head = f"{label(counter)}: {done}"
        elif end and count.done != count.total:
            head = f"{label(counter)}: {done} (estimated {shown_value(counter, count.total)})"
        else:
            total = shown_value(counter, count.total)
            head = f"{label(counter)}: {done}/{total} ({_percent(count.done, count.total)}%)"
        beside = self.beside()
        return f"{head}, {beside}" if beside else head


def _step(done: float, total: float | None) -> int:
    """The 10% step ``done`` has reached of ``total`` (0 to 10; 10 once done)."""
    if not total or total <= 0:
        return 10 if total == 0 else 0
    return max(0, min(10, math.floor(done * 10 / total + 1e-9)))


def _percent(done: float, total: float) -> int:
    if total <= 0:
        return 100
    return max(0, min(100, math.floor(done * 100 / total + 1e-9)))


class PlainProgress(_Tally):
    """Progress as plain lines (see the module docstring).

    Args:
        stream: where lines go (default: ``sys.stderr`` as it is when each line is written).
        hold: while it returns True, phase lines wait; they print when it no longer does or
            when a counter is expected, and are dropped when the command ends first (a check
            that fails is then the only line; checks that pass were all it did).
    """

    def __init__(self, stream: TextIO | None = None, hold: Callable[[], bool] | None = None):
        super().__init__(hold)
        self.stream = stream

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def expect(self, counter: str, total: float | None, done: float = 0) -> None:
        with self.lock:
            if self._stopping():
                return
            self._release()
            self._set(counter, total, done)

    def advance(self, counter: str, amount: float) -> None:
        with self.lock:
            if self._stopping():
                return
            count = self._count(counter)
            count.done += amount
            if not count.expected or count.total is None:
                return
            step = _step(count.done, count.total)
            if step > count.step:
                count.step = step
                count.shown = self.line(counter)
                self._write(count.shown)

    def finish(self) -> None:
        """The command ended well: each expected counter's last line (unless the line printed
        last says the same); phases still held are dropped."""
        with self.lock:
            if self.over:
                return
            self.over = True
            self.held.clear()
            for name, count in self.counts.items():
                if count.expected:
                    last = self.line(name, end=True)
                    if last != count.shown:
                        self._write(last)

    def halt(self, erase: bool = False) -> None:
        """The command failed or was stopped: nothing more is printed (``erase`` is for the
        live display's sake)."""
        with self.lock:
            self.over = True
            self.held.clear()


class LiveProgress(_Tally):
    """Progress as rich bars on a terminal (see the module docstring); ``console`` writes to
    stderr; ``hold``: as :class:`PlainProgress`'s."""

    def __init__(self, console: Console, hold: Callable[[], bool] | None = None) -> None:
        super().__init__(hold)
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[beside]}", markup=False),
            console=console,
            redirect_stdout=False,
            refresh_per_second=4,
        )
        self.tasks: dict[str, TaskID] = {}
        self.started = False
        self._restore: Callable[[], None] | None = None

    def _write(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=True)

    def expect(self, counter: str, total: float | None, done: float = 0) -> None:
        with self.lock:
            if self._stopping():
                return
            self._release()
            self._set(counter, total, done)
            if counter in self.tasks:
                self.bars.update(self.tasks[counter], total=total, completed=done)
            else:
                self.tasks[counter] = self.bars.add_task(
                    label(counter), total=total, completed=done, beside=""
                )
            if not self.started:
                self.started = True
                self.bars.start()  # stderr now goes through the display: logs join it
                self._restore = route_log_handlers(sys.stderr)
            self._show_beside()

    def advance(self, counter: str, amount: float) -> None:
        with self.lock:
            if self._stopping():
                return
            count = self._count(counter)
            count.done += amount
            if counter in self.tasks:
                self.bars.update(self.tasks[counter], completed=count.done)
            else:
                self._show_beside()

    def _show_beside(self) -> None:
        if self.tasks:
            self.bars.update(next(iter(self.tasks.values())), beside=self.beside())

    def finish(self) -> None:
        """The command ended well: full bars, left on the screen."""
        with self.lock:
            if self.over:
                return
            for counter, task in self.tasks.items():
                self.bars.update(task, total=self.counts[counter].done)
            self._stop(erase=False)

    def halt(self, erase: bool = False) -> None:
        """Take the display away (``erase``: off the screen too, as after a stop)."""
        with self.lock:
            if not self.over:
                self._stop(erase)

    def _stop(self, erase: bool) -> None:
        self.over = True
        if not self.started:
            return
        if self._restore is not None:
            self._restore()
        self.bars.live.transient = erase
        self.bars.stop()


class _AboveTheBars(io.TextIOBase):
    """Writes to rich's stand-in for stderr (which prints above the live display), under a
    name rich does not see through: a console given the stand-in itself writes past it."""

    def __init__(self, proxy: TextIO) -> None:
        self.proxy = proxy

    def write(self, text: str) -> int:
        self.proxy.write(text)
        return len(text)

    def flush(self) -> None:
        self.proxy.flush()

    def isatty(self) -> bool:
        return self.proxy.isatty()

    def fileno(self) -> int:
        return self.proxy.fileno()


def _known_loggers() -> list:
    """The loggers made so far (other threads may add one while they are listed)."""
    for _ in range(5):
        try:
            return list(logging.Logger.manager.loggerDict.values())
        except RuntimeError:  # the table changed size while it was read
            continue
    return []


def route_log_handlers(stream: TextIO) -> Callable[[], None]:
    """Point the logging handlers that write to the real stderr (Prefect's console handler,
    a plain ``StreamHandler``) at ``stream`` (the live display's stand-in for stderr, which
    prints above the bars); returns what puts them back."""
    real = {id(sys.__stderr__)}
    proxied = getattr(stream, "rich_proxied_file", None)
    if proxied is not None:
        real.add(id(proxied))
        stream = _AboveTheBars(stream)
    loggers = [logging.getLogger(), *_known_loggers()]
    undo: list[Callable[[], None]] = []
    seen: set[int] = set()
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if id(handler) in seen or not isinstance(handler, logging.StreamHandler):
                continue
            seen.add(id(handler))
            console = getattr(handler, "console", None)
            if isinstance(console, Console) and id(console.file) in real:
                before_file = console.file
                console.file = stream
                undo.append(lambda c=console, f=before_file: setattr(c, "file", f))
            if id(handler.stream) in real:
                before = handler.setStream(stream)
                undo.append(lambda h=handler, s=before: h.setStream(s))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


# -- the display of a command ----------------------------------------------------------------

_display: list[PlainProgress | LiveProgress] = []


def stderr_console() -> Console:
    """A rich console on stderr (it reads NO_COLOR, TERM and whether stderr is a terminal)."""
    return Console(stderr=True, highlight=False)


def make_display(hold: Callable[[], bool] | None = None) -> PlainProgress | LiveProgress:
    """The live display when stderr is an interactive terminal, else plain lines."""
    console = stderr_console()
    if console.is_interactive:
        return LiveProgress(console, hold)
    return PlainProgress(hold=hold)


@contextmanager
def showing_progress(quiet: bool = False, hold: Callable[[], bool] | None = None) -> Iterator[None]:
    """Show the progress of the command run in the block (nothing with ``quiet``, and logs
    below warnings left out: :func:`quiet_logs`).

    A block that ends well (or with exit code 0) finishes the display; a stop (a signal,
    Ctrl-C) erases it; any other end leaves it as it was. ``hold``: see :class:`PlainProgress`.
    """
    if quiet:
        quiet_logs()
        yield
        return
    display = make_display(hold)
    _display.append(display)
    error: BaseException | None = None
    try:
        with progress.listening(display):
            yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        _display.remove(display)
        stopped = signalled() or isinstance(error, KeyboardInterrupt | typer.Abort)
        well = error is None or (isinstance(error, typer.Exit) and not error.exit_code)
        try:
            if well and not stopped:
                display.finish()
            else:
                display.halt(erase=stopped)
        except Exception:  # noqa: BLE001 - a display that cannot be written never fails a command
            pass


def quiet_logs() -> None:
    """``--quiet``: Prefect logs its warnings and errors only (unless PREFECT_LOGGING_LEVEL is
    set; Prefect reads it when imported, which comes later), and so does the build's own log."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logger = logging.getLogger("medgrit.build")
    if _warnings_only not in logger.filters:
        logger.addFilter(_warnings_only)


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def end_progress() -> None:
    """Finish the display before the command prints its result."""
    for display in _display:
        display.finish()


def stop_progress() -> None:
    """Take the display away before an error line (erased after a stop)."""
    for display in _display:
        display.halt(erase=signalled())


# -- errors --------------------------------------------------------------------------------


def error_prefix() -> str:
    """``medgrit: error:``, in red where stderr is a terminal that shows colour."""
    console = stderr_console()
    if console.is_terminal and console.color_system is not None and not console.no_color:
        return typer.style("medgrit: error:", fg="red", bold=True)
    return "medgrit: error:"
