"""The LLM generator: conversations written by any OpenAI-compatible endpoint, then verified.

For each image the model gets only text facts (modality, view, the MR sequence where the text may
name one, regions with their Qwen-VL boxes, position, size and side; see ``medgrit.schemas.llm``)
rendered with ``prompts/llm_system.j2`` and ``prompts/llm_user.j2``, and answers with one JSON
conversation; the system prompt of an image with a sequence adds the rule for naming it. All images
of a shard are asked at once: concurrently through the process's shared
:class:`OpenAICompatibleClient` (``medgrit.adapters.llm.dispatch``: one limiter and in-flight
window for all shards), or through the Batch API. Each answer is parsed with pydantic and every
turn is verified (``medgrit.core.verify``, with length and copy rules, names read with the build's
label vocabulary). An answer with untrue turns keeps its true ones, and only the untrue turns are
asked for again (``retry_invalid`` times): the retry names each one (its number, task, region ids,
text, and the reason with the words that broke the rule), shows the facts of just their regions,
and asks for the same turns (same task and region ids) in the same JSON shape. A true replacement
takes its turn's place; a replacement that is untrue, or about another task or other regions, is a
reject row ("attempt N") and its turn is asked for again while attempts remain. A replaced turn is
a reject row too (it was paid for); turns still untrue at the end are rejected on writing. An
answer that is not the JSON asked for is asked for again whole, with that fed back.

Cache: every answer that parses is stored, content-addressed by the request, inside the dataset
directory; a rerun or a resume answers those requests from the cache and sends nothing. Table
rows record the tokens of the answers they use, so a rerun from the cache writes identical
tables; what a run actually spent is in :meth:`LLMGenerator.spend`; each answer sent for also
advances the progress counters as it arrives (``medgrit.adapters.llm.chat.count_answer``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

from pydantic import ValidationError

from medgrit.adapters.llm.cache import AnswerCache
from medgrit.adapters.llm.chat import (
    ChatRequest,
    ChatResult,
    LLMSettings,
    Spend,
    Usage,
    count_answer,
    estimate_cost,
)
from medgrit.adapters.llm.dispatch import shared_client
from medgrit.adapters.llm.formats import LLMEndpointError, refused_message, response_format_for
from medgrit.adapters.runtime import progress
from medgrit.adapters.runtime.interrupt import check_stop
from medgrit.adapters.text.templates import (
    combined_hash,
    shared_environment,
    template_hashes,
    view_variables,
)
from medgrit.core.cases import NO_VOCABULARY, Vocabulary
from medgrit.core.conversations import turn_detail
from medgrit.core.failures import InfrastructureError
from medgrit.core.generation import QA, Generated, ImageFacts, RegionFacts
from medgrit.core.sequences import sequence_phrase
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


@dataclass(frozen=True)
class _Untrue:
    """An untrue turn: its number (its place in the image's conversation), the turn, why, and
    the attempt that wrote it (0 = the first ask)."""

    number: int
    qa: QA
    failure: Failure
    attempt: int

    def reject(self) -> tuple[str, str]:
        """The (reason, detail) of its reject row."""
        detail = turn_detail(self.number, self.qa, self.failure)
        return self.failure.reason, f"attempt {self.attempt + 1}, {detail}"


@dataclass
class _Item:
    """One image on its way through the rounds of asking and checking."""

    image: ImageFacts
    regions: list[RegionFacts]
    ids: dict[str, str]
    facts_json: str
    sequence: bool = False  # the facts give a sequence: the system prompt says how to name it
    prompt_hash: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The first answer read, each untrue turn replaced by its true replacement once one came.
    turns: tuple[QA, ...] = ()
    failed: list[_Untrue] = field(default_factory=list)  # the turns of ``turns`` still untrue
    # The latest untrue replacement of a turn (by number): what a retry shows of that turn.
    retried: dict[int, _Untrue] = field(default_factory=dict)
    feedback: str | None = None  # why the last answer could not be read at all
    rejects: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


def _in_prompt_ids(text: str, ids: dict[str, str]) -> str:
    """``text`` with region ids written as the prompt's short ids (``r0``) the model knows."""
    for short, rid in sorted(ids.items(), key=lambda item: -len(item[1])):
        text = text.replace(rid, short)
    return text


def _pair(asked: list[_Untrue], answer: tuple[QA, ...]) -> list[tuple[_Untrue, QA | None]]:
    """Each turn asked for again with its replacement: the answer's first turn of the same task
    and regions, else the next turn left over (which then fails: another task or regions), else
    None (left out)."""
    left = list(answer)
    found: dict[int, QA] = {}
    for untrue in asked:
        key = (untrue.qa.task, set(untrue.qa.region_ids))
        match = next((qa for qa in left if (qa.task, set(qa.region_ids)) == key), None)
        if match is not None:
            left.remove(match)
            found[untrue.number] = match
    return [(u, found.get(u.number) or (left.pop(0) if left else None)) for u in asked]


class LLMGenerator:
    """Conversations from an OpenAI-compatible endpoint (see the module docstring).

    Args:
        config: LLM settings of the build.
        api_key: the endpoint's key (held in memory only).
        cache_dir: response cache folder inside the dataset directory.
        max_region_turns: region turns asked for after the MIA turn.
        known_batches: batch ids recorded by an interrupted run (reused, not resubmitted).
        on_batch: called with each new batch id as soon as it exists.
        vocabulary: the build's label names and their synonyms (a turn naming one its image
            lacks is untrue).
        share: the processes that share the provider's limits; this one takes 1/share of them.
        progress_unit: the piece of work (a shard id) its requests and spend count towards on
            the progress display.
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
        vocabulary: Vocabulary = NO_VOCABULARY,
        share: int = 1,
        progress_unit: str | None = None,
    ) -> None:
        self.config = config
        self.progress_unit = progress_unit
        self.lexicon = vocabulary.lexicon()
        self.settings = settings_from_config(config, share)
        self._api_key = api_key
        self.cache = AnswerCache(cache_dir, self.settings)
        self.max_region_turns = max_region_turns
        self.known_batches = list(known_batches)
        self.on_batch = on_batch
        self.env = shared_environment()
        system = self.env.get_template("llm_system.j2")
        # Loaded once: ``get_template`` asks the file system whether the file changed on every
        # call, which cost more than rendering the prompt (the prompts' hashes are taken once).
        self.user_template = self.env.get_template("llm_user.j2")
        self.system_prompt = system.render(tasks=list(TASKS))
        self.text_rules = TextRules.for_instructions(self.system_prompt)
        # Images whose facts give a sequence: the same prompt with the rule for naming it.
        self.sequence_system_prompt = system.render(tasks=list(TASKS), sequence=True)
        self.sequence_text_rules = TextRules.for_instructions(self.sequence_system_prompt)
        self.spend = Spend()
        self.template_hashes = template_hashes(list(PROMPT_FILES))
        self.template_hash = combined_hash(self.template_hashes)

    def __repr__(self) -> str:  # never show the key
        return f"LLMGenerator(model={self.settings.model!r}, base_url={self.settings.base_url!r})"

    @cached_property
    def _response_format(self) -> dict | None:
        """The requests' ``response_format``, built once (its JSON schema is generated)."""
        return response_format_for(self.config.response_format)

    def _item(self, image: ImageFacts, regions: list[RegionFacts]) -> _Item:
        """An image's facts as the model sees them: at most ``MAX_PROMPT_REGIONS`` regions
        (merged ones and the largest first), each with its side of the image and its verified
        relations to the other regions shown."""
        from medgrit.core.relations import image_side, prompt_relations

        shown = sorted(regions, key=lambda r: (r.instance > 0, -r.area, r.label_id, r.instance))
        shown = sorted(shown[:MAX_PROMPT_REGIONS], key=lambda r: (r.label_id, r.instance))
        ids = {f"r{i}": r.region_id for i, r in enumerate(shown)}
        short_ids = {rid: short for short, rid in ids.items()}
        named = view_variables(image.modality, image.plane)
        sequence = sequence_phrase(image.sequence) if image.sequence else ""
        facts = ImagePromptFacts(
            modality=named["modality"],
            view=named["view"],
            sequence=sequence or None,
            regions=[
                PromptRegion(
                    id=f"r{i}",
                    label=r.label,
                    box=r.bbox_1000,
                    position=r.position,
                    size=r.size,
                    side=laterality_of(r.label),
                    image_side=image_side(r),
                    relations=prompt_relations(r, shown, short_ids),
                )  # type: ignore[arg-type]
                for i, r in enumerate(shown)
            ],
        )
        return _Item(image, regions, ids, facts.model_dump_json(), bool(sequence))

    def request_for(self, item: _Item, attempt: int) -> ChatRequest:
        """The chat request of an image's ``attempt``-th answer (0 = first ask).

        An image whose answer has untrue turns is asked for replacements of just those
        (:meth:`_retry_variables`); one with no answer read yet is asked for the whole
        conversation. Either way it is one system and one user message, which servers whose
        chat template wants the roles to alternate take too."""
        variables: dict = {
            "facts_json": item.facts_json,
            "turns": 1 + self.max_region_turns,
            "feedback": item.feedback,
        }
        asked = self._asked(item)
        if asked:
            variables.update(self._retry_variables(item, asked))
        user = self.user_template.render(**variables)
        system = self.sequence_system_prompt if item.sequence else self.system_prompt
        return ChatRequest(
            custom_id=f"{item.image.image_id}-a{attempt}",
            messages=(
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ),
            response_format=self._response_format,
        )

    @staticmethod
    def _asked(item: _Item) -> list[_Untrue]:
        """The untrue turns a retry asks for again: those whose region ids are all in the
        prompt (no replacement of a turn about a region the model was never shown is true)."""
        shown = set(item.ids.values())
        return [u for u in item.failed if set(u.qa.region_ids) <= shown]

    def _retry_variables(self, item: _Item, asked: list[_Untrue]) -> dict:
        """Template variables of a retry: each asked turn as the model wrote it last, and facts
        of only the regions the turns are about and the others of their labels (a VG answer
        lists every box of its label), which keeps the request small."""
        short = {rid: sid for sid, rid in item.ids.items()}
        facts = ImagePromptFacts.model_validate_json(item.facts_json)
        wanted = {short[rid] for u in asked for rid in u.qa.region_ids}
        labels = {r.label for r in facts.regions if r.id in wanted}
        regions = [r for r in facts.regions if r.id in wanted or r.label in labels]
        failed = []
        for untrue in asked:
            last = item.retried.get(untrue.number, untrue)
            failed.append(
                {
                    "number": untrue.number,
                    "task": untrue.qa.task,
                    "region_ids": [short[rid] for rid in untrue.qa.region_ids],
                    "question": last.qa.question,
                    "answer": last.qa.answer,
                    "reason": _in_prompt_ids(str(last.failure), item.ids),
                }
            )
        subset = facts.model_copy(update={"regions": regions})
        return {"facts_json": subset.model_dump_json(), "failed": failed}

    def parse(self, content: str, item: _Item, limit: int | None = None) -> tuple[QA, ...] | None:
        """Turns of an answer, region ids mapped back; None when it is not the asked JSON.

        A turn given twice is kept once, and turns past the number asked for (``limit``, else
        a whole conversation's) are dropped, so an answer never adds turns."""
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
        return tuple(turns[: limit or 1 + self.max_region_turns])

    def _read_answer(self, state: _Item, turns: tuple[QA, ...], attempt: int) -> None:
        """Take a readable answer: the whole conversation, or replacements of the turns the
        request asked for again."""
        asked = self._asked(state)  # what the request was built from: nothing changed since
        truth = ImageTruth(state.regions, state.image, self.lexicon)
        rules = self.sequence_text_rules if state.sequence else self.text_rules
        if not asked:
            state.turns = turns
            state.failed = [
                _Untrue(number, qa, failure, attempt)
                for number, qa in enumerate(turns, 1)
                if (failure := check_turn(qa, truth, rules)) is not None
            ]
            return
        slots = list(state.turns)
        still = [u for u in state.failed if u not in asked]
        for untrue, new in _pair(asked, turns):
            if new is None:  # left out of the answer: asked for again
                still.append(untrue)
                continue
            failure = None
            if (new.task, set(new.region_ids)) != (untrue.qa.task, set(untrue.qa.region_ids)):
                ids = ", ".join(untrue.qa.region_ids)
                failure = Failure("region_ids_mismatch", f"asked for {untrue.qa.task} of {ids}")
            failure = failure or check_turn(new, truth, rules)
            if failure is None:
                state.rejects.append(untrue.reject())
                slots[untrue.number - 1] = new
                state.retried.pop(untrue.number, None)
            else:
                state.rejects.append(_Untrue(untrue.number, new, failure, attempt).reject())
                state.retried[untrue.number] = _Untrue(untrue.number, new, failure, attempt)
                still.append(untrue)
        state.turns = tuple(slots)
        state.failed = sorted(still, key=lambda u: u.number)

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
                for result in fresh:
                    count_answer(self.settings, result, self.progress_unit)
            else:
                # Every shard of this process shares one client: one limiter, one window.
                client = shared_client(self.settings, self._api_key)
                count = partial(count_answer, self.settings, unit=self.progress_unit)
                fresh = await client.complete_all(pending, count if progress.active() else None)
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
            valid: list[tuple[ChatRequest, ChatResult]] = []  # answers to cache
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
                turns = self.parse(result.content, state, len(self._asked(state)) or None)
                if turns is None:
                    state.feedback = "the answer is not a JSON object of the requested shape"
                    if last:
                        state.rejects.append(("invalid_json", result.content[:200]))
                else:
                    if not result.from_cache:
                        valid.append((sent, result))
                    state.feedback = None
                    self._read_answer(state, turns, attempt)
                state.done = last or (turns is not None and not self._asked(state))
            self.cache.store_all(valid)
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
