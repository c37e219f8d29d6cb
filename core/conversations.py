"""A shard's conversations: every pending image's turns generated at once, verified, written.

:func:`write_conversations` asks the generator for all images of the shard together (so an LLM
can take them concurrently); :func:`verify_turns` keeps the turns whose every claim holds
(``medgrit.core.verify``, read with the build's label vocabulary) and makes a reject of each
other one, with its reason and the words that broke the rule; the honest turns of the same answer
are kept. An image left without a conversation is dropped with its region rows: every image
written has one conversation.
"""

from __future__ import annotations

from medgrit.core.cases import NO_VOCABULARY, Vocabulary
from medgrit.core.failures import fails_the_shard
from medgrit.core.generation import QA, Generated, Generator, ImageFacts, RegionFacts
from medgrit.core.lexicon import Lexicon
from medgrit.core.rows import conversation_row, reject_row
from medgrit.core.shard_rows import PendingImage, Reject, ShardRows, error_detail
from medgrit.core.verify import Failure, ImageTruth, check_turn


def turn_detail(number: int, qa: QA, failure: Failure) -> str:
    """A reject row's detail for an untrue turn: which turn, the words that broke the rule, and
    the answer (cut to 200 characters)."""
    words = f" {failure.evidence!r}" if failure.evidence else ""
    return f"turn {number} ({qa.task}){words}: {qa.answer[:200]}"


def verify_turns(
    result: Generated,
    image: ImageFacts,
    regions: list[RegionFacts],
    rules: object,
    lexicon: Lexicon | None = None,
) -> tuple[list[QA], list[Reject]]:
    """The generated turns whose every claim holds, and a reject for each of the others (the
    generator's own rejects first).

    Args:
        result: the generator's turns for the image.
        image: the image.
        regions: all its regions.
        rules: the generator's text rules (``medgrit.core.verify.TextRules`` or None).
        lexicon: structure names of the build (default: the packaged ones).
    """
    rejects = [Reject("generate", reason, detail) for reason, detail in result.rejects]
    truth = ImageTruth(regions, image, lexicon)
    accepted = []
    for number, qa in enumerate(result.turns, 1):
        failure = check_turn(qa, truth, rules)  # type: ignore[arg-type]
        if failure is None:
            accepted.append(qa)
        else:
            rejects.append(Reject("verify", failure.reason, turn_detail(number, qa, failure)))
    if not accepted:
        rejects.append(Reject("verify", "empty_conversation", "no turn passed verification"))
    return accepted, rejects


def write_conversation(
    item: PendingImage,
    result: Generated,
    generator: Generator,
    rows: ShardRows,
    lexicon: Lexicon | None = None,
) -> bool:
    """Verify one image's generated turns and append its conversation row; False (and an
    ``empty_conversation`` reject) when no turn passed."""
    accepted, rejects = verify_turns(
        result, item.image, item.regions, generator.text_rules, lexicon
    )
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


def write_conversations(
    generator: Generator, rows: ShardRows, vocabulary: Vocabulary = NO_VOCABULARY
) -> None:
    """Generate, verify and append the conversations of every pending image.

    ``vocabulary`` holds the build's label names and their synonyms: a text naming one its
    image lacks is untrue.

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
    lexicon = vocabulary.lexicon()
    dropped: set[str] = set()
    for item, result in zip(pending, results, strict=True):
        if result is None or not _write_guarded(item, result, generator, rows, lexicon):
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
    item: PendingImage, result: Generated, generator: Generator, rows: ShardRows, lexicon: Lexicon
) -> bool:
    marks = (len(rows.conversations), len(rows.rejects))
    try:
        return write_conversation(item, result, generator, rows, lexicon)
    except Exception as exc:
        if fails_the_shard(exc):
            raise
        del rows.conversations[marks[0] :], rows.rejects[marks[1] :]
        _reject_unexpected(rows, "verify", item, exc)
        return False


def _reject_unexpected(rows: ShardRows, stage: str, item: PendingImage, exc: Exception) -> None:
    detail = error_detail(exc, item.task.ref)
    rows.rejects.append(_reject_row(item, Reject(stage, "unexpected_error", detail)))
