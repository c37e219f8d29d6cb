"""Text from users and sources (paths, dataset names, licences, error messages), made inert
where it lands in Markdown: it reads as the same words and starts no Markdown syntax.

The rule is CommonMark's (with GitHub's tables and strikethrough, which the Prefect UI and the
Hugging Face hub render), applied as narrowly as keeps the text inert, so that paths, model
names and numbers stay readable in a terminal (``qwen2.5-vl``, ``1.5``, ``left_kidney``):

- Undecodable file-name bytes, control characters (C0, DEL, C1: ESC, tab, newline...) and
  Unicode line and paragraph separators become visible escapes (``\\x1b``, ``\\t``, ``\\n``,
  ``\\u2028``; :func:`printable_text`). Text therefore never spans two lines, so it can start
  no block but on the line it is placed on, and no terminal reads an escape sequence from it.
- Characters that open or close inline syntax wherever they stand are backslash-escaped:
  the backtick (code spans), ``*`` and ``~`` (emphasis, strikethrough), ``[`` and ``]`` (links and
  images), ``|`` (table cells). ``<``, ``>`` and ``&`` become ``&lt;``, ``&gt;``, ``&amp;``
  (raw HTML, autolinks, block quotes, entities).
- ``_`` is escaped unless a letter or digit stands on both sides of it: CommonMark never
  opens or closes emphasis with such an underscore, so snake_case words stay as written.
- ``\\`` is escaped only where the character after it (or the end of the text) would make it
  an escape or a hard line break; ``C:\\data`` and the ``\\xff`` of escaped names stay as is.
- Text may be placed at the start of a line, so what could start a block there is escaped at
  the text's start only: ``#`` before a space (a heading), ``-``, ``+`` or ``=`` unless a
  letter or digit follows (a list, a thematic break, a setext underline; ``-1`` stays), and the
  ``.`` or ``)`` of an ordered list number (``2.`` before a space). Leading and trailing
  whitespace becomes a character reference (``&#32;``), so the line starts with ``&`` (four
  spaces start no code block, one no ``#`` heading) and renderers trim no space away.

Dots, dashes, colons and parentheses elsewhere start nothing and are left alone. Links need
``[``, ``]`` or ``<``, so no ``javascript:`` link can form (a bare ``https://`` address stays
text here; renderers that link such addresses make only http(s) and mail links of it).

:func:`markdown_code` shows a path or a model id verbatim in a code span instead, and
:func:`markdown_table` builds a table of escaped cells.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from medgrit.core.fsnames import escape_name

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_SEPARATORS = {"Cc", "Zl", "Zp"}  # controls, and what Python's splitlines also splits on
_ALWAYS = {"`": "\\`", "*": "\\*", "~": "\\~", "[": "\\[", "]": "\\]", "|": "\\|"}
_HTML = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ORDERED = re.compile(r"\d{1,9}[.)](?: |$)")
_HEADING = re.compile(r"#+(?: |$)")
_ALIGN = {"left": "---", "right": "---:"}


# Bidirectional embeddings, overrides, isolates and marks: they reorder what a terminal or a
# page shows around them, so a name could show other text than it holds.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _visible(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if unicodedata.category(char) not in _SEPARATORS and char not in _BIDI:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable_text(text: str) -> str:
    """``text`` on one line with nothing a terminal or a renderer acts on unseen: undecodable
    name bytes as ``\\xNN`` (:func:`~medgrit.core.fsnames.escape_name`), control characters,
    line separators and bidi controls as ``\\t``, ``\\n``, ``\\x1b``, ``\\u2028``, ``\\u202e``."""
    text = escape_name(text)
    if all(c.isprintable() or c == " " for c in text):  # the common case, and cheap
        return text
    return "".join(_visible(c) for c in text)


def escape_markdown(text: str) -> str:
    """``text`` as inert inline Markdown (the rules are in the module docstring): it renders
    as :func:`printable_text` of itself, in a paragraph, a heading, a list item, a link's text
    or a table cell, and starts no syntax of its own."""
    text = printable_text(text)
    pieces = [_escape_char(text, i) for i in range(len(text))]
    if not text:
        return text
    first = text[0]
    if first == "#" and _HEADING.match(text):
        pieces[0] = "\\#"
    elif first in "-+=" and not (len(text) > 1 and text[1].isalnum()):
        pieces[0] = "\\" + first
    elif number := _ORDERED.match(text):
        at = len(number.group().rstrip(" ")) - 1
        pieces[at] = "\\" + text[at]
    for at in (0, -1):  # as a character reference, a space is neither indent nor trimmed
        if text[at].isspace():
            pieces[at] = f"&#{ord(text[at])};"
    for i, char in enumerate(text):  # a backslash escapes only ASCII punctuation after it
        if char == "\\":
            after = pieces[i + 1][:1] if i + 1 < len(pieces) else ""
            if not after or after in _ASCII_PUNCTUATION:
                pieces[i] = "\\\\"
    return "".join(pieces)


def _escape_char(text: str, i: int) -> str:
    char = text[i]
    if char in _ALWAYS:
        return _ALWAYS[char]
    if char in _HTML:
        return _HTML[char]
    if char == "_":
        inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        return "_" if inside else "\\_"
    return char


def markdown_code(text: str) -> str:
    """``text`` as a code span (a path, a model id), which shows it verbatim in code type.

    The fence is one backtick longer than any run of backticks in the text, with spaces inside
    where CommonMark would otherwise take or trim a character. Not for table cells: a ``|``
    inside a code span still ends a cell there (use :func:`escape_markdown`).
    """
    text = printable_text(text)
    if not text:
        return ""
    runs = re.findall(r"`+", text)
    fence = "`" * (max((len(r) for r in runs), default=0) + 1)
    stripped = text.startswith(" ") and text.endswith(" ") and text.strip(" ")
    pad = " " if text[0] == "`" or text[-1] == "`" or stripped else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(
    header: Sequence[object],
    rows: Iterable[Sequence[object]],
    align: Sequence[str] | None = None,
) -> str:
    """A GitHub-style table whose every cell (header included) is :func:`escape_markdown` of
    ``str(cell)``, so no cell adds a column, a row or any other syntax.

    Args:
        header: the column names.
        rows: the rows, each with one cell per column.
        align: ``"left"`` or ``"right"`` per column (default: all left).

    Raises:
        ValueError: for a row or an ``align`` whose length is not the header's, or an unknown
            alignment.
    """
    align = list(align) if align is not None else ["left"] * len(header)
    if len(align) != len(header) or any(a not in _ALIGN for a in align):
        raise ValueError(f"align needs one of {sorted(_ALIGN)} per column, got {align!r}")
    lines = [_row(header), "|" + "".join(_ALIGN[a] + "|" for a in align)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(header)} columns")
        lines.append(_row(row))
    return "\n".join(lines)


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(escape_markdown(str(c)) for c in cells) + " |"


def escape_cells(rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """Records with every string value :func:`escape_markdown`-ed, for tables whose viewer
    renders string cells as Markdown (Prefect's table artifacts); numbers stay numbers."""
    return [{k: _cell(v) for k, v in row.items()} for row in rows]


def _cell(value: object) -> object:
    return escape_markdown(value) if isinstance(value, str) else value
