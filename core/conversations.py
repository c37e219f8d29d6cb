"""A shard's conversations: every pending image's turns generated at once, verified, written.

:func:`write_conversations` asks the generator for all images of the shard together (so an LLM
can take them concurrently); :func:`verify_turns` keeps the turns whose every claim holds
(``medgrit.core.verify``) and makes a reject of each other one. An image left without a
conversation is dropped with its region rows: every image written has one conversation.
"""

from __future__ import annotations

from medgrit.core.failures import fails_the_shard
from medgrit.core.generation import QA, Generated, Generator, RegionFacts
from medgrit.core.shard_rows import PendingImage, Reject, ShardRows, error_detail
from medgrit.core.verify import verify_qa
from medgrit.schemas.rows import conversation_row, reject_row


def verify_turns(
    result: Generated, regions: list[RegionFacts], rules: object
) -> tuple[list[QA], list[Reject]]:
    """The generated turns whose every claim holds, and a reject for each of the others (the
    generator's own rejects first)."""
    rejects = [Reject("generate", reason, detail) for reason, detail in result.rejects]
    by_id = {f.region_id: f for f in regions}
    accepted = []
    for qa in result.turns:
        reason = verify_qa(qa, by_id, rules)
        if reason is None:
            accepted.append(qa)
        else:
            rejects.append(Reject("verify", reason, f"{qa.task}: {qa.answer[:200]}"))
    if not accepted:
        rejects.append(Reject("verify", "empty_conversation", "no turn passed verification"))
    return accepted, rejects


def write_conversation(
    item: PendingImage, result: Generated, generator: Generator, rows: ShardRows
) -> bool:
    """Verify one image's generated turns and append its conversation row; False (and an
    ``empty_conversation`` reject) when no turn passed."""
    accepted, rejects = verify_turns(result, item.regions, generator.text_rules)
    for reject in rejects:
        rows.rejects.append(_reject_row(item, reject))
    if not accepted:
        return False
    rows.conversations.append(
        conversation_row(
            item.image.image_id,
            item.task.split,
            accepted,
            generator.name,
            generator.template_hash,
            result.prompt_hash,
            result.prompt_tokens,
            result.completion_tokens,
        )
    )
    return True


def _reject_row(item: PendingImage, reject: Reject) -> dict:
    task = item.task
    return reject_row(
        reject.stage,
        reject.reason,
        reject.detail,
        item.source,
        task.ref.dataset,
        task.case_id,
        item.image.image_id,
    )


def write_conversations(generator: Generator, rows: ShardRows) -> None:
    """Generate, verify and append the conversations of every pending image.

    An image left without a conversation (its turns all failed, or writing them failed) is
    dropped from the image and region rows: every image written has one conversation.
    """
    pending, rows.pending = rows.pending, []
    try:
        results: list[Generated | None] = list(
            generator.generate_all([(p.image, p.regions) for p in pending])
        )
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        results = [_generate_one(generator, item, rows) for item in pending]
    dropped: set[str] = set()
    for item, result in zip(pending, results, strict=True):
        if result is None or not _write_guarded(item, result, generator, rows):
            dropped.add(item.image.image_id)
    if dropped:
        rows.images[:] = [r for r in rows.images if r["image_id"] not in dropped]
        rows.regions[:] = [r for r in rows.regions if r["image_id"] not in dropped]


def _generate_one(generator: Generator, item: PendingImage, rows: ShardRows) -> Generated | None:
    """One image's conversation alone (after the shard's batch failed); None on failure."""
    try:
        return generator.generate_all([(item.image, item.regions)])[0]
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        _reject_unexpected(rows, "generate", item, exc)
        return None


def _write_guarded(
    item: PendingImage, result: Generated, generator: Generator, rows: ShardRows
) -> bool:
    marks = (len(rows.conversations), len(rows.rejects))
    try:
        return write_conversation(item, result, generator, rows)
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        del rows.conversations[marks[0] :], rows.rejects[marks[1] :]
        _reject_unexpected(rows, "verify", item, exc)
        return False


def _reject_unexpected(rows: ShardRows, stage: str, item: PendingImage, exc: Exception) -> None:
    detail = error_detail(exc, item.task.ref)
    rows.rejects.append(_reject_row(item, Reject(stage, "unexpected_error", detail)))
