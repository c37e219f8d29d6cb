"""A shard's rows as the pipeline builds them: the planned case, reject records, the rows of
the four tables, and the guard that turns one record's failure into one reject row.

A reject row names where it came from (:func:`case_source`): dataset, the case's reference and
the slice; for DICOM, whose file names may carry identifiers, the case's pseudonym, and never an
exception's message (:func:`error_detail`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medgrit.core.cases import Case, UnreadableImage
from medgrit.core.failures import fails_the_shard
from medgrit.core.fsnames import escape_name
from medgrit.core.generation import ImageFacts, RegionFacts
from medgrit.core.rows import reject_row
from medgrit.core.vocab import RejectReason


@dataclass(frozen=True)
class CaseTask:
    """A case as planned: its pseudonymous id, its split, how many images it may give, and
    what a later build tells that the case changed by: ``listed``, the images its listing or
    header showed; ``fingerprint``, a hash of its labels and its files' sizes and modification
    times; ``content``, a hash of its files' bytes (only when asked for)."""

    ref: Case
    case_id: str
    split: str
    quota: int | None = None
    listed: int | None = None
    fingerprint: str | None = None
    content: str | None = None


@dataclass(frozen=True)
class Reject:
    """A record dropped, before it becomes a row: stage, stable reason, detail, slice."""

    stage: str
    reason: RejectReason
    detail: str
    index: int | None = None


@dataclass(frozen=True)
class PendingImage:
    """An image whose rows are written and whose conversation is still to be generated."""

    task: CaseTask
    source: str
    image: ImageFacts
    regions: list[RegionFacts]


@dataclass
class ShardRows:
    """Rows of the four tables for one shard, in deterministic order."""

    images: list[dict] = field(default_factory=list)
    regions: list[dict] = field(default_factory=list)
    conversations: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    non_finite: int = 0  # NaN or infinite intensities left out of the mapping
    pending: list[PendingImage] = field(default_factory=list)

    def as_tables(self) -> dict[str, list[dict]]:
        """The rows by table name."""
        return {
            "images": self.images,
            "regions": self.regions,
            "conversations": self.conversations,
            "rejects": self.rejects,
        }

    def reject(self, task: CaseTask, reject: Reject, image_id: str | None = None) -> None:
        """Append a reject row for ``task``."""
        self.rejects.append(
            reject_row(
                reject.stage,
                reject.reason,
                reject.detail,
                case_source(task.ref, reject.index),
                task.ref.dataset,
                task.case_id,
                image_id,
            )
        )

    def _marks(self) -> tuple[int, ...]:
        lists = (self.images, self.regions, self.conversations, self.rejects, self.pending)
        return (*(len(rows) for rows in lists), self.non_finite)

    def _roll_back(self, marks: tuple[int, ...]) -> None:
        lists = (self.images, self.regions, self.conversations, self.rejects, self.pending)
        for rows, mark in zip(lists, marks, strict=False):
            del rows[mark:]
        self.non_finite = marks[-1]


# -- where a reject came from ----------------------------------------------------------------


def case_source(case: Case, slice_index: int | None = None) -> str:
    """Reference to the source of a reject row: dataset, the case's reference (a file name, or
    for DICOM, whose file names may carry identifiers, the case pseudonym), slice."""
    base = escape_name(f"{case.dataset}/{case.reference}")
    return base if slice_index is None else f"{base}#slice={slice_index}"


def error_detail(exc: Exception, case: Case) -> str:
    """What a reject row says of an unexpected exception: its class, and for formats whose
    messages cannot quote patient data (not DICOM) its message, escaped and cut short."""
    if case.identifying:
        return type(exc).__name__
    text = str(exc)
    if isinstance(exc, OSError) and exc.filename:
        text = f"[Errno {exc.errno}] {exc.strerror}: {Path(str(exc.filename)).name}"
    # Reject rows name files, not the folders a user keeps them in.
    root = case.source.partition(":")[2]
    for path in sorted({*case.message_paths, root} - {""}, key=len)[::-1]:
        text = text.replace(str(Path(path).parent) + "/", "").replace(path, Path(path).name)
    return f"{type(exc).__name__}: {escape_name(' '.join(text.split()))}"[:300]


def guarded(
    rows: ShardRows,
    task: CaseTask,
    stage: str,
    index: int | None,
    work: Callable[[], None],
    image_id: str | None = None,
) -> None:
    """Run one record's ``work``; on a record-level exception drop what it added to ``rows``
    and write one reject row instead (infrastructure failures propagate)."""
    marks = rows._marks()
    try:
        work()
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        rows._roll_back(marks)
        if isinstance(exc, UnreadableImage):
            reason, detail = exc.reason, exc.detail
        else:
            reason, detail = "unexpected_error", error_detail(exc, task.ref)
        rows.reject(task, Reject(stage, reason, detail, index), image_id)
