"""The LLM generator: conversations written by any OpenAI-compatible endpoint, then verified.

For each image the model gets only text facts (modality, view, regions with their Qwen-VL boxes,
position, size and side; see ``medgrit.schemas.llm``) rendered with ``prompts/llm_system.j2``
and ``prompts/llm_user.j2``, and answers with one JSON conversation. All images of a shard are
asked at once: concurrently through the process's shared :class:`OpenAICompatibleClient`
(``medgrit.adapters.llm.dispatch``: one limiter and in-flight window for all shards), or
through the Batch API. Each answer is parsed with pydantic and every turn is verified
(``medgrit.core.verify``, with length and copy rules, names read with the build's label
vocabulary); an answer with an untrue turn is asked again with each failed turn and its reason
fed back (``retry_invalid`` times). The attempt with the most true turns is kept (the later one
on a tie); its untrue turns, and those of the attempts it replaced, become reject rows.

Cache: every answer that parses is stored, content-addressed by the request, inside the dataset
directory; a rerun or a resume answers those requests from the cache and sends nothing. Table
rows record the tokens of the answers they use, so a rerun from the cache writes identical
tables; what a run actually spent is in :meth:`LLMGenerator.spend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from medgrit.adapters.llm.cache import AnswerCache
from medgrit.adapters.llm.chat import (
    ChatRequest,
    ChatResult,
    LLMSettings,
    Usage,
    estimate_cost,
)
from medgrit.adapters.llm.dispatch import shared_client
from medgrit.adapters.llm.formats import LLMEndpointError, refused_message, response_format_for
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.adapters.text.templates import (
    combined_hash,
    make_environment,
    template_hashes,
    view_variables,
)
from medgrit.core.conversations import turn_detail
from medgrit.core.failures import InfrastructureError
from medgrit.core.generation import QA, Generated, ImageFacts, RegionFacts
from medgrit.core.lexicon import lexicon_for
from medgrit.core.text import laterality_of
from medgrit.core.verify import Failure, ImageTruth, TextRules, check_turn
from medgrit.core.vocab import TASKS
from medgrit.schemas.config import LLMConfig
from medgrit.schemas.llm import ImagePromptFacts, LLMConversation, PromptRegion

PROMPT_FILES = ("llm_system.j2", "llm_user.j2")
# Failures of the endpoint rather than of an answer: the shard fails and a resume asks again
# (answers already received are cached and not paid twice). ``unsupported_request`` (the server
# refuses the request's shape, its response_format) is neither: it raises LLMEndpointError.
INFRASTRUCTURE_ERRORS = frozenset(
    {
        "rate_limited",
        "server_error",
        "timeout",
        "connection_error",
        "failed",
        "expired",
        "authentication_error",
        "stopped",  # the build is stopping (SIGTERM, SIGINT)
    }
)


class LLMUnavailable(InfrastructureError, RuntimeError):
    """The endpoint kept failing (after the client's retries) for some requests of a shard."""


MAX_PROMPT_REGIONS = 16


def settings_from_config(config: LLMConfig, share: int = 1) -> LLMSettings:
    """Client settings of an LLM config (limits divided by ``share`` concurrent users)."""
    return LLMSettings(
        model=config.model,
        base_url=config.base_url,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        requests_per_minute=max(1, config.requests_per_minute // share),
        tokens_per_minute=max(1, config.tokens_per_minute // share),
        max_concurrency=config.max_concurrency,
        timeout_s=config.timeout_s,
        price_input_per_million=config.price_input_per_million,
        price_output_per_million=config.price_output_per_million,
        response_format=config.response_format,
    )


@dataclass
class _Item:
    """One image on its way through the rounds of asking and checking."""

    image: ImageFacts
    regions: list[RegionFacts]
    ids: dict[str, str]
    facts_json: str
    prompt_hash: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turns: tuple[QA, ...] = ()
    failed: list[tuple[int, QA, Failure]] = field(default_factory=list)  # of ``turns``
    attempt: int = 0  # the attempt ``turns`` came from
    feedback: str | None = None
    rejects: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


@dataclass
class Spend:
    """What a run sent and spent (cache hits cost nothing)."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    batches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready counts for the manifest."""
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "prompt": self.prompt_tokens,
            "completion": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def _in_prompt_ids(text: str, ids: dict[str, str]) -> str:
    """``text`` with region ids written as the prompt's short ids (``r0``) the model knows."""
    for short, rid in sorted(ids.items(), key=lambda item: -len(item[1])):
        text = text.replace(rid, short)
    return text


class LLMGenerator:
    """Conversations from an OpenAI-compatible endpoint (see the module docstring).

    Args:
        config: LLM settings of the build.
        api_key: the endpoint's key (held in memory only).
        cache_dir: response cache folder inside the dataset directory.
        max_region_turns: region turns asked for after the MIA turn.
        known_batches: batch ids recorded by an interrupted run (reused, not resubmitted).
        on_batch: called with each new batch id as soon as it exists.
        vocabulary: the build's label names (a turn naming one its image lacks is untrue).
        share: the processes that share the provider's limits; this one takes 1/share of them.
    """

    name = "llm"

    def __init__(
        self,
        config: LLMConfig,
        api_key: str,
        cache_dir: Path,
        max_region_turns: int = 3,
        known_batches: Sequence[str] = (),
        on_batch: Callable[[str], None] | None = None,
        vocabulary: Sequence[str] = (),
        share: int = 1,
    ) -> None:
        self.config = config
        self.lexicon = lexicon_for(frozenset(vocabulary))
        self.settings = settings_from_config(config, share)
        self._api_key = api_key
        self.cache = AnswerCache(cache_dir, self.settings)
        self.max_region_turns = max_region_turns
        self.known_batches = list(known_batches)
        self.on_batch = on_batch
        self.env = make_environment()
        self.system_prompt = self.env.get_template("llm_system.j2").render(tasks=list(TASKS))
        self.text_rules = TextRules.for_instructions(self.system_prompt)
        self.spend = Spend()
        self.template_hashes = template_hashes(list(PROMPT_FILES))
        self.template_hash = combined_hash(self.template_hashes)

    def __repr__(self) -> str:  # never show the key
        return f"LLMGenerator(model={self.settings.model!r}, base_url={self.settings.base_url!r})"

    def _response_format(self) -> dict | None:
        return response_format_for(self.config.response_format)

    def _item(self, image: ImageFacts, regions: list[RegionFacts]) -> _Item:
        shown = sorted(regions, key=lambda r: (r.instance > 0, -r.area, r.label_id, r.instance))
        shown = sorted(shown[:MAX_PROMPT_REGIONS], key=lambda r: (r.label_id, r.instance))
        ids = {f"r{i}": r.region_id for i, r in enumerate(shown)}
        facts = ImagePromptFacts(
            modality=view_variables(image.modality, image.plane)["modality"],
            view=view_variables(image.modality, image.plane)["view"],
            regions=[
                PromptRegion(
                    id=f"r{i}",
                    label=r.label,
                    box=r.bbox_1000,
                    position=r.position,
                    size=r.size,
                    side=laterality_of(r.label),
                )  # type: ignore[arg-type]
                for i, r in enumerate(shown)
            ],
        )
        return _Item(image, regions, ids, facts.model_dump_json())

    def request_for(self, item: _Item, attempt: int) -> ChatRequest:
        """The chat request of an image's ``attempt``-th answer (0 = first ask)."""
        user = self.env.get_template("llm_user.j2").render(
            facts_json=item.facts_json, turns=1 + self.max_region_turns, feedback=item.feedback
        )
        return ChatRequest(
            custom_id=f"{item.image.image_id}-a{attempt}",
            messages=(
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user},
            ),
            response_format=self._response_format(),
        )

    def parse(self, content: str, item: _Item) -> tuple[QA, ...] | None:
        """Turns of an answer, region ids mapped back; None when it is not the asked JSON.

        A turn given twice is kept once, and turns past the number asked for are dropped (so
        an answer cannot outweigh another by repeating itself)."""
        try:
            conversation = LLMConversation.model_validate_json(content)
        except ValidationError:
            return None
        turns: list[QA] = []
        seen: set[QA] = set()
        for turn in conversation.conversation:
            qa = QA(
                turn.task,
                turn.question,
                turn.answer,
                tuple(item.ids.get(rid, rid) for rid in turn.region_ids),
            )
            if qa not in seen:
                seen.add(qa)
                turns.append(qa)
        return tuple(turns[: 1 + self.max_region_turns])

    def _check(self, item: _Item, turns: tuple[QA, ...]) -> list[tuple[int, QA, Failure]]:
        """The untrue turns of an answer: (turn number, turn, why)."""
        truth = ImageTruth(item.regions, item.image, self.lexicon)
        failed = []
        for number, qa in enumerate(turns, 1):
            failure = check_turn(qa, truth, self.text_rules)
            if failure:
                failed.append((number, qa, failure))
        return failed

    @staticmethod
    def _keep_best(state: _Item, turns: tuple[QA, ...], failed: list, attempt: int) -> None:
        """Keep the attempt with the most true turns (the later on a tie); the untrue turns of
        the one it replaces become rejects now (the kept one's are verified again on writing)."""
        true_turns = len(turns) - len(failed)
        if state.turns and len(state.turns) - len(state.failed) > true_turns:
            replaced, replaced_attempt = failed, attempt
        else:
            replaced, replaced_attempt = state.failed, state.attempt
            state.turns, state.failed, state.attempt = turns, failed, attempt
        for number, qa, failure in replaced:
            detail = f"attempt {replaced_attempt + 1}, {turn_detail(number, qa, failure)}"
            state.rejects.append((failure.reason, detail))

    def generate_all(self, items: list[tuple[ImageFacts, list[RegionFacts]]]) -> list[Generated]:
        """Conversations for all images of a shard (requests run concurrently)."""
        states = [self._item(image, regions) for image, regions in items]
        asyncio.run(self._rounds(states))
        return [
            Generated(
                turns=s.turns,
                prompt_hash=s.prompt_hash,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                rejects=tuple(s.rejects),
            )
            for s in states
        ]

    async def _ask(self, requests: list[ChatRequest]) -> list[ChatResult]:
        cached, todo = self.cache.split(requests)
        self.spend.cache_hits += len(cached)
        fresh: list[ChatResult] = []
        if todo:
            pending = [r for _, r in todo]
            if self.config.batch:
                from medgrit.adapters.llm.batch import BatchRunner

                runner = BatchRunner(
                    self.settings, self._api_key, poll_interval_s=self.config.batch_poll_s
                )
                fresh = await runner.run(
                    pending, known_batch_ids=self.known_batches, on_batch=self._record_batch
                )
            else:
                # Every shard of this process shares one client: one limiter, one window.
                fresh = await shared_client(self.settings, self._api_key).complete_all(pending)
        results: list[ChatResult | None] = [None] * len(requests)
        for i, result in cached.items():
            results[i] = result
        for (i, _), result in zip(todo, fresh, strict=True):
            results[i] = result
            if result.content is not None and not result.from_cache:
                self.spend.requests += 1
                self.spend.prompt_tokens += result.prompt_tokens
                self.spend.completion_tokens += result.completion_tokens
        self.spend.cost_usd = estimate_cost(
            self.settings,
            Usage(
                prompt_tokens=self.spend.prompt_tokens,
                completion_tokens=self.spend.completion_tokens,
            ),
        )
        return results  # type: ignore[return-value]

    def _record_batch(self, batch_id: str) -> None:
        self.spend.batches.append(batch_id)
        self.known_batches.append(batch_id)
        if self.on_batch is not None:
            self.on_batch(batch_id)

    async def _rounds(self, states: list[_Item]) -> None:
        for attempt in range(1 + self.config.retry_invalid):
            active = [s for s in states if not s.done]
            if not active:
                return
            requests = [self.request_for(s, attempt) for s in active]
            results = await self._ask(requests)
            last = attempt == self.config.retry_invalid
            unavailable: list[str] = []
            refused = False
            for state, sent, result in zip(active, requests, results, strict=True):
                if attempt == 0:
                    state.prompt_hash = result.request_hash
                if result.content is None:
                    error = result.error or "failed"
                    if error in INFRASTRUCTURE_ERRORS:
                        unavailable.append(error)
                    elif error == "unsupported_request":
                        refused = True  # no reject row: the build, not the image, is wrong
                    else:
                        state.rejects.append((f"llm_{error}", f"attempt {attempt + 1}: no answer"))
                    state.done = True
                    continue
                state.prompt_tokens += result.prompt_tokens
                state.completion_tokens += result.completion_tokens
                turns = self.parse(result.content, state)
                if turns is None:
                    problems = ["the answer is not a JSON object of the requested shape"]
                else:
                    if not result.from_cache:
                        self.cache.store(sent, result)
                    failed = self._check(state, turns)
                    self._keep_best(state, turns, failed, attempt)
                    problems = [f"turn {n} ({qa.task}): {failure}" for n, qa, failure in failed]
                if not problems:
                    state.done = True
                elif last:
                    if turns is None:
                        state.rejects.append(("invalid_json", result.content[:200]))
                    state.done = True
                else:
                    state.feedback = _in_prompt_ids("; ".join(problems), state.ids)
            if "stopped" in unavailable:
                check_stop()  # answers that arrived are cached above; raises BuildInterrupted
            if refused:  # every request has that shape: the others would be refused too
                raise LLMEndpointError(
                    "response_format_refused",
                    refused_message(
                        self.settings.base_url or "(default)", self.config.response_format
                    ),
                )
            if unavailable:
                counts = {e: unavailable.count(e) for e in sorted(set(unavailable))}
                raise LLMUnavailable(
                    f"{len(unavailable)} request(s) got no answer after retries ({counts}); "
                    "answers received so far are cached: resume the build to ask again"
                )
