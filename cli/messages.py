"""What the command line says: one-line errors with their exit codes, names as people read them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer

from medgrit.core.fsnames import escape_name
from medgrit.core.markdown import printable_text

EXIT_USER_ERROR = 2

_subjects: list[str] = []


@contextmanager
def speaking_of(subject: str) -> Iterator[None]:
    """Start every error line of the block with ``subject``: the checks of ``build`` say which
    deployment of a service config they are about (``service.toml: deployments[0] (nightly)``).
    """
    _subjects.append(subject)
    try:
        yield
    finally:
        _subjects.pop()


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print one error line to stderr (names escaped; the progress display taken away first,
    ``medgrit: error:`` in red on a terminal) and exit."""
    if _subjects:
        message = f"{': '.join(_subjects)}: {message}"
    error_line(printable_text(" ".join(message.split())))
    raise typer.Exit(code)


def error_line(text: str) -> None:
    """Print ``medgrit: error: TEXT`` to stderr after taking the progress display away;
    ``text`` must be one line with nothing a terminal acts on (an escape code in a folder
    name, say): :func:`~medgrit.core.markdown.printable_text` of it."""
    from medgrit.cli.terminal import error_prefix, stop_progress

    stop_progress()
    typer.echo(f"{error_prefix()} {text}", err=True)


def shown(path: Path | str) -> str:
    return escape_name(str(path))


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {shown(exc.filename)}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def fail_unreadable_tables(dataset: Path, exc: BaseException) -> NoReturn:
    """A dataset whose table part pyarrow cannot read: one line pointing at ``validate``."""
    from medgrit.adapters.store.parquet import UnreadablePart

    reason = exc.reason if isinstance(exc, UnreadablePart) else type(exc).__name__
    fail(
        f"{shown(dataset)} holds a table part that is not readable Parquet "
        f"({reason}); `medgrit validate {shown(dataset)}` says which"
    )
