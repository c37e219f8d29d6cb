"""``medgrit report``: one self-contained HTML page whose numbers are the dataset's.

One demo dataset is built per module; the page is checked as a user would: its tables against
dataset.json's totals, its images decode, strings from the data are escaped, and headless
Chromium renders it with every image loaded.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import build_demo_dataset
from PIL import Image

from medgrit.core.report_stats import box_measures, centre_histogram, choose_samples

EVIL = '<script>alert("x")</script> & $\\alpha$ organ'
EVIL_DATASET = "Odd <b>name</b> & 'quotes'"


class _Page(HTMLParser):
    """Tables by id (rows of cell texts), image sources, and the body's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.body: dict[str, str | None] = {}
        self.samples: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "body":
            self.body = a
        if a.get("data-image-id"):
            self.samples.append(a["data-image-id"] or "")
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _pairs(rows: list[list[str]]) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in rows[1:]}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    return build_demo_dataset(tmp_path_factory.mktemp("report") / "demo", demo_dir, 40)


@pytest.fixture(scope="module")
def report_file(dataset: Path) -> Path:
    from medgrit.adapters.report.html import write_report

    return write_report(dataset, dataset.parent / "report.html", samples=10, seed=3)


@pytest.fixture(scope="module")
def page(report_file: Path) -> _Page:
    return _parse(report_file.read_text(encoding="utf-8"))


def test_the_report_is_one_file_that_fetches_nothing(report_file: Path, page: _Page) -> None:
    html = report_file.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html, re.IGNORECASE)
    assert "<link" not in html.lower()
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    assert not list(report_file.parent.glob(".report.html.*"))  # no temporary left behind


def test_the_tables_equal_the_manifest_totals(dataset: Path, page: _Page) -> None:
    from medgrit.adapters.store.bookkeeping import load_dataset

    totals = load_dataset(dataset).to_json()["totals"]
    shown = _pairs(page.tables["totals"])
    for table in ("images", "regions", "conversations", "rejects"):
        assert shown[table] == totals["rows"][table]
    assert _pairs(page.tables["by-modality"]) == totals["images_by_modality"]
    assert _pairs(page.tables["by-split"]) == totals["images_by_split"]
    assert _pairs(page.tables["rejects"]) == totals["rejects_by_reason"]
    header, *rows = page.tables["by-modality-task"]
    matrix = {row[0]: dict(zip(header[1:], map(int, row[1:]), strict=True)) for row in rows}
    for modality, per_task in totals["qa_by_modality_task"].items():
        assert {t: matrix[modality][t] for t in per_task} == per_task
        assert matrix[modality]["all"] == sum(per_task.values())
    qa = sum(sum(p.values()) for p in totals["qa_by_modality_task"].values())
    assert shown["qa pairs"] == qa == matrix["all"]["all"]
    assert sum(_pairs(page.tables["labels"]).values()) == totals["rows"]["regions"]


def test_the_gallery_shows_every_modality_with_decodable_pictures(
    dataset: Path, page: _Page
) -> None:
    from medgrit.adapters.store.validate import read_table

    images = {row["image_id"]: row for row in read_table(dataset, "images")}
    assert len(page.samples) == 10
    assert {images[i]["modality"] for i in page.samples} == {r["modality"] for r in images.values()}
    pictures = [i for i in page.images if i.get("class") == "sample-image"]
    assert len(pictures) == len(page.samples)
    for img in page.images:
        data = base64.b64decode((img["src"] or "").removeprefix("data:image/png;base64,"))
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.width > 0
            assert len(picture.getcolors(1 << 24) or [0, 1]) > 1  # not a blank picture


def test_the_gallery_is_chosen_by_the_seed(dataset: Path, tmp_path: Path) -> None:
    from medgrit.adapters.report.html import write_report

    def shown(seed: int, name: str) -> list[str]:
        path = write_report(dataset, tmp_path / name, samples=8, seed=seed)
        return _parse(path.read_text(encoding="utf-8")).samples

    assert shown(0, "a.html") == shown(0, "b.html")
    assert shown(0, "a.html") != shown(1, "c.html")


def test_no_source_file_name_reaches_the_page(dataset: Path, report_file: Path) -> None:
    from medgrit.adapters.store.validate import read_table

    html = report_file.read_text(encoding="utf-8")
    names = {row["source"].split("#")[0] for row in read_table(dataset, "rejects")}
    names |= {case["case"] for shard in _manifest(dataset)["shards"] for case in shard["cases"]}
    assert names
    for name in names:
        assert name not in html


def _manifest(dataset: Path) -> dict:
    from medgrit.adapters.store.bookkeeping import load_dataset

    return load_dataset(dataset).to_json()


def _rewrite(part: Path, column: str, value: str, schema: pa.Schema) -> None:
    with part.open("rb") as handle:
        table = pq.read_table(handle, schema=schema)
    index = table.schema.get_field_index(column)
    replaced = pa.array([value] * table.num_rows, type=pa.string())
    pq.write_table(table.set_column(index, schema.field(column), replaced), part)


def test_strings_from_the_data_are_escaped(dataset: Path, tmp_path: Path) -> None:
    from medgrit.adapters.report.html import write_report
    from medgrit.schemas.tables import IMAGES, REGIONS

    copy = tmp_path / "odd"
    shutil.copytree(dataset, copy)
    for part in (copy / "regions").glob("part-*.parquet"):
        _rewrite(part, "label", EVIL, REGIONS)
    for part in (copy / "images").glob("part-*.parquet"):
        _rewrite(part, "dataset", EVIL_DATASET, IMAGES)
    html = write_report(copy, tmp_path / "odd.html", samples=4).read_text(encoding="utf-8")
    assert html.count("<script") == 1  # the page's own script only
    assert "<b>name" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; $\\alpha$ organ" in html
    assert "Odd &lt;b&gt;name&lt;/b&gt; &amp; &#x27;quotes&#x27;" in html
    page = _parse(html)
    assert _pairs(page.tables["labels"]) == {EVIL: len(pq.read_table(copy / "regions"))}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_chromium_renders_the_page_with_every_image(report_file: Path, tmp_path: Path) -> None:
    url = report_file.resolve().as_uri()
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
    shot = tmp_path / "report.png"
    run = {"capture_output": True, "text": True, "timeout": 120, "check": False}
    dom = subprocess.run(
        ["chromium", *flags, "--virtual-time-budget=10000", "--dump-dom", url], **run
    )
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    loaded = re.search(r'data-loaded="([^"]*)"', body.group(0))
    assert loaded and loaded.group(1) == str(len(_parse(report_file.read_text()).images))
    subprocess.run(
        ["chromium", *flags, "--window-size=1280,2000", f"--screenshot={shot}", url], **run
    )
    with Image.open(shot) as picture:
        assert picture.size == (1280, 2000)
        assert len(picture.convert("RGB").getcolors(1 << 24) or [0, 1]) > 1
    if os.environ.get("MEDGRIT_SCREENSHOT_DIR"):
        target = Path(os.environ["MEDGRIT_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")


def test_the_command_writes_the_report(medgrit_offline, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = medgrit_offline("report", str(dataset), "--out", str(out), "--samples", "2")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    assert len(_parse(out.read_text(encoding="utf-8")).samples) == 2


def test_user_errors_are_one_line_and_exit_2(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    not_a_dataset = tmp_path / "plain"
    not_a_dataset.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = {
        "not a medgrit dataset": [str(not_a_dataset), "--out", str(tmp_path / "a.html")],
        "is a folder": [str(dataset), "--out", str(tmp_path)],
        "which is a file": [str(dataset), "--out", str(a_file / "r.html")],
        "does not exist": [str(dataset), "--out", str(tmp_path / "missing" / "r.html")],
        "inside the dataset": [str(dataset), "--out", str(dataset / "r.html")],
    }
    for words, args in cases.items():
        result = medgrit_offline("report", *args)
        assert result.returncode == 2, (words, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (words, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "plain"]
    assert not (dataset / "r.html").exists()


def test_an_existing_file_is_replaced_only_with_overwrite(
    medgrit_offline, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    out.write_text("my notes")
    result = medgrit_offline("report", str(dataset), "--out", str(out), "--samples", "1")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"--out {out} exists; give --overwrite" in line
    assert out.read_text() == "my notes"
    result = medgrit_offline("report", str(dataset), "--out", "/proc/r.html", "--samples", "1")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--out /proc/r.html: the folder /proc is not writable" in line, line
    result = medgrit_offline(
        "report", str(dataset), "--out", str(out), "--samples", "1", "--overwrite"
    )
    assert result.returncode == 0, result.stderr
    assert len(_parse(out.read_text(encoding="utf-8")).samples) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_samples_cover_each_modality_whatever_the_row_order() -> None:
    ids = [f"img{i:03d}" for i in range(60)]
    mods = ["ct"] * 40 + ["mr"] * 15 + ["xray"] * 5
    chosen = choose_samples(ids, mods, 5, seed=7)
    assert {mods[i] for i in chosen} == {"ct", "mr", "xray"} and len(set(chosen)) == 5
    order = np.random.default_rng(0).permutation(60)
    shuffled = choose_samples([ids[i] for i in order], [mods[i] for i in order], 5, seed=7)
    assert sorted(ids[order[i]] for i in shuffled) == sorted(ids[i] for i in chosen)
    assert [mods[i] for i in choose_samples(ids, mods, 2, seed=1)] == ["ct", "mr"]
    assert choose_samples(ids, mods, 100, seed=1) == sorted(
        range(60), key=lambda i: (mods[i], ids[i])
    )


def test_box_measures_are_in_qwen_units() -> None:
    measures = box_measures(np.array([[0, 0, 999, 999], [100, 200, 300, 600]]))
    assert measures.widths.tolist() == [999, 200]
    assert measures.heights.tolist() == [999, 400]
    assert measures.centre_x.tolist() == [499.5, 200] and measures.centre_y.tolist() == [499.5, 400]
    grid = centre_histogram(measures, bins=10)
    assert grid.sum() == 2 and grid[4, 4] == 1 and grid[4, 2] == 1  # rows are y
