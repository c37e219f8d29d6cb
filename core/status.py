"""What ``medgrit status`` shows of a dataset directory: one row per shard, the totals, the
state of the whole build, and the exit code scripts read from it.

Pure: it takes each shard's id, case count, error and counts
(:class:`~medgrit.core.summary.ShardCounts`), as ``dataset.json`` with the shards' completion
records merged holds them; the numbers come from :func:`~medgrit.core.summary.build_totals`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from medgrit.core.markdown import printable_text
from medgrit.core.summary import ShardCounts, build_totals, qa_pairs

EXIT_COMPLETE = 0
EXIT_FAILED = 1
EXIT_PENDING = 3


@dataclass(frozen=True)
class ShardStatus:
    """One shard as ``status`` shows it (counts are 0 until the shard is done)."""

    id: str
    status: str
    cases: int
    images: int
    qa: int
    rejects: int
    tokens: int
    error: str | None = None

    @classmethod
    def of(cls, id: str, cases: int, counts: ShardCounts, error: str | None = None) -> ShardStatus:
        """A shard as ``status`` shows it: its counts as it adds them to the totals, the
        error only while it is failed."""
        return cls(
            id=id,
            status=counts.status,
            cases=cases,
            **status_sums([counts]),
            error=error if counts.status == "failed" else None,
        )


_STATUS_TABLES = ("images", "rejects")


def status_sums(shards: Sequence[ShardCounts]) -> dict[str, int]:
    """Images, QA pairs, rejects (of done shards) and tokens (prompt and completion, of every
    shard) over ``shards``: the build's totals as ``status`` shows them."""
    totals = build_totals(shards, _STATUS_TABLES)
    return {
        "images": totals["rows"]["images"],
        "qa": qa_pairs(totals),
        "rejects": totals["rows"]["rejects"],
        "tokens": int(totals["llm"]["prompt"]) + int(totals["llm"]["completion"]),
    }


def build_state(shards: list[ShardStatus]) -> str:
    """``failed`` while any shard failed, else ``pending`` while any is not done, else
    ``complete`` (a build with no shard at all is complete: there was nothing to build)."""
    if any(s.status == "failed" for s in shards):
        return "failed"
    if any(s.status != "done" for s in shards):
        return "pending"
    return "complete"


def exit_code(state: str) -> int:
    """The exit code of ``medgrit status``: 1 while anything failed, 3 while pending, else 0."""
    return {"failed": EXIT_FAILED, "pending": EXIT_PENDING}.get(state, EXIT_COMPLETE)


def status_json(
    out: str,
    shards: list[ShardStatus],
    totals: dict | None,
    writer: str | None = None,
    retired: list[dict] | None = None,
) -> dict:
    """The ``--json`` document: the state, counts per shard status, every shard, the totals,
    ``writer``: who is building it now (None when nothing is), and ``retired``: the shards
    retired because their cases changed (``id``, ``reason``, ``retired_at``)."""
    counts = {k: sum(s.status == k for s in shards) for k in ("done", "pending", "failed")}
    return {
        "out": out,
        "state": build_state(shards),
        "writer": writer,
        "counts": {**counts, "total": len(shards)},
        "sum": _sums(shards),
        "shards": [asdict(s) for s in shards],
        "retired": [{k: r.get(k) for k in ("id", "reason", "retired_at")} for r in (retired or [])],
        "totals": totals,
    }


def retired_line(retired: list[dict]) -> str | None:
    """One line on the shards a dataset retired (None when it retired none)."""
    if not retired:
        return None
    ids = ", ".join(printable_text(str(r.get("id"))) for r in retired[:5])
    more = f" and {len(retired) - 5} more" if len(retired) > 5 else ""
    return (
        f"retired: {len(retired)} shard(s) ({ids}{more}) whose cases changed since they were "
        "built; those cases are in later shards"
    )


def _sums(shards: list[ShardStatus]) -> dict[str, int]:
    """The table's column sums: each shard's numbers are :func:`status_sums` of it, so these
    are :func:`status_sums` of all shards."""
    return {k: sum(getattr(s, k) for s in shards) for k in ("images", "qa", "rejects", "tokens")}


_COLUMNS = ("shard", "status", "cases", "images", "qa", "rejects", "tokens")
STATUS_ALIGN = ("left", "left", "right", "right", "right", "right", "right")
"""How each column of the status table is aligned."""


def status_rows(
    shards: list[ShardStatus],
) -> tuple[tuple[str, ...], list[tuple[object, ...]], tuple[object, ...]]:
    """The status table's data: its column names, one row per shard, and the totals row."""
    body = [(s.id, s.status, s.cases, s.images, s.qa, s.rejects, s.tokens) for s in shards]
    sums = _sums(shards)
    total = (
        "total",
        f"{len(shards)} shards",
        sum(s.cases for s in shards),
        sums["images"],
        sums["qa"],
        sums["rejects"],
        sums["tokens"],
    )
    return _COLUMNS, body, total


def failed_lines(shards: list[ShardStatus]) -> list[str]:
    """Why each failed shard failed, one line each (none when no shard failed)."""
    failed = [s for s in shards if s.status == "failed"]
    if not failed:
        return []
    lines = ["failed shards:"]
    for s in failed:
        lines.append(f"  {printable_text(s.id)}: {printable_text(s.error or 'failed')}")
    return lines


def render_status_table(shards: list[ShardStatus]) -> str:
    """A plain-text table of the shards with a totals row; failed shards' reasons below it.

    Ids, statuses and reasons come from ``dataset.json``: they are shown on one line each with
    control characters escaped (:func:`~medgrit.core.markdown.printable_text`), so no text
    read from a file moves the terminal's cursor or colours it.
    """
    header, body, total = status_rows(shards)
    cells = [tuple(printable_text(str(c)) for c in row) for row in [header, *body, total]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        first, second, *numbers = row
        parts = [first.ljust(widths[0]), second.ljust(widths[1])]
        parts += [c.rjust(w) for c, w in zip(numbers, widths[2:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(cells[0]), rule, *(line(r) for r in cells[1:-1]), rule, line(cells[-1])]
    failed = failed_lines(shards)
    return "\n".join([*lines, *(["", *failed] if failed else [])])
