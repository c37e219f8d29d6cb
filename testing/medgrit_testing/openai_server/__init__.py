"""A fake OpenAI-compatible provider for tests and benchmarks of the LLM generator.

It speaks the parts of the OpenAI REST API that ``medgrit build --generator llm`` uses, over real
HTTP (Starlette on uvicorn), so the real ``openai`` SDK talks to it unchanged:

- ``POST /v1/chat/completions`` (non-streaming, :mod:`.chat`): answers built from the prompt's
  image facts (:mod:`.answers`), with content faults, lies and ``max_tokens`` cuts
  (:mod:`.completions`, :mod:`.lies`), ``response_format`` refusals (:mod:`.response_formats`),
  OpenAI-style RPM/TPM limits (:mod:`.limits`, over :mod:`medgrit.core.ratelimit`), latency and
  transport faults. ``usage.prompt_tokens`` is ceil(characters of all message contents / 4) and
  ``usage.completion_tokens`` ceil(characters of the answer / 4).
- ``/v1/files`` and ``/v1/batches`` (:mod:`.batches`): uploads, batches answered in the
  background, with failing lines, expiry and cancellation.
- ``GET /stats``, ``POST /stats/reset``, ``GET /lies``, ``GET /requests``, ``POST /admin/config``,
  ``GET /health`` (:mod:`.app`), for tests; these are not under ``/v1`` and need no key.

:class:`ServerConfig` (:mod:`.config`) sets limits, latency, faults, lies, the answers' style
(``plain`` templates or ``paraphrase``, fluent prose of :mod:`.paraphrase`), batches, the key and
the formats answered. Start a server in a separate process with :func:`serve` (a context manager,
:mod:`.process`) or from the shell with
``python -m medgrit_testing.openai_server --port 8000 --rpm 1200 --lie-rate 0.2`` (:mod:`.cli`).

It is installed with ``pip install -e ./testing`` (the ``medgrit-testing`` distribution), not
with medgrit; nothing of medgrit's build imports it.
"""

from .answers import estimate_prompt_tokens
from .config import (
    ANSWER_STYLES,
    CONTENT_FAULTS,
    LIE_CLASSES,
    MARKUP_LIES,
    RESPONSE_FORMAT_KINDS,
    TRANSPORT_FAULTS,
    AnswerStyle,
    RefusalStyle,
    ServerConfig,
)
from .lies import LIE_DECOYS, PLANE_WORDS, POSITION_WORDS, SIZE_WORDS
from .limits import ProviderLimits, format_duration
from .process import READY_PREFIX, RunningServer, serve

__all__ = [
    "ANSWER_STYLES",
    "CONTENT_FAULTS",
    "LIE_CLASSES",
    "LIE_DECOYS",
    "MARKUP_LIES",
    "PLANE_WORDS",
    "POSITION_WORDS",
    "READY_PREFIX",
    "RESPONSE_FORMAT_KINDS",
    "SIZE_WORDS",
    "TRANSPORT_FAULTS",
    "AnswerStyle",
    "ProviderLimits",
    "RefusalStyle",
    "RunningServer",
    "ServerConfig",
    "estimate_prompt_tokens",
    "format_duration",
    "serve",
]
