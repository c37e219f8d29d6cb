"""A dataset's splits as training examples and generation prompts, in the model's box format.

Train: one example per image of the train split with turns, every turn in ChatML (see
:mod:`medgrit.core.vlm`), tokenised once here with its labels (loss on the answers only) and kept
with the image's PNG bytes and its length in tokens (for length-grouped batches). The examples
are written with ``datasets`` to ``OUTPUT/examples`` as Arrow files, memory-mapped while
training, so a Med-GRIT-sized split never sits in memory. An example longer than ``max_length``
keeps as many whole turns as fit; one whose first turn does not fit is left out and counted.

Test: the test turns of the ``bird`` export (same records, same order), each a prompt of one
question, for greedy generation per task. With ``eval_split = "train"``, the train turns that
were trained, each asked in its conversation.

Text comes from the dataset: for ``qwen-vl`` as it is; for the other box formats every box
(questions' and answers') is written from its region's box in the format's frame, pixel boxes in
the frame of the image as the processor resizes it (:func:`medgrit.core.exports.model_text`,
the function ``medgrit export`` writes its text with too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from medgrit.adapters.export.bird import TestItem, test_items
from medgrit.adapters.export.records import DatasetRecords, ExportRecord, iter_images
from medgrit.adapters.training.processor import VisionChatProcessor
from medgrit.core.exports import bird_question, model_text
from medgrit.core.vlm import chat_pieces


class NoExampleFits(ValueError):
    """No train example fits in ``max_length`` tokens (the user must change the config)."""


@dataclass(frozen=True)
class ExampleStats:
    """What the train examples hold: examples, turns, tokens, and what did not fit."""

    examples: int
    turns: int
    tokens: int
    trained_tokens: int
    turns_cut: int
    examples_too_long: int


def _text(
    text: str, record: ExportRecord, region_ids: tuple[str, ...], box_format: str, resized: tuple
) -> str:
    """A turn's text as the model reads and writes it (see the module docstring)."""
    size = (record.width, record.height)
    return model_text(text, record.regions, region_ids, box_format, size, resized)


EXAMPLES_FILE = "train.arrow"
_BATCH_ROWS = 64


def _example_rows(
    records: DatasetRecords, processor: VisionChatProcessor, box_format: str, max_length: int
) -> Iterator[tuple[dict | None, int]]:
    """(row, turns cut) per train image with turns; the row is None when nothing fits."""
    for record, png in iter_images(records):
        if record.split != "train" or not record.qa:
            continue
        resized = processor.resized(record.width, record.height)
        turns = [
            (
                _text(q.question, record, q.region_ids, box_format, resized),
                _text(q.answer, record, q.region_ids, box_format, resized),
            )
            for q in record.qa
        ]
        kept = len(turns)
        size = (record.width, record.height)
        encoded = processor.encode(chat_pieces(turns, processor.system), *size)
        while len(encoded.input_ids) > max_length and kept > 1:
            kept -= 1
            encoded = processor.encode(chat_pieces(turns[:kept], processor.system), *size)
        if len(encoded.input_ids) > max_length:
            yield None, len(turns)
            continue
        row = {
            "name": record.name,
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "png": png,
            "length": len(encoded.input_ids),
            "turns": kept,
        }
        yield row, len(turns) - kept


def write_train_examples(
    records: DatasetRecords,
    processor: VisionChatProcessor,
    box_format: str,
    max_length: int,
    folder: Path,
) -> ExampleStats:
    """Write the train examples to ``folder/train.arrow`` (an Arrow stream, which
    ``datasets.Dataset.from_file`` memory-maps) and say what they hold. Examples that do not fit
    at all are counted, not written.

    Raises:
        NoExampleFits: when the train split has no example that fits.
    """
    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field("name", pa.string()),
            pa.field("input_ids", pa.list_(pa.int32())),
            pa.field("labels", pa.list_(pa.int32())),
            pa.field("png", pa.binary()),
            pa.field("length", pa.int32()),
            pa.field("turns", pa.int32()),
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    examples = turns = tokens = trained = cut = too_long = 0
    batch: list[dict] = []
    with (
        pa.OSFile(str(folder / EXAMPLES_FILE), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as writer,
    ):
        for row, turns_cut in _example_rows(records, processor, box_format, max_length):
            cut += turns_cut
            if row is None:
                too_long += 1
                continue
            examples += 1
            turns += row["turns"]
            tokens += row["length"]
            trained += sum(1 for t in row["labels"] if t != -100)
            batch.append(row)
            if len(batch) == _BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
    if examples == 0:
        raise NoExampleFits(
            f"no train example fits in max_length tokens ({max_length}): raise max_length or "
            "lower max_pixels"
        )
    return ExampleStats(examples, turns, tokens, trained, cut, too_long)


def load_train_examples(folder: Path):  # -> datasets.Dataset
    """The written train examples, memory-mapped."""
    import datasets

    return datasets.Dataset.from_file(str(folder / EXAMPLES_FILE))


@dataclass(frozen=True)
class Prompt:
    """One test turn to answer: its place in the ``bird`` test order, the line fields BiRD's
    inference writes, and the model's prompt (ids) with the resized image size."""

    index: int
    task: str
    name: str
    question: str
    annotation: str
    input_ids: list[int]
    resized: tuple[int, int]


def _chosen(index: int, name: str, question: str) -> str:
    return hashlib.sha256(f"{index}\x00{name}\x00{question}".encode()).hexdigest()


def _positions(items: list[TestItem]) -> list[int]:
    """Each turn's place in its conversation (items come in record, then turn, order)."""
    at: list[int] = []
    last = None
    for it in items:
        at.append(at[-1] + 1 if it.record.name == last else 0)
        last = it.record.name
    return at


def select_test_items(
    records: DatasetRecords,
    tasks: list[str],
    per_task: int | None,
    split: str = "test",
    trained: dict[str, int] | None = None,
) -> list[int]:
    """Indices into ``test_items(records, split)`` of the turns to answer: every turn of
    ``tasks``, or at most ``per_task`` of each, picked by a hash of the turn (spread over the
    split's datasets and modalities, the same on every run), in test order. ``trained`` (train
    turns kept per example name) leaves out the turns no example holds."""
    items = test_items(records, split)
    at = _positions(items)
    chosen: list[int] = []
    for task in tasks:
        ids = [
            i
            for i, it in enumerate(items)
            if it.task == task and (trained is None or at[i] < trained.get(it.record.name, 0))
        ]
        if per_task is not None and len(ids) > per_task:
            ranked = sorted(ids, key=lambda i: _chosen(i, items[i].record.name, items[i].question))
            ids = sorted(ranked[:per_task])
        chosen += ids
    return sorted(chosen)


def iter_prompts(
    records: DatasetRecords,
    processor: VisionChatProcessor,
    box_format: str,
    chosen: list[int],
    split: str = "test",
) -> Iterator[tuple[Prompt, bytes]]:
    """The chosen turns of ``split`` as prompts with their image bytes, streamed in order.

    A test turn is asked alone, after the image (BiRD's protocol). A train turn is asked in the
    conversation it was trained in, after the turns before it with their reference answers: what
    a model that learned its examples must answer word for word."""
    items = test_items(records, split)
    at = _positions(items)
    wanted = set(chosen)
    by_name: dict[str, list[int]] = {}
    for i in chosen:
        by_name.setdefault(items[i].record.name, []).append(i)
    for record, png in iter_images(records):
        if record.split != split or record.name not in by_name:
            continue
        resized = processor.resized(record.width, record.height)
        for i in by_name[record.name]:
            if i not in wanted:
                continue
            item = items[i]
            plain = item.question.removeprefix(bird_question(record.name, ""))
            text = _text(plain, record, item.region_ids, box_format, resized)
            before = record.qa[: at[i]] if split == "train" else ()
            context = [
                tuple(
                    _text(t, record, q.region_ids, box_format, resized)
                    for t in (q.question, q.answer)
                )
                for q in before
            ]
            pieces = chat_pieces([*context, (text, None)], processor.system)
            encoded = processor.encode(pieces, record.width, record.height)
            yield (
                Prompt(
                    index=i,
                    task=item.task,
                    name=record.name,
                    question=bird_question(record.name, plain),
                    annotation=item.answer,
                    input_ids=encoded.input_ids,
                    resized=resized,
                ),
                png,
            )


def longest_answers(
    records: DatasetRecords, processor: VisionChatProcessor, box_format: str
) -> dict[str, int]:
    """Per task, the most tokens any train answer takes in the model's box format, with its
    closing ``<|im_end|>``, under the model's own tokenizer (Qwen2's writes every digit as a
    token, so a box costs far more tokens than its characters suggest). Test answers are not
    read: they must not set what the model is allowed to write."""
    longest: dict[str, int] = {}
    tasks: list[str] = []
    texts: list[str] = []

    def count() -> None:
        for task, ids in zip(
            tasks, processor.tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True
        ):
            longest[task] = max(longest.get(task, 0), len(ids) + 1)
        tasks.clear()
        texts.clear()

    for record in records.splits.get("train", ()):
        resized = processor.resized(record.width, record.height)
        for q in record.qa:
            tasks.append(q.task)
            texts.append(_text(q.answer, record, q.region_ids, box_format, resized))
        if len(texts) >= 4096:
            count()
    if texts:
        count()
    return longest


def new_token_limits(longest: dict[str, int], given: dict[str, int]) -> dict[str, int]:
    """New tokens per task: what the config gives, else the longest answer plus a quarter (at
    least 16), so that an answer a little longer than any reference is not cut."""
    tasks = set(longest) | set(given)
    return {
        t: given[t] if t in given else longest[t] + max(16, -(-longest[t] // 4))
        for t in sorted(tasks)
    }
