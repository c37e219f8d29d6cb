"""Text from users and sources lands in Markdown inert: rendered by a real CommonMark renderer
(markdown-it-py, with GitHub's tables and strikethrough), it shows the same characters and makes
no heading, link, image, code or HTML of its own. Checked on the helper and on the build summary
as the CLI prints it and the Prefect UI shows it."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from medgrit.core.markdown import (
    escape_cells,
    escape_markdown,
    markdown_code,
    markdown_table,
    printable_text,
)
from medgrit.core.status import ShardStatus, render_status_table
from medgrit.core.summary import render_summary

MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])
MD.validateLink = lambda url: True  # renders javascript: and file: links: none may form unasked
TABLE_TAGS = {"table", "thead", "tbody", "tr", "th", "td"}
HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "[a](javascript:alert(1))",
    "![i](javascript:alert(1))",
    "# head",
    "a | b\n| --- | --- |\n| c | d",
    "\x1b[31mred\x1b[0m",
    "<script>alert(1)</script>",
    "`code` ``x``",
    "*em* _em_ **strong** ~~gone~~",
    "1. one",
    "- item",
    "> quote",
    "    indented",
    "===",
    "---",
    "&lt;not a tag&gt; &amp;",
    "<https://example.org>",
    "[ref]: https://example.org",
    "line\u2028# second",
    "back\\slash\\",
    "bad\udcff name",
]

# Characters that Markdown gives a meaning, mixed into any Unicode (lone surrogates stand for
# undecodable file-name bytes).
SIGNIFICANT = st.sampled_from(list("#*_`~[]()<>!&|\\-+=.:;) \t\n\r\x00\x1b\x7f\x85\u2028\xa0"))
TEXT = st.text(
    alphabet=st.one_of(
        SIGNIFICANT,
        st.characters(codec="utf-8"),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
        st.sampled_from(["1", "a", "é"]),
    ),
    max_size=40,
)


class _Rendered(HTMLParser):
    """The tags, link targets and the text of each element of rendered HTML."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.elements: list[tuple[str, list[str]]] = []
        self._open: list[tuple[str, list[str]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self.hrefs += [v for k, v in attrs if k in ("href", "src")]
        self._open.append((tag, []))
        self.elements.append(self._open[-1])

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][1].append(data)

    def texts(self, tag: str) -> list[str]:
        """The text directly inside each ``tag`` element, in order."""
        return ["".join(parts) for name, parts in self.elements if name == tag]

    def text(self, tag: str) -> str:
        return "".join(self.texts(tag))


def _rendered(markdown: str) -> _Rendered:
    return _Rendered(MD.render(markdown))


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_escaped_text_renders_as_itself_in_a_paragraph(text: str) -> None:
    page = _rendered(escape_markdown(text))
    assert set(page.tags) <= {"p"}
    assert page.text("p") == printable_text(text)


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT)
def test_escaped_text_renders_as_itself_in_a_table_cell(left: str, right: str) -> None:
    table = markdown_table(["name", "licence"], [[left, right]])
    page = _rendered(f"Sources:\n\n{table}\n")
    assert set(page.tags) <= TABLE_TAGS | {"p"}
    assert page.tags.count("tr") == 2 and page.tags.count("td") == 2
    assert page.texts("td") == [printable_text(left), printable_text(right)]


@settings(max_examples=200, deadline=None)
@given(TEXT.filter(bool))
def test_a_code_span_shows_any_text_verbatim(text: str) -> None:
    for markdown in (markdown_code(text), f"## dataset {markdown_code(text)}"):
        page = _rendered(markdown)
        assert set(page.tags) <= {"p", "h2", "code"} and page.tags.count("code") == 1
        assert page.text("code") == printable_text(text)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_inert_everywhere_it_is_placed(text: str) -> None:
    escaped = escape_markdown(text)
    assert "\x1b" not in escaped and "\n" not in escaped and "<" not in escaped
    for markdown in (escaped, f"- failed: {escaped}", f"## {escaped}", f"[{escaped}](x.html)"):
        page = _rendered(markdown)
        assert set(page.tags) <= {"p", "ul", "li", "h2", "a"}
        assert page.tags.count("a") == markdown.startswith("[") and page.hrefs in ([], ["x.html"])


def test_ordinary_words_numbers_and_paths_stay_as_written() -> None:
    for text in ("qwen2.5-vl", "1.5", "-1", "left_kidney", "/data/Task09_Spleen", "C:\\data"):
        assert escape_markdown(text) == text
    assert markdown_code("/tmp/medgrit-demo") == "`/tmp/medgrit-demo`"


def test_control_characters_and_undecodable_bytes_are_shown_escaped() -> None:
    assert printable_text("\x1b[31mred\ttab\nline\x85\u2028") == (
        "\\x1b[31mred\\ttab\\nline\\x85\\u2028"
    )
    assert printable_text("bad\udcffname.png") == "bad\\xffname.png"


@given(st.lists(st.lists(TEXT, min_size=3, max_size=3), max_size=5))
@settings(max_examples=100, deadline=None)
def test_a_table_has_the_rows_and_cells_it_was_given(rows: list[list[str]]) -> None:
    page = _rendered(markdown_table(["a", "b", "c"], rows, ["left", "right", "left"]))
    assert page.tags.count("tr") == len(rows) + 1
    assert page.tags.count("td") == 3 * len(rows) and page.tags.count("th") == 3


def test_a_table_refuses_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b", "c"], [["x", "y"]])


def test_table_records_keep_their_numbers() -> None:
    rows = escape_cells([{"modality": "<b>ct</b>", "count": 3, "share": 0.5}])
    assert rows == [{"modality": "&lt;b&gt;ct&lt;/b&gt;", "count": 3, "share": 0.5}]


# -- where the CLI and the Prefect UI show it -------------------------------------------------

HOSTILE_OUT = "/tmp/x/<img src=x onerror=alert(1)>/# head/[a](javascript:alert(1))"
TOTALS = {
    "images_by_split": {"train": 3, "test": 1},
    "images_by_modality": {"ct": 3, "<b>mr</b>": 1},
    "qa_by_modality_task": {"ct": {"VG": 2, "ROC": 1}, "<b>mr</b>": {"MIA": 1}},
    "rejects_by_reason": {"empty_mask": 2, "# [x](javascript:1)": 1},
}


def _assert_inert_summary(markdown: str, links: int) -> _Rendered:
    page = _rendered(markdown)
    assert page.tags.count("h2") == 1 and "h1" not in page.tags and "img" not in page.tags
    assert set(page.tags) <= {"h2", "code", "ul", "li", "a", "p"} | TABLE_TAGS
    assert page.text("code") == HOSTILE_OUT  # the path, verbatim, in the heading
    assert page.tags.count("a") == links and all(h.startswith("file:///") for h in page.hrefs)
    assert page.tags.count("table") == 2 and page.tags.count("tr") == 1 + 2 + 1 + 2
    assert "empty_mask" in markdown  # snake_case reasons read as written, in the terminal too
    return page


def test_the_build_summary_shows_any_out_path_inert() -> None:
    rows = {"images": 4, "regions": 9, "conversations": 4, "rejects": 3}
    summary = render_summary(HOSTILE_OUT, rows, TOTALS, 1, 2, ["s0002"])
    _assert_inert_summary(summary, links=0)


def test_the_prefect_summary_artifact_shows_any_out_path_inert(tmp_path: Path) -> None:
    from medgrit.flows.build import summary_markdown
    from medgrit.flows.dashboard import BuildDashboard
    from medgrit.schemas.config import BuildConfig

    out = tmp_path / "<img src=x onerror=alert(1)>" / "# head" / "[a](javascript:alert(1))"

    class Recorded:
        def progress(self, key: str, percent: float, description: str) -> None: ...

        def table(self, key: str, rows: list, description: str) -> None: ...

    dashboard = BuildDashboard(BuildConfig(out=str(out)), sink=Recorded())
    summary = render_summary(HOSTILE_OUT, {"images": 4}, TOTALS, 1, 2, [])
    page = _assert_inert_summary(summary_markdown(summary, dashboard, str(out)), links=1)
    assert page.hrefs == [out.absolute().as_uri()]
    assert page.text("a") == str(out.absolute())  # the link shows the folder as it is named


def test_the_status_table_prints_no_escape_sequence() -> None:
    shard = ShardStatus("s0001", "failed", 1, 0, 0, 0, 0, error="\x1b[2Jcleared\nsecond line")
    table = render_status_table([shard])
    assert "\x1b" not in table
    assert table.splitlines()[-1] == "  s0001: \\x1b[2Jcleared\\nsecond line"


def test_bidi_controls_are_shown_escaped_on_a_terminal() -> None:
    # A right-to-left override would show "cod.exe" for "exe.doc" (reversed after it).
    assert printable_text("scan\u202egpj.exe") == "scan\\u202egpj.exe"
    assert printable_text("a\u2066b\u2069c") == "a\\u2066b\\u2069c"
    assert printable_text("caf\u00e9 \u0928\u092e\u0938\u094d\u200d\u0924\u0947") == (
        "caf\u00e9 \u0928\u092e\u0938\u094d\u200d\u0924\u0947"  # letters and joiners stay
    )
