"""The report page: one self-contained HTML file (inline CSS, images as ``data:`` URIs).

Every string that comes from the data (dataset names, labels, case ids, questions, answers,
reject reasons) goes through :func:`html.escape`, so a label such as ``<script>`` shows as text.
A Content-Security-Policy meta tag allows only inline styles, the one inline script and
``data:`` images, so nothing is fetched from anywhere even if the page is opened online.

Tables carry ids, for readers and tests: ``totals``, ``by-modality``, ``by-split``,
``by-dataset``, ``by-modality-task``, ``labels`` and ``rejects`` (the rejects part and its
examples: :mod:`medgrit.adapters.report.rejects`). The inline script sets
``data-loaded`` on ``<body>`` to the number of images once all of them decoded (``broken`` when
one did not), so a headless browser can check the page rendered.

Size: the gallery's pictures, and at most :data:`MAX_REJECT_PICTURES` pictures of reject
examples (smaller ones), are the page's only images beside three charts.

What is read: see :mod:`medgrit.adapters.report.reader`.
"""

from __future__ import annotations

from collections import Counter
from html import escape
from pathlib import Path

from medgrit.adapters.report import charts
from medgrit.adapters.report.gallery import draw_regions
from medgrit.adapters.report.markup import img_tag as _img
from medgrit.adapters.report.markup import table as _table
from medgrit.adapters.report.reader import (
    RejectExample,
    ReportData,
    Sample,
    done_shards,
    read_reject_examples,
    read_report_data,
    read_samples,
)
from medgrit.adapters.report.rejects import rejects_html
from medgrit.adapters.runtime.atomic import write_atomic
from medgrit.core.fsnames import escape_name
from medgrit.core.report_stats import (
    box_measures,
    centre_histogram,
    choose_samples,
    ranked,
)
from medgrit.core.vocab import TASKS

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 1.5em 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; }
.note { color: #a15c00; }
.sample { display: flex; gap: 1em; margin-bottom: 1.5em; align-items: flex-start; }
.sample img { border: 1px solid #ccc; flex: none; }
.sample table { flex: 1; margin: 0; }
.sample td { vertical-align: top; word-break: break-word; }
.meta { color: #555; font-size: 0.85em; margin: 0 0 0.4em; }
.reject-example { display: flex; gap: 1em; margin-bottom: 1em; align-items: flex-start; }
.reject-example img { border: 1px solid #ccc; flex: none; }
.reject-example table { margin: 0; }
.reject-example td { vertical-align: top; word-break: break-word; }
.detail { font-family: ui-monospace, monospace; font-size: 0.85em; word-break: break-word; }
mark { background: #ffd54f; }
"""

MAX_REJECT_PICTURES = 24
"""Reject examples shown with their image at most, over all reasons (most frequent first)."""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-loaded", ok ? String(images.length) : "broken");
});
"""


def _counts(table_id: str, key: str, counts: Counter | dict[str, int]) -> str:
    return _table(table_id, [key, "count"], [[k, v] for k, v in ranked(counts).items()])


def _task_table(qa: dict[str, Counter]) -> str:
    tasks = [*TASKS, *sorted({t for c in qa.values() for t in c} - set(TASKS))]
    rows: list[list[object]] = []
    for modality in sorted(qa):
        per = qa[modality]
        rows.append([modality, *(per.get(t, 0) for t in tasks), sum(per.values())])
    totals = [sum(qa[m].get(t, 0) for m in qa) for t in tasks]
    rows.append(["all", *totals, sum(totals)])
    return _table("by-modality-task", ["modality", *tasks, "all"], rows)


def _sample_html(sample: Sample) -> str:
    picture = draw_regions(sample.png, sample.regions)
    meta = (
        f"{escape(sample.modality)} · {escape(sample.dataset)} · case {escape(sample.case_id)} · "
        f"image {escape(sample.image_id)} · {escape(sample.split)}"
    )
    turns = "".join(
        f"<tr><td>{escape(t['task'])}</td><td>{escape(t['question'])}</td>"
        f"<td>{escape(t['answer'])}</td></tr>"
        for t in sample.turns
    )
    return (
        f'<div class="sample" data-image-id="{escape(sample.image_id)}">'
        f"{_img(picture, 'image ' + sample.image_id, 'sample-image')}"
        f'<div><p class="meta">{meta}</p><table class="turns"><thead><tr><th>task</th>'
        f"<th>question</th><th>answer</th></tr></thead><tbody>{turns}</tbody></table></div></div>"
    )


def render_report(
    data: ReportData,
    samples: list[Sample],
    title: str,
    reject_examples: dict[str, list[RejectExample]] | None = None,
) -> str:
    """The whole page as a string (see the module docstring for its ids and guarantees);
    ``reject_examples``: example rows per reject reason (none when not given)."""
    manifest = data.manifest
    shards = manifest.shards
    done = len(done_shards(manifest))
    note = ""
    if done < len(shards):
        note = (
            f'<p class="note">{done} of {len(shards)} shards are done; the report shows those '
            "only.</p>"
        )
    totals = _table(
        "totals",
        ["table", "rows"],
        [
            ["images", data.rows["images"]],
            ["regions", data.rows["regions"]],
            ["conversations", data.rows["conversations"]],
            ["qa pairs", data.rows["qa"]],
            ["rejects", data.rows["rejects"]],
        ],
    )
    labels = ranked(data.labels)
    measures = box_measures(data.bbox_1000)
    rejects = rejects_html(data.rejects_by_reason, reject_examples or {})
    gallery = "".join(_sample_html(s) for s in samples) or "<p>no images</p>"
    about = (
        f"medgrit {escape(str(manifest.medgrit_version or '?'))} · schema "
        f"{escape(str(manifest.schema_version))} · status "
        f"{escape(str(manifest.status or '?'))} · created "
        f"{escape(str(manifest.created_at or '?'))}"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{escape(title)} · medgrit report</title>
<style>{_CSS}</style>
<script>{_SCRIPT}</script>
</head>
<body>
<h1>{escape(title)}</h1>
<p class="meta">{about}</p>
{note}
<h2>Totals</h2>
{totals}
<h2>Images</h2>
<div class="row">
<div><h3>per modality</h3>{_counts("by-modality", "modality", data.images_by_modality)}</div>
<div><h3>per split</h3>{_counts("by-split", "split", data.images_by_split)}</div>
<div><h3>per dataset</h3>{_counts("by-dataset", "dataset", data.images_by_dataset)}</div>
</div>
<h2>QA pairs per modality and task</h2>
{_task_table(data.qa_by_modality_task)}
<h2>Labels</h2>
<div class="row">
<div>{_counts("labels", "label", labels)}</div>
<div>{_img(charts.label_bar_chart(labels), "regions per label")}</div>
</div>
<h2>Boxes</h2>
<p class="meta">In Qwen-VL units (<code>bbox_1000</code>): 0-999 across the image.</p>
{_img(charts.box_size_histograms(measures), "box widths, heights and areas")}
{_img(charts.centre_heatmap(centre_histogram(measures)), "box centres")}
<h2>Gallery</h2>
{gallery}
<h2>Rejects</h2>
{rejects}
</body>
</html>
"""


def write_report(
    out_dir: str | Path,
    target: str | Path,
    samples: int = 8,
    seed: int = 0,
    reject_examples: int = 3,
) -> Path:
    """Write the report of a dataset to ``target``, atomically (a temp file, then a rename).

    Args:
        out_dir: the dataset directory.
        target: the HTML file to write; its folder must exist.
        samples: gallery size (one image of each modality first, as far as it reaches).
        seed: seed of the gallery's choice.
        reject_examples: example rows shown per reject reason (chosen by the data, not the
            seed: the same rows in every report of the dataset).

    Raises:
        ManifestError: ``out_dir`` is not a readable medgrit dataset.
        OSError: ``target`` cannot be written.
    """
    data = read_report_data(out_dir, examples=reject_examples)
    chosen = read_samples(
        out_dir, data, choose_samples(data.image_ids, data.modalities, samples, seed)
    )
    examples = read_reject_examples(out_dir, data, MAX_REJECT_PICTURES)
    title = escape_name(Path(out_dir).resolve().name) or "dataset"
    page = render_report(data, chosen, title, examples)
    target = Path(target)
    write_atomic(target, page, permissions=0o644)
    return target
