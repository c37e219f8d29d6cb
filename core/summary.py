"""Counts of a build (per shard and in total) and their markdown summary.

:func:`build_totals` is the one place a build's totals are counted from its shards (the
manifest's ``totals``, ``status``'s sums, the dashboard's running tallies): rows, images per
modality and split, QA pairs per modality and task, rejects per reason and non-finite values
over the shards that are done; LLM requests, tokens and cost over every shard that spent them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medgrit.core.markdown import escape_markdown, markdown_code, markdown_table
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


def render_summary(
    out_dir: str,
    rows: dict[str, int],
    totals: dict,
    shards_done: int,
    shards_total: int,
    failed: list[str],
    llm: dict | None = None,
) -> str:
    """A short markdown summary of a build (for the CLI and the Prefect artifact).

    ``llm`` holds what an LLM build sent and spent (requests, cache hits, tokens, cost). The
    path, shard ids, modalities and reasons are escaped (:mod:`medgrit.core.markdown`).
    """
    tasks = TASKS
    lines = [
        f"## medgrit dataset {markdown_code(out_dir)}",
        "",
        f"- shards: {shards_done}/{shards_total} done"
        + (f", failed: {', '.join(escape_markdown(f) for f in failed)}" if failed else ""),
        f"- images: {rows.get('images', 0)} "
        + "("
        + ", ".join(f"{escape_markdown(k)} {v}" for k, v in totals["images_by_split"].items())
        + ")",
        f"- regions: {rows.get('regions', 0)}",
        f"- conversations: {rows.get('conversations', 0)}",
        f"- rejects: {rows.get('rejects', 0)}",
        *(
            [
                f"- non-finite intensities (NaN, inf) left out of the mapping: "
                f"{totals['non_finite_values']}"
            ]
            if totals.get("non_finite_values")
            else []
        ),
        *(
            [
                f"- LLM: {llm.get('requests', 0)} requests sent, {llm.get('cache_hits', 0)} "
                f"answered from the cache, {llm.get('prompt', 0)} prompt + "
                f"{llm.get('completion', 0)} completion tokens, "
                f"estimated cost ${llm.get('cost_usd', 0):.4f}"
            ]
            if llm is not None
            else []
        ),
        "",
    ]
    qa = totals["qa_by_modality_task"]
    rows = []
    for modality, n_images in totals["images_by_modality"].items():
        per = qa.get(modality, {})
        counts = [per.get(t, 0) for t in tasks]
        rows.append([modality, n_images, *counts, sum(counts)])
    numbers = ["right"] * (len(tasks) + 2)
    lines.append(markdown_table(["modality", "images", *tasks, "QA"], rows, ["left", *numbers]))
    if totals["rejects_by_reason"]:
        rejects = totals["rejects_by_reason"].items()
        lines += ["", markdown_table(["reject reason", "rows"], rejects, ["left", "right"])]
    return "\n".join(lines) + "\n"
