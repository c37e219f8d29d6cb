"""Small pieces of the report's HTML: ``data:`` images and tables of escaped cells.

Every string from the data goes through :func:`html.escape`; numbers (ints) go in right-aligned
cells.
"""

from __future__ import annotations

import base64
from html import escape


def png_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI (the page fetches nothing)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: bytes, alt: str, css_class: str = "chart") -> str:
    """An ``<img>`` showing ``png``, with an escaped ``alt`` text."""
    return f'<img class="{css_class}" alt="{escape(alt)}" src="{png_uri(png)}">'


def table(table_id: str, header: list[str], rows: list[list[object]]) -> str:
    """A table; ints go in right-aligned number cells, everything else is escaped text."""

    def cell(value: object, tag: str) -> str:
        if isinstance(value, int):
            return f'<{tag} class="n">{value}</{tag}>'
        return f"<{tag}>{escape(str(value))}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
