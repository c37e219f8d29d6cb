"""A build as it happens in the Prefect UI: live artifacts, run names, tags and quiet logs.

:class:`BuildDashboard` is ``run_build``'s ``on_progress`` hook. It keeps running totals of the
shards recorded so far (:class:`BuildTally`: each shard's counts are added once, never re-merged
over all shards) and publishes, throttled (:data:`UPDATE_EVERY_S`, :data:`TABLE_EVERY_FRACTION`)
and always at the first and the last shard, these artifacts of the running flow:

- ``medgrit-<name>-progress``: a progress artifact (shards settled, in percent) whose description
  says images, QA pairs and rejects so far and an ETA;
- ``medgrit-<name>-qa``: a table of QA pairs per modality and task (VG, ROC, RC, MIA, total);
- ``medgrit-<name>-rejects``: a table of rejected items per reason;
- ``medgrit-<name>-llm`` (LLM builds): requests, cache hits, tokens and estimated cost so far.

``<name>`` is the dataset folder's name as an artifact key allows (:func:`dataset_name`). A run
creates one artifact per key, in the order above (the build's summary, ``flows/build.py``'s,
comes last), and updates it in place: its flow run shows one card per kind with the latest
numbers, and a key's page one version per run of the dataset. (The flow run's tab orders cards
by artifact id, and Prefect's artifact ids are random: the order is fixed for a run, not chosen
by the order of creation.)

The ETA is this run's rate: shards built since the plan was known over the time that took.
Shards a resume found done count toward the totals, not the rate.
"""

from __future__ import annotations

from medgrit.flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()

import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator, Mapping  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Protocol  # noqa: E402
from uuid import UUID  # noqa: E402

from medgrit.core.failures import is_infrastructure  # noqa: E402
from medgrit.core.markdown import escape_cells, escape_markdown  # noqa: E402
from medgrit.core.summary import ShardCounts, build_totals  # noqa: E402
from medgrit.core.vocab import MODALITIES, TASKS  # noqa: E402
from medgrit.schemas.config import BuildConfig  # noqa: E402
from medgrit.schemas.manifest import Manifest, ShardEntry  # noqa: E402

UPDATE_EVERY_S = 2.0
"""Least seconds between two updates of the progress artifact (one API call each); the first
and the last shard are always published."""
TABLE_EVERY_FRACTION = 0.05
"""Tables are updated at most every ``max(UPDATE_EVERY_S, this * elapsed)`` seconds (one API
call each), so a long build makes about 20 updates per e-fold of its run time (some 90 in an
hour) rather than one every 2 s."""

_STAGING = re.compile(r"^\.(?P<name>.+)\.medgrit-overwrite$")


# -- names and tags --------------------------------------------------------------------------


def dataset_name(out: str | Path) -> str:
    """The dataset's name in artifact keys, run names and tags: OUT's folder name in lowercase
    letters, digits and dashes (what Prefect allows in a key).

    The staging folder of ``build --overwrite`` (``.NAME.medgrit-overwrite``) gives NAME, so
    an overwrite continues the dataset's history rather than starting another.
    """
    folder = Path(out).absolute().name
    staged = _STAGING.match(folder)
    if staged:
        folder = staged["name"]
    name = re.sub(r"[^a-z0-9]+", "-", folder.lower()).strip("-")
    return name[:60].strip("-") or "dataset"


@dataclass(frozen=True)
class ArtifactKeys:
    """The artifact keys of one dataset (see the module docstring)."""

    progress: str
    qa: str
    rejects: str
    llm: str

    @classmethod
    def of(cls, name: str) -> ArtifactKeys:
        """The keys of the dataset called ``name`` (from :func:`dataset_name`)."""
        return cls(*(f"medgrit-{name}-{part}" for part in ("progress", "qa", "rejects", "llm")))


def run_tags(config: BuildConfig) -> list[str]:
    """Tags that let the UI filter a dataset's runs, and template from LLM builds (and by
    model)."""
    tags = ["medgrit", f"dataset:{dataset_name(config.out)}", f"generator:{config.generator}"]
    if config.generator == "llm" and config.llm is not None:
        tags.append(f"model:{config.llm.model}")
    return tags


def shard_task_run_name(shard: str, name: str) -> str:
    """A shard task run's name: the shard and its dataset, as the UI lists runs of all flows."""
    return f"build_shard-{shard} ({name})"


def build_run_name() -> str:
    """The build flow run's name, ``build <dataset>`` (Prefect's ``flow_run_name`` callable:
    it reads the run's ``config`` parameter, a model or, before validation, a dict)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    config: Any = (context.parameters or {}).get("config") if context else None
    out = config.get("out") if isinstance(config, Mapping) else getattr(config, "out", None)
    return f"build {dataset_name(out)}" if out else "build"


def tag_flow_run(tags: list[str]) -> None:
    """Add ``tags`` to the running flow run where it lacks them, through the Prefect API.

    A run started from a deployment or a schedule carries the deployment's tags, not the
    dataset's; this makes every build filterable the same way, however it was started.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    have = list(context.flow_run.tags or [])
    missing = [t for t in tags if t not in have]
    if not missing:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(context.flow_run.id, tags=[*have, *missing])
    context.flow_run.tags = [*have, *missing]


class _QuietTaskEngine(logging.Filter):
    """Drops the task engine's per-task "Created task run" and "Finished in state Completed"
    lines: a 400-shard build would log hundreds of them beside run_build's own line per shard.
    Retries and failures (and anything at WARNING or above) still show.

    A shard that failed on an ``OSError`` (the disk, a folder of the dataset) shows as its one
    line, which names the error, without the traceback: it is infrastructure, not a bug, and
    the build ends with one line saying what failed and how to resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_infrastructure(record.exc_info[1]):
            record.exc_info = None
            record.exc_text = None
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        return not message.startswith(("Created task run", "Finished in state Completed"))


@contextmanager
def quiet_task_engine() -> Iterator[None]:
    """Quiet Prefect's per-task state lines in this process while the block runs."""
    logger = logging.getLogger("prefect.task_runs")
    quiet = _QuietTaskEngine()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# -- running totals (pure) -------------------------------------------------------------------


@dataclass
class _Contribution:
    """What one shard adds to the totals (kept so a shard recorded again replaces its part)."""

    settled: str | None = None  # "done" or "failed"
    rows: Counter = field(default_factory=Counter)
    qa: dict[str, Counter] = field(default_factory=dict)
    rejects: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, counts: ShardCounts) -> _Contribution:
        """What a shard adds, as :func:`~medgrit.core.summary.build_totals` counts it."""
        totals = build_totals([counts], tuple(counts.rows))
        settled = counts.status if counts.status in ("done", "failed") else None
        return cls(
            settled,
            Counter(totals["rows"]),
            {m: Counter(per) for m, per in totals["qa_by_modality_task"].items()},
            Counter(totals["rejects_by_reason"]),
            Counter({k: v for k, v in totals["llm"].items() if v}),
        )


@dataclass
class BuildTally:
    """Running totals of a build's shards as they are recorded: rows, QA pairs per modality
    and task, rejects per reason, LLM spend, and this run's pace.

    Numbers equal ``dataset.json``'s totals once every shard is recorded: each shard's part is
    counted by :func:`~medgrit.core.summary.build_totals`, as the totals are (stats of done
    shards only, tokens of every shard that has them).
    """

    total: int = 0
    done_before: int = 0
    built_now: int = 0
    failed_now: int = 0
    rows: Counter = field(default_factory=Counter)
    qa: dict[str, Counter] = field(default_factory=dict)
    rejects: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    shards: Counter = field(default_factory=Counter)  # per status: done, failed
    _parts: dict[str, _Contribution] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls, manifest: Manifest) -> BuildTally:
        """The totals of the plan: shards a resume found done are counted, not timed."""
        tally = cls(total=len(manifest.shards))
        for entry in manifest.shards:
            tally._apply(entry)
        tally.done_before = tally.done
        return tally

    def record(self, entry: ShardEntry) -> None:
        """Add a shard just recorded done or failed (its manifest entry)."""
        if entry.status == "done":
            self.built_now += 1
        elif entry.status == "failed":
            self.failed_now += 1
        self._apply(entry)

    def _apply(self, entry: ShardEntry) -> None:
        old = self._parts.pop(entry.id, None)
        if old is not None:
            self._add(old, -1)
        part = _Contribution.of(entry.counts())
        self._parts[entry.id] = part
        self._add(part, 1)

    def _add(self, part: _Contribution, sign: int) -> None:
        if part.settled is not None:
            self.shards[part.settled] += sign
        for mine, theirs in ((self.rows, part.rows), (self.rejects, part.rejects)):
            for k, v in theirs.items():
                mine[k] += sign * v
        for k, v in part.tokens.items():
            self.tokens[k] += sign * v
        for modality, per in part.qa.items():
            counts = self.qa.setdefault(modality, Counter())
            for task, n in per.items():
                counts[task] += sign * n

    @property
    def done(self) -> int:
        """Shards done, before this run or in it."""
        return self.shards["done"]

    @property
    def failed(self) -> int:
        """Shards failed (in this run: a resume retries the failed ones)."""
        return self.shards["failed"]

    @property
    def settled(self) -> int:
        """Shards that need no more work in this run."""
        return self.done + self.failed

    @property
    def percent(self) -> float:
        """Shards settled, in percent of the plan (100 for an empty plan)."""
        return 100.0 if self.total == 0 else round(100.0 * self.settled / self.total, 2)

    @property
    def qa_pairs(self) -> int:
        """QA pairs so far, all modalities and tasks."""
        return sum(sum(per.values()) for per in self.qa.values())

    def eta_s(self, elapsed_s: float) -> float | None:
        """Seconds left at this run's pace (None before this run finished a shard)."""
        worked = self.built_now + self.failed_now
        if worked == 0:
            return None
        return max(0.0, (self.total - self.settled) * elapsed_s / worked)

    def qa_table(self) -> list[dict[str, Any]]:
        """QA pairs per modality (rows, in the modality keys' order) and task (columns)."""
        known = [m for m in MODALITIES if m in self.qa]
        others = sorted(m for m in self.qa if m not in MODALITIES)
        rows = []
        for modality in known + others:
            per = self.qa[modality]
            counts = {t: per.get(t, 0) for t in TASKS}
            if any(counts.values()) or any(per.values()):
                rows.append({"modality": modality, **counts, "total": sum(per.values())})
        return rows

    def rejects_table(self) -> list[dict[str, Any]]:
        """Rejected items per reason, the most frequent first."""
        nonzero = [(r, n) for r, n in self.rejects.items() if n]
        counts = sorted(nonzero, key=lambda rn: (-rn[1], rn[0]))
        return [{"reason": r, "count": n} for r, n in counts]

    def llm_table(self) -> list[dict[str, Any]]:
        """What an LLM build sent and spent so far (one row)."""
        return [
            {
                "requests": self.tokens["requests"],
                "cache_hits": self.tokens["cache_hits"],
                "prompt_tokens": self.tokens["prompt"],
                "completion_tokens": self.tokens["completion"],
                "estimated_cost_usd": round(self.tokens["cost_usd"], 6),
            }
        ]

    def describe(self, elapsed_s: float, llm: bool = False) -> str:
        """One line for the progress artifact: shards, images, QA pairs, rejects, ETA (and the
        LLM spend)."""
        parts = [f"{self.settled}/{self.total} shards"]
        if self.failed:
            parts[0] += f" ({self.failed} failed)"
        if self.done_before:
            parts[0] += f", {self.done_before} done before this run"
        parts += [
            f"{self.rows['images']} images",
            f"{self.qa_pairs} QA pairs",
            f"{self.rows['rejects']} rejects",
        ]
        if llm:
            t = self.tokens
            parts.append(
                f"LLM {t['requests']} requests ({t['cache_hits']} from the cache), "
                f"{t['prompt']} prompt + {t['completion']} completion tokens, "
                f"~${t['cost_usd']:.4f}"
            )
        if self.settled < self.total:
            eta = self.eta_s(elapsed_s)
            parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA unknown")
        else:
            parts.append(f"finished in {format_duration(elapsed_s)}")
        return " · ".join(parts)


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``: what a person reads at a glance."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


# -- publishing ------------------------------------------------------------------------------


class ArtifactSink(Protocol):
    """Where the dashboard's numbers go (Prefect artifacts; anything that records them)."""

    def progress(self, key: str, percent: float, description: str) -> None: ...

    def table(self, key: str, rows: list[dict[str, Any]], description: str) -> None: ...


class PrefectArtifacts:
    """Artifacts of the running flow, one per key: created at the key's first publication,
    then updated in place (its id kept: the same artifact, not a new version).

    The Prefect UI renders descriptions and a table's string cells as Markdown: both are
    escaped here (:mod:`medgrit.core.markdown`), so the sink's callers pass plain text.
    """

    def __init__(self) -> None:
        self._ids: dict[str, UUID] = {}

    def progress(self, key: str, percent: float, description: str) -> None:
        from prefect.artifacts import create_progress_artifact

        shown = escape_markdown(description)
        if not self._updated(key, percent, shown):  # a progress artifact's data: the percent
            self._ids[key] = create_progress_artifact(percent, key=key, description=shown)

    def table(self, key: str, rows: list[dict[str, Any]], description: str) -> None:
        from prefect.artifacts import create_table_artifact

        cells, shown = escape_cells(rows), escape_markdown(description)
        if not self._updated(key, json.dumps(cells), shown):  # a table's data: rows as JSON
            self._ids[key] = create_table_artifact(cells, key=key, description=shown)

    def _updated(self, key: str, data: str | float, description: str) -> bool:
        """Update the artifact of ``key`` if this run created it; False if it did not."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        if key not in self._ids:
            return False
        update = ArtifactUpdate(data=data, description=description)
        with get_client(sync_client=True) as client:
            client.update_artifact(self._ids[key], update)
        return True


class BuildDashboard:
    """``run_build``'s ``on_progress`` hook: running totals, published throttled.

    Args:
        config: the build's config (OUT names the keys; the generator adds the LLM table).
        sink: where artifacts go (default: the running flow's Prefect artifacts).
        every_s: least seconds between publications (default :data:`UPDATE_EVERY_S`).
        table_fraction: tables wait at least this share of the elapsed time (default
            :data:`TABLE_EVERY_FRACTION`).
        clock: seconds, monotonic (a test's clock).
    """

    def __init__(
        self,
        config: BuildConfig,
        sink: ArtifactSink | None = None,
        every_s: float | None = None,
        table_fraction: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = dataset_name(config.out)
        self.keys = ArtifactKeys.of(self.name)
        self.llm = config.generator == "llm"
        self.sink = sink or PrefectArtifacts()
        self.every_s = UPDATE_EVERY_S if every_s is None else every_s
        self.table_fraction = TABLE_EVERY_FRACTION if table_fraction is None else table_fraction
        self.clock = clock
        self.tally: BuildTally | None = None
        self.started = clock()
        self._progress_at: float | None = None
        self._tables_at: float | None = None
        self._unpublished = False

    def __call__(self, manifest: Manifest, entry: ShardEntry | None) -> None:
        """The plan (``entry`` None) or one shard recorded (its entry); publish when due."""
        if entry is None or self.tally is None:
            self.tally = BuildTally.start(manifest)
            self.started = self.clock()
            first = True
        else:
            self.tally.record(entry)
            first = False
        self._unpublished = True
        now = self.clock()
        always = first or self.tally.settled >= self.tally.total
        wait = max(self.every_s, self.table_fraction * (now - self.started))
        if always or self._tables_at is None or now - self._tables_at >= wait:
            self.publish()
        elif self._progress_at is None or now - self._progress_at >= self.every_s:
            self.publish(tables=False)

    def flush(self) -> None:
        """Publish what changed since the last publication (the build's end, however it
        ended)."""
        if self._unpublished and self.tally is not None:
            self.publish()

    def publish(self, tables: bool = True) -> None:
        """Publish the totals now: the progress artifact, and the tables unless ``tables`` is
        False."""
        tally = self.tally
        if tally is None:
            return
        now = self.clock()
        self._progress_at = now
        elapsed = now - self.started
        self.sink.progress(self.keys.progress, tally.percent, tally.describe(elapsed, self.llm))
        if not tables:
            return
        self._tables_at = now
        self._unpublished = False
        where = f"{self.name}: {tally.settled}/{tally.total} shards"
        self.sink.table(self.keys.qa, tally.qa_table(), f"QA pairs per modality and task, {where}")
        self.sink.table(self.keys.rejects, tally.rejects_table(), f"Rejects per reason, {where}")
        if self.llm:
            self.sink.table(self.keys.llm, tally.llm_table(), f"LLM requests and spend, {where}")

    def summary_lines(self, out: str | Path) -> list[str]:
        """Markdown lines for the build summary: a link to the dataset and this run's shards
        (the folder's name escaped, its URI percent-encoded)."""
        folder = Path(out).absolute()
        lines = [f"- dataset folder: [{escape_markdown(str(folder))}]({folder.as_uri()})"]
        if self.tally is not None:
            t = self.tally
            lines.append(
                f"- shards this run: {t.built_now} built, {t.failed_now} failed, "
                f"{t.done_before} done before (of {t.total})"
            )
        return lines
