"""How medgrit's tables look on stdout: rich tables on a terminal (with its colours and
width), plain aligned text elsewhere (logs, pipes, scripts). Every cell is shown with control
characters escaped (:func:`~medgrit.core.markdown.printable_text`) and never read as rich markup.
"""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from medgrit.core.markdown import printable_text
from medgrit.core.summary import BuildSummary, render_summary_text


def _terminal_text(*renderables: RenderableType) -> str | None:
    """``renderables`` as stdout's terminal shows them (with its colours and width), or None
    when stdout is not a terminal."""
    stdout = Console(highlight=False)
    if not stdout.is_terminal or stdout.is_dumb_terminal:
        return None
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=True,
        color_system=stdout.color_system,  # type: ignore[arg-type]
        no_color=stdout.no_color,
        width=stdout.width,
        highlight=False,
    )
    for renderable in renderables:
        console.print(renderable)
    return buffer.getvalue().rstrip("\n")


def _cell(value: object) -> Text:
    return Text(printable_text(str(value)))


def summary_tables(summary: BuildSummary) -> list[RenderableType]:
    """A build's summary as rich renderables: a title, the facts and the tables."""
    title = Text("medgrit dataset ", style="bold")
    title.append(printable_text(summary.out_dir))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    for name, text in summary.facts:
        facts.add_row(_cell(name), _cell(text))
    parts: list[RenderableType] = [title, facts]
    for part in summary.tables:
        table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
        for header, align in zip(part.header, part.align, strict=True):
            table.add_column(_cell(header), justify="right" if align == "right" else "left")
        for row in part.rows:
            table.add_row(*(_cell(c) for c in row))
        parts.append(table)
    return parts


def summary_for_stdout(summary: BuildSummary) -> str:
    """The summary as stdout shows it: rich tables on a terminal, plain aligned text
    elsewhere (:func:`~medgrit.core.summary.render_summary_text`)."""
    text = _terminal_text(*summary_tables(summary))
    return text + "\n" if text is not None else render_summary_text(summary)


def status_for_stdout(
    header: tuple[str, ...],
    rows: list[tuple[object, ...]],
    total: tuple[object, ...],
    align: tuple[str, ...],
    failed: list[str],
) -> str | None:
    """The table of ``medgrit status`` as a terminal shows it (a rich table with a totals
    row, failed shards' reasons in red below), or None when stdout is not a terminal."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for name, how in zip(header, align, strict=True):
        table.add_column(_cell(name), justify="right" if how == "right" else "left")
    for row in rows:
        cells = [_cell(c) for c in row]
        cells[1].stylize({"done": "green", "failed": "red"}.get(str(row[1]), "yellow"))
        table.add_row(*cells)
    table.add_section()
    table.add_row(*(_cell(c) for c in total), style="bold")
    reasons = [Text(line, style="red") for line in failed]
    return _terminal_text(table, *reasons)
