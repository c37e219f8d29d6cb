"""Content-addressed cache of LLM answers, stored inside the dataset directory.

Layout: ``<folder>/<key[:2]>/<key>.json``, one JSON record per request, where ``key`` is the
request's :func:`medgrit.adapters.llm.chat.request_hash` (sha256 hex of the model, sampling
parameters and messages). A record is ``{"content", "prompt_tokens", "completion_tokens",
"model"}``. Only answers the pipeline judged valid are stored, so a rerun or a resume sends no
request whose valid answer is known.

:class:`AnswerCache` is the only reader and writer of these records: the generator asks it
first and stores there the answers it judged valid; the client and the batch runner are
transport only.

Writes are atomic (``medgrit.adapters.runtime.atomic``: a temporary file of its own in the same
folder, then ``os.replace``), so a reader, a concurrent writer thread or an interrupted run never
sees half a record. Two writers of the same key write the same content; the last replace wins.
Each write waits for its file and folder to reach the disk (two fsyncs, milliseconds each), so
:meth:`AnswerCache.store_all` writes the answers of a shard's round on a few threads at once:
one after another they would hold the shard, and its place among the shards in flight, for
seconds after its last answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medgrit.adapters.llm.chat import ChatRequest, ChatResult, LLMSettings, request_hash
from medgrit.adapters.runtime.atomic import write_atomic

_KEY = re.compile(r"[0-9a-f]{8,128}")
STORE_THREADS = 8
"""Records :meth:`AnswerCache.store_all` writes at once (their fsyncs overlap)."""


class ResponseCache:
    """A folder of JSON answer records addressed by request hash.

    Args:
        folder: where the records live (the pipeline passes ``OUT/llm/cache``); created on
            the first write.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.folder)!r})"

    def path(self, key: str) -> Path:
        """The record file of ``key``.

        Raises:
            ValueError: ``key`` is not a lower-case hex digest.
        """
        if not _KEY.fullmatch(key):
            raise ValueError(f"cache keys are lower-case hex digests, got {key!r}")
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The record stored under ``key``, or ``None`` when there is none.

        A record that cannot be read as a JSON object (a foreign file) counts as absent.
        """
        try:
            text = self.path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict) -> None:
        """Store ``record`` under ``key`` atomically (``write_atomic``)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, json.dumps(record, ensure_ascii=False, sort_keys=True))

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()


class AnswerCache:
    """The one path by which LLM answers are looked up and stored (the generator's): the
    client and the batch runner only send what this leaves to ask.

    Args:
        folder: the records' folder (``OUT/llm/cache``).
        settings: the model and parameters, part of every key.
    """

    def __init__(self, folder: Path, settings: LLMSettings) -> None:
        self.records = ResponseCache(folder)
        self.settings = settings

    def __repr__(self) -> str:
        return f"AnswerCache({str(self.records.folder)!r})"

    def answer(self, request: ChatRequest) -> ChatResult | None:
        """The stored answer to ``request`` (``from_cache`` set), or None."""
        key = request_hash(self.settings, request)
        record = self.records.get(key)
        if record is None:
            return None
        return ChatResult(
            request.custom_id,
            record["content"],
            record["prompt_tokens"],
            record["completion_tokens"],
            key,
            from_cache=True,
        )

    def split(
        self, requests: list[ChatRequest]
    ) -> tuple[dict[int, ChatResult], list[tuple[int, ChatRequest]]]:
        """Stored answers by request index, and the (index, request) pairs still to ask."""
        hits: dict[int, ChatResult] = {}
        todo: list[tuple[int, ChatRequest]] = []
        for i, request in enumerate(requests):
            found = self.answer(request)
            if found is None:
                todo.append((i, request))
            else:
                hits[i] = found
        return hits, todo

    def store(self, request: ChatRequest, result: ChatResult) -> None:
        """Store ``result`` as the answer to ``request``; call only for answers judged valid.

        Raises:
            ValueError: the result has no content (a failure is never stored).
        """
        if result.content is None:
            raise ValueError(f"request {request.custom_id!r} has no answer to cache")
        self.records.put(
            result.request_hash or request_hash(self.settings, request),
            {
                "content": result.content,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "model": self.settings.model,
            },
        )

    def store_all(self, answers: Sequence[tuple[ChatRequest, ChatResult]]) -> None:
        """:meth:`store` for each ``(request, result)`` pair, ``STORE_THREADS`` at a time.

        Raises:
            ValueError: a result has no content (nothing is stored then).
            OSError: a record could not be written (the others may have been).
        """
        for request, result in answers:
            if result.content is None:
                raise ValueError(f"request {request.custom_id!r} has no answer to cache")
        if len(answers) <= 1:
            for request, result in answers:
                self.store(request, result)
            return
        with ThreadPoolExecutor(min(STORE_THREADS, len(answers))) as pool:
            for _ in pool.map(lambda pair: self.store(*pair), answers):
                pass  # re-raises the first failure
