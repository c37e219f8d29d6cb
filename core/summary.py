"""Counts of a build (per shard and in total) and their markdown summary."""

from __future__ import annotations

from collections import Counter

from medgrit.core.markdown import escape_markdown, markdown_code, markdown_table


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


def merge_stats(stats: list[dict]) -> dict:
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
    tasks = ("VG", "ROC", "RC", "MIA")
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
