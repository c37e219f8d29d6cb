"""``medgrit report`` shows what a build threw away: each reject reason with its count, share and
meaning, and examples of it (the image with its boxes, the rejected turn with the words that
broke the rule marked, or a record-level row's detail); and gallery labels never overlap.

One small demo build gets extra reject rows, written with the writer's own detail format
(``turn_detail``), as an LLM build records them; the page is read back with ``html.parser``.
"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import build_demo_dataset
from PIL import Image

from medgrit.core.conversations import turn_detail
from medgrit.core.generation import QA
from medgrit.core.verify import Failure
from medgrit.schemas.tables import REJECTS

ANSWER = "The <script>alert(1)</script> sits beside the Left  Lung & heart."
ANSWER_SHOWN = (
    "The &lt;script&gt;alert(1)&lt;/script&gt; sits beside the <mark>Left  Lung</mark> &amp; heart."
)


class _Page(HTMLParser):
    """The rejects table's rows, each example block's attributes, texts and images."""

    def __init__(self) -> None:
        super().__init__()
        self.rejects: list[list[str]] = []
        self.sections: dict[str, list[dict]] = {}
        self._in_rejects = False
        self._cell: list[str] | None = None
        self._example: dict | None = None
        self._reason: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "rejects":
            self._in_rejects = True
        elif self._in_rejects and tag == "tr":
            self.rejects.append([])
        elif self._in_rejects and tag in ("td", "th"):
            self._cell = []
        if tag == "section" and "reject-reason" in (a.get("class") or ""):
            self._reason = a["data-reason"]
            self.sections[self._reason or ""] = []
        if tag == "div" and "reject-example" in (a.get("class") or ""):
            self._example = {"attrs": a, "text": [], "images": []}
            self.sections[self._reason or ""].append(self._example)
            self._depth = 0
        if self._example is not None and tag == "div":
            self._depth += 1
        if self._example is not None and tag == "img":
            self._example["images"].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._in_rejects:
            self._in_rejects = False
        elif self._in_rejects and tag in ("td", "th") and self._cell is not None:
            self.rejects[-1].append("".join(self._cell).strip())
            self._cell = None
        if self._example is not None and tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._example = None
        if tag == "section":
            self._reason = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._example is not None:
            self._example["text"].append(data)


def _reject(reason: str, stage: str, detail: str, image: dict | None, case: dict) -> dict:
    return {
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "source": f"{case['dataset']}/{case['case']}_0000.nii.gz",
        "dataset": case["dataset"],
        "case_id": case["case_id"],
        "image_id": image["image_id"] if image else None,
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict:
    """A 12-image demo build whose rejects gain rows of an LLM build: turns that lie, one
    unreadable case and an answer that is no JSON."""
    from medgrit.adapters.store.bookkeeping import load_dataset

    out = build_demo_dataset(tmp_path_factory.mktemp("rejects") / "demo", demo_dir, 12)
    manifest = load_dataset(out)
    cases = {
        c.case_id: {"case": c.case, "case_id": c.case_id} for s in manifest.shards for c in s.cases
    }
    shard_of, images = {}, []
    for part in sorted((out / "images").glob("part-*.parquet")):
        for row in pq.read_table(
            part, columns=["image_id", "dataset", "case_id", "modality"]
        ).to_pylist():
            shard_of[row["image_id"]] = part.name
            images.append(row)
            cases[row["case_id"]]["dataset"] = row["dataset"]
    mr = next(i for i in images if i["modality"] == "mr")
    cts = [i for i in images if i["dataset"] == "SyntheticCTPhantom"][:4]
    unread = next(c for c in cases.values() if "dataset" in c and c["case_id"] != mr["case_id"])
    lie = turn_detail(
        2,
        QA("VG", "Where is the lung?", ANSWER, ("r1",)),
        Failure("invented_structure", "left lung"),
    )
    added = [
        _reject("invented_structure", "verify", lie, mr, cases[mr["case_id"]]),
        _reject(
            "wrong_side",
            "verify",
            turn_detail(
                1, QA("ROC", "Which side <b>?", "the liver", ("r1",)), Failure("wrong_side", "left")
            ),
            cts[0],
            cases[cts[0]["case_id"]],
        ),
        _reject(
            "nifti_unreadable",
            "load",
            f"{unread['case']}_0000.nii.gz is truncated <b>&",
            None,
            unread,
        ),
        _reject(
            "invalid_json", "generate", '{"turns": <script>x', cts[1], cases[cts[1]["case_id"]]
        ),
    ]
    # One reason on five images of two datasets: three examples, both datasets among them.
    for image in [mr, *cts]:
        detail = turn_detail(
            3,
            QA("RC", "q", f"the top of {image['image_id']}", ("r1",)),
            Failure("wrong_position", "top"),
        )
        added.append(_reject("wrong_position", "verify", detail, image, cases[image["case_id"]]))
    for part in sorted((out / "rejects").glob("part-*.parquet")):
        rows = pq.read_table(part, schema=REJECTS).to_pylist()
        rows += [r for r in added if r["image_id"] and shard_of[r["image_id"]] == part.name]
        if part == sorted((out / "rejects").glob("part-*.parquet"))[0]:
            rows += [r for r in added if not r["image_id"]]
        pq.write_table(pa.Table.from_pylist(rows, schema=REJECTS), part)
    return {"out": out, "mr": mr, "cts": cts, "unread": unread}


def _decodes(img: dict) -> bool:
    data = base64.b64decode((img.get("src") or "").removeprefix("data:image/png;base64,"))
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()
        return picture.format == "PNG" and picture.width > 0


def test_each_reject_reason_shows_its_count_meaning_and_examples(
    medgrit_offline, dataset: dict, tmp_path: Path
) -> None:
    out = dataset["out"]
    target = tmp_path / "r.html"
    args = ["--out", str(target), "--samples", "0", "--reject-examples", "3"]
    result = medgrit_offline("report", str(out), *args)
    assert result.returncode == 0, result.stderr
    html = target.read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)

    reasons = pq.read_table(out / "rejects", columns=["reason"]).column("reason")
    counts = {c["values"]: c["counts"] for c in pc.value_counts(reasons).to_pylist()}
    total = sum(counts.values())
    header, *rows = page.rejects
    assert header == ["reason", "count", "share", "meaning"]
    shown = {row[0]: row[1:] for row in rows}
    assert {r: int(v[0]) for r, v in shown.items()} == counts
    assert shown["wrong_position"][1] == f"{100 * 5 / total:.1f}%"
    assert all(v[2] and v[2] != "(no description)" for v in shown.values())
    assert set(page.sections) == set(counts)

    # The lie: its image with boxes, its answer escaped with the words marked.
    (lie,) = page.sections["invented_structure"]
    assert lie["attrs"]["data-reject-image"] == dataset["mr"]["image_id"]
    assert len(lie["images"]) == 1 and _decodes(lie["images"][0])
    assert ANSWER_SHOWN in html
    assert ANSWER in "".join(lie["text"])  # the page's text is the answer as written
    (wrong_side,) = page.sections["wrong_side"]
    assert "the liver" in "".join(wrong_side["text"]) and "left" in "".join(wrong_side["text"])
    assert "not in the recorded answer" in "".join(wrong_side["text"])

    # A case that could not be read: its detail only, with its file and case names hidden.
    (unread,) = page.sections["nifti_unreadable"]
    assert not unread["images"] and "data-reject-image" not in unread["attrs"]
    assert "[file] is truncated &lt;b&gt;&amp;" in html
    assert dataset["unread"]["case"] not in html

    (no_json,) = page.sections["invalid_json"]
    assert "{&quot;turns&quot;: &lt;script&gt;x" in html and no_json["images"]

    spread = page.sections["wrong_position"]
    assert len(spread) == 3
    pictured = [e["attrs"]["data-reject-image"] for e in spread]
    assert len(set(pictured)) == 3
    assert dataset["mr"]["image_id"] in pictured  # both datasets, though CT has four of five
    for image_id in pictured:
        assert f"the <mark>top</mark> of {image_id}" in html

    assert html.count("<script") == 1 and "<b>" not in html


def test_reject_examples_can_be_left_out(dataset: dict) -> None:
    from medgrit.adapters.report.reader import read_reject_examples, read_report_data
    from medgrit.adapters.report.rejects import rejects_html

    data = read_report_data(dataset["out"], examples=0)
    examples = read_reject_examples(dataset["out"], data, pictures=24)
    page = _Page()
    page.feed(rejects_html(data.rejects_by_reason, examples))
    assert not page.sections and len(page.rejects) == 1 + 6  # the header and six reasons


def _overlap(a: tuple, b: tuple) -> bool:
    """Whether two half-open rectangles (x0, y0, x1, y1) share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


NUCLEI = [
    "left caudate",
    "right caudate",
    "left putamen",
    "right putamen",
    "left thalamus",
    "right thalamus",
    "left hippocampus",
    "right hippocampus",
]


def test_gallery_labels_never_overlap_on_a_crowded_mr_slice() -> None:
    from medgrit.adapters.report.gallery import draw_regions, layout_labels

    # Eight 8x8 structures side by side in the middle of a 64x64 slice, as an MR atlas has.
    regions = [
        {
            "label": name,
            "bbox": [16 + 8 * (i % 4), 24 + 8 * (i // 4), 24 + 8 * (i % 4), 32 + 8 * (i // 4)],
        }
        for i, name in enumerate(NUCLEI)
    ]
    many = [
        {
            "label": f"structure {i}",
            "bbox": [4 * (i % 8), 8 * (i // 8), 4 * (i % 8) + 4, 8 * (i // 8) + 8],
        }
        for i in range(24)
    ]
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(buffer, format="PNG")
    for shown, size in [(regions, 360), (regions, 128), (regions, 64), (many, 360), (many[:3], 48)]:
        layout = layout_labels((64, 64), shown, size)
        rects = [label.rect for label in [*layout.labels, *layout.key]]
        for i, a in enumerate(rects):
            assert 0 <= a[0] < a[2] <= layout.width and 0 <= a[1] < a[3] <= layout.height, a
            for b in rects[i + 1 :]:
                assert not _overlap(a, b), (size, a, b)
        names = {r["label"] for r in shown}
        if layout.key:  # numbers on the boxes, a key below the image
            assert {k.text.split(" ", 1)[1] for k in layout.key} == names
            assert len(layout.labels) == len(shown)
            assert all(k.rect[1] >= layout.image_size[1] for k in layout.key)
        else:
            assert sorted(label.text for label in layout.labels) == sorted(
                r["label"] for r in shown
            )
        with Image.open(io.BytesIO(draw_regions(buffer.getvalue(), shown, size))) as picture:
            assert picture.size == (layout.width, layout.height)
            for label in [*layout.labels, *layout.key]:  # each label's black ground is drawn
                assert picture.convert("RGB").getpixel(label.rect[:2]) == (0, 0, 0)
    assert layout_labels((64, 64), many, 360).key  # 24 regions: numbered, with a key


def test_examples_are_the_same_whatever_the_row_order_or_shards() -> None:
    from medgrit.adapters.report.rejects import REASON_MEANINGS
    from medgrit.core.report_stats import (
        RejectRow,
        best_units,
        choose_reject_examples,
        reject_candidates,
    )
    from medgrit.core.vocab import REJECT_REASONS

    assert set(REASON_MEANINGS) == set(REJECT_REASONS)
    rows = [
        RejectRow(
            reason=("wrong_size", "wrong_side")[i % 2],
            stage="verify",
            detail=f"turn {i % 3 + 1} (VG): answer {i}",
            dataset=("A", "B", "C")[i % 3],
            case_id=f"case{i % 7}",
            image_id=f"case{i % 7}-a{i % 5}" if i % 4 else None,
            modality=("ct", "mr")[i % 2] if i % 4 else None,
        )
        for i in range(60)
    ]
    chosen = choose_reject_examples(rows, 3)
    order = np.random.default_rng(1).permutation(len(rows))
    assert choose_reject_examples([rows[i] for i in order], 3) == chosen
    kept: list = []
    for start in range(0, len(rows), 7):  # shard by shard, as the reader goes
        kept = reject_candidates([*kept, *[rows[i] for i in order[start : start + 7]]], 3)
    assert choose_reject_examples(kept, 3) == chosen
    # The reader turns only the rows of the best units, and of each its first detail, into rows.
    key = {r: (r.reason, r.dataset, r.modality, r.image_id or r.case_id or "") for r in rows}
    best = best_units(key.values(), 3)
    first = {}
    for r in rows:
        first[key[r]] = min(first.get(key[r], r.detail), r.detail)
    few = [r for r in rows if key[r] in best and r.detail == first[key[r]]]
    assert len(few) < len(rows) and choose_reject_examples(few, 3) == chosen
    for reason, examples in chosen.items():
        assert len(examples) == 3 and {e.reason for e in examples} == {reason}
        assert all(e.image_id for e in examples)  # rows with a shown image come first
        assert len({e.dataset for e in examples}) == 3  # one of each dataset
        assert len({e.image_id for e in examples}) == 3
