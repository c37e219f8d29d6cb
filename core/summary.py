"""Counts of a build (per shard and in total) and their summary, as Markdown or plain text.

:func:`build_totals` is the one place a build's totals are counted from its shards (the
manifest's ``totals``, ``status``'s sums, the dashboard's running tallies): rows, images per
modality and split, QA pairs per modality and task, rejects per reason and non-finite values
over the shards that are done; LLM requests, tokens and cost over every shard that spent them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medgrit.core.markdown import escape_markdown, markdown_code, markdown_table, printable_text
from medgrit.core.vocab import TASKS


def shard_stats(tables: dict[str, list[dict]]) -> dict:
    """Counts of one shard's rows: images and QA per modality and task, rejects per reason."""
    modality_of = {r["image_id"]: r["modality"] for r in tables["images"]}
    images = Counter(r["modality"] for r in tables["images"])
    qa: dict[str, Counter] = {}
    for conv in tables["conversations"]:
        per = qa.setdefault(modality_of[conv["image_id"]], Counter())
        per.update(turn["task"] for turn in conv["qa"])
    splits = Counter(r["split"] for r in tables["images"])
    return {
        "images_by_modality": dict(sorted(images.items())),
        "images_by_split": dict(sorted(splits.items())),
        "qa_by_modality_task": {m: dict(sorted(c.items())) for m, c in sorted(qa.items())},
        "rejects_by_reason": dict(sorted(Counter(r["reason"] for r in tables["rejects"]).items())),
    }


def merge_stats(stats: Iterable[Mapping[str, Any]]) -> dict:
    """Totals over shard stats."""
    images: Counter = Counter()
    splits: Counter = Counter()
    rejects: Counter = Counter()
    qa: dict[str, Counter] = {}
    non_finite = 0
    for s in stats:
        non_finite += int(s.get("non_finite_values", 0))
        images.update(s.get("images_by_modality", {}))
        splits.update(s.get("images_by_split", {}))
        rejects.update(s.get("rejects_by_reason", {}))
        for modality, per in s.get("qa_by_modality_task", {}).items():
            qa.setdefault(modality, Counter()).update(per)
    return {
        "images_by_modality": dict(sorted(images.items())),
        "images_by_split": dict(sorted(splits.items())),
        "qa_by_modality_task": {m: dict(sorted(c.items())) for m, c in sorted(qa.items())},
        "rejects_by_reason": dict(sorted(rejects.items())),
        "non_finite_values": non_finite,
    }


TOKEN_FIELDS = ("requests", "cache_hits", "prompt", "completion", "cost_usd")
"""What a build's ``totals.llm`` counts, in its order (a shard's ``tokens`` holds some of them)."""


@dataclass(frozen=True)
class ShardCounts:
    """What one shard adds to a build's totals: its status, row counts per table, stats (as
    :func:`shard_stats` gives them, with ``non_finite_values``) and LLM spend (``tokens``)."""

    status: str
    rows: Mapping[str, int] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    tokens: Mapping[str, int | float] = field(default_factory=dict)


def build_totals(shards: Iterable[ShardCounts], tables: Sequence[str]) -> dict:
    """A build's totals, in the layout of ``dataset.json``'s ``totals``: ``rows`` per table
    (in ``tables``' order) and the merged stats of the done shards, and ``llm``: requests,
    cache hits, tokens and cost (rounded to 6 decimals) of every shard that has them."""
    shards = list(shards)
    done = [s for s in shards if s.status == "done"]
    rows = {t: sum(int(s.rows.get(t, 0)) for s in done) for t in tables}
    llm: dict[str, int | float] = {k: 0 for k in TOKEN_FIELDS}
    for shard in shards:
        for k in TOKEN_FIELDS:
            llm[k] += shard.tokens.get(k, 0)
    llm["cost_usd"] = round(llm["cost_usd"], 6)
    return {"rows": rows, **merge_stats([s.stats for s in done]), "llm": llm}


def qa_pairs(totals: Mapping[str, Any]) -> int:
    """QA pairs of totals (or of one shard's stats): all modalities and tasks."""
    qa = totals.get("qa_by_modality_task") or {}
    return sum(int(n) for per in qa.values() for n in per.values())


@dataclass(frozen=True)
class SummaryTable:
    """One table of a summary: column names, rows (cells as numbers or words a source wrote)
    and each column's alignment (``"left"`` or ``"right"``)."""

    header: tuple[str, ...]
    rows: tuple[tuple[object, ...], ...]
    align: tuple[str, ...]


@dataclass(frozen=True)
class BuildSummary:
    """What a build's summary says, for any rendering: the dataset folder, facts as
    (name, text) lines whose words from sources are already made inert for the rendering
    asked for (see :func:`summarise_build`), and the tables (per modality and task; rejects by
    reason when there are any), whose cells each rendering makes inert itself."""

    out_dir: str
    facts: tuple[tuple[str, str], ...]
    tables: tuple[SummaryTable, ...]


def summarise_build(
    out_dir: str,
    rows: Mapping[str, int],
    totals: Mapping[str, Any],
    shards_done: int,
    shards_total: int,
    failed: Sequence[str],
    llm: Mapping[str, Any] | None = None,
    escape: Callable[[str], str] = printable_text,
) -> BuildSummary:
    """A build's summary from its totals (``dataset.json``'s layout); ``escape`` makes the
    words of sources in the facts inert where they land (:func:`printable_text` for a
    terminal, ``escape_markdown`` for Markdown).

    ``llm`` holds what an LLM build sent and spent (requests, cache hits, tokens, cost).
    """
    splits = ", ".join(f"{escape(k)} {v}" for k, v in totals["images_by_split"].items())
    facts = [
        (
            "shards",
            f"{shards_done}/{shards_total} done"
            + (f", failed: {', '.join(escape(f) for f in failed)}" if failed else ""),
        ),
        ("images", f"{rows.get('images', 0)} ({splits})"),
        ("regions", str(rows.get("regions", 0))),
        ("conversations", str(rows.get("conversations", 0))),
        ("rejects", str(rows.get("rejects", 0))),
    ]
    if totals.get("non_finite_values"):
        facts.append(
            (
                "non-finite intensities (NaN, inf) left out of the mapping",
                str(totals["non_finite_values"]),
            )
        )
    if llm is not None:
        facts.append(
            (
                "LLM",
                f"{llm.get('requests', 0)} requests sent, {llm.get('cache_hits', 0)} answered "
                f"from the cache, {llm.get('prompt', 0)} prompt + {llm.get('completion', 0)} "
                f"completion tokens, estimated cost ${llm.get('cost_usd', 0):.4f}",
            )
        )
    qa = totals["qa_by_modality_task"]
    by_modality = []
    for modality, n_images in totals["images_by_modality"].items():
        per = qa.get(modality, {})
        counts = [per.get(t, 0) for t in TASKS]
        by_modality.append((modality, n_images, *counts, sum(counts)))
    tables = [
        SummaryTable(
            ("modality", "images", *TASKS, "QA"),
            tuple(by_modality),
            ("left", *["right"] * (len(TASKS) + 2)),
        )
    ]
    if totals["rejects_by_reason"]:
        rejects = tuple(tuple(item) for item in totals["rejects_by_reason"].items())
        tables.append(SummaryTable(("reject reason", "rows"), rejects, ("left", "right")))
    return BuildSummary(out_dir, tuple(facts), tuple(tables))


def render_summary(
    out_dir: str,
    rows: dict[str, int],
    totals: dict,
    shards_done: int,
    shards_total: int,
    failed: list[str],
    llm: dict | None = None,
) -> str:
    """A short markdown summary of a build (for the Prefect artifact and ``dataset.json``'s
    readers; the terminal shows :func:`render_summary_text` or rich tables).

    ``llm`` holds what an LLM build sent and spent (requests, cache hits, tokens, cost). The
    path, shard ids, modalities and reasons are escaped (:mod:`medgrit.core.markdown`).
    """
    summary = summarise_build(
        out_dir, rows, totals, shards_done, shards_total, failed, llm, escape_markdown
    )
    lines = [f"## medgrit dataset {markdown_code(out_dir)}", ""]
    lines += [f"- {name}: {text}" for name, text in summary.facts]
    for table in summary.tables:
        lines += ["", markdown_table(table.header, table.rows, table.align)]
    return "\n".join(lines) + "\n"


def render_summary_text(summary: BuildSummary) -> str:
    """The summary as plain text for logs and pipes: a title, the facts, and each table with
    aligned columns under a rule of dashes (every cell on one line, control characters
    escaped: :func:`~medgrit.core.markdown.printable_text`). Give it the summary
    :func:`summarise_build` made with ``printable_text``."""
    lines = [f"medgrit dataset {printable_text(summary.out_dir)}", ""]
    lines += [f"- {name}: {text}" for name, text in summary.facts]
    for table in summary.tables:
        lines += ["", text_table(table.header, table.rows, table.align)]
    return "\n".join(lines) + "\n"


def text_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: Sequence[str]
) -> str:
    """A plain-text table: columns two spaces apart, padded to their widest cell (``"left"``
    or ``"right"`` per column), the header over a rule of dashes; every cell is
    :func:`~medgrit.core.markdown.printable_text` of ``str(cell)``.

    Raises:
        ValueError: a row or ``align`` whose length is not the header's.
    """
    cells = [tuple(printable_text(str(c)) for c in row) for row in [header, *rows]]
    if len(align) != len(header) or any(len(row) != len(header) for row in cells):
        raise ValueError("every row and the alignment need one entry per column")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        padded = (
            c.rjust(w) if a == "right" else c.ljust(w)
            for c, w, a in zip(row, widths, align, strict=True)
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])
