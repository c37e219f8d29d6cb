"""The LLM endpoint of a build, before any shard runs: its API key and the response format it
accepts.

:func:`resolve_llm_config` probes the endpoint once per build (``medgrit.adapters.llm.formats``)
so that an unreachable endpoint, a refused key or a refused mode fails the build before the
sources are scanned; a resume keeps the mode its first run recorded and sends nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from medgrit.schemas.config import BuildConfig, LLMConfig


def resolve_api_key(llm: LLMConfig) -> str:
    """The LLM API key: from a Prefect Secret block when named, else ``OPENAI_API_KEY``.

    Raises:
        LookupError: when neither holds a key.
    """
    if llm.api_key_block:
        from prefect.blocks.system import Secret

        return str(Secret.load(llm.api_key_block).get())
    key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise LookupError("no API key: set OPENAI_API_KEY or pass --llm-api-key-block NAME")
    return key


def resolve_llm_config(config: BuildConfig, out: Path) -> BuildConfig:
    """The config the shards of an LLM build run with: ``llm.response_format`` ``auto``
    replaced by the mode the endpoint accepts (``medgrit.adapters.llm.formats``); an explicit
    mode is kept, once checked not to be refused. Other builds: ``config`` itself.

    When ``out/dataset.json`` records an LLM generator of the same base URL and model (the build
    ran before: a resume), its ``response_format`` is kept and nothing is sent, so a resume asks
    exactly the requests of the first run and finds their answers in the cache.

    Call it before ``plan_manifest``, once per build: the manifest keeps the user's ``config``
    (``auto``, so a resume compares like with like), ``generator_info(resolved)`` records the
    mode, and every ``ShardJob`` gets the resolved config.

    Raises:
        LLMEndpointError: the endpoint is unreachable, refused the key, refuses the explicit
            mode, or answered no mode with JSON (``medgrit.adapters.llm.formats``).
        LookupError: no API key.
    """
    llm = config.llm
    if config.generator != "llm" or llm is None:
        return config
    from medgrit.adapters.llm.formats import AUTO, MODE_ORDER, resolve_response_format
    from medgrit.adapters.llm.generator import settings_from_config

    requested = llm.response_format
    before = _recorded_generator(out, llm)
    if before is not None and requested != AUTO:
        return config  # built with this mode before: not checked again
    if before is not None and before.get("response_format") in MODE_ORDER:
        mode = before["response_format"]
    else:
        # The probes set response_format per request; the settings only take a concrete mode.
        concrete = MODE_ORDER[0] if requested == AUTO else requested
        settings = settings_from_config(llm.model_copy(update={"response_format": concrete}))
        mode = resolve_response_format(settings, resolve_api_key(llm), requested)
    if mode == requested:
        return config
    return config.model_copy(update={"llm": llm.model_copy(update={"response_format": mode})})


def _recorded_generator(out: Path, llm: LLMConfig) -> dict | None:
    """The ``generator`` entry of ``out/dataset.json`` when it is an LLM of the same base URL
    and model (None: no manifest yet, or another endpoint)."""
    from medgrit.adapters.store.manifest import MANIFEST, load_manifest

    if not (out / MANIFEST).is_file():
        return None
    entry = load_manifest(out).generator
    if entry is None or entry.name != "llm":
        return None
    if (entry.base_url, entry.model) != (llm.base_url, llm.model):
        return None
    return entry.to_json()
