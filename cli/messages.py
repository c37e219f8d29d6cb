"""What the command line says: one-line errors with their exit codes, names as people read them."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from medgrit.core.fsnames import escape_name

EXIT_USER_ERROR = 2


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print one error line to stderr (names escaped) and exit."""
    typer.echo(f"medgrit: error: {' '.join(escape_name(message).split())}", err=True)
    raise typer.Exit(code)


def shown(path: Path | str) -> str:
    return escape_name(str(path))


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {shown(exc.filename)}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def fail_unreadable_tables(dataset: Path, exc: BaseException) -> NoReturn:
    """A dataset whose table part pyarrow cannot read: one line pointing at ``validate``."""
    fail(
        f"{shown(dataset)} holds a table part that is not readable Parquet "
        f"({type(exc).__name__}); `medgrit validate {shown(dataset)}` says which"
    )
