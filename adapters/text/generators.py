"""The generator of a build: templates, or an LLM endpoint; and what the manifest records of it."""

from __future__ import annotations

from pathlib import Path

from medgrit.adapters.llm.endpoint import resolve_api_key
from medgrit.adapters.store.manifest import record_batch
from medgrit.adapters.text.templates import TemplateGenerator, combined_hash, template_hashes
from medgrit.core.cases import NO_VOCABULARY, Vocabulary
from medgrit.core.generation import Generator
from medgrit.schemas.config import BuildConfig


def make_generator(
    config: BuildConfig,
    shard: str,
    known_batches: list[str],
    vocabulary: Vocabulary = NO_VOCABULARY,
    llm_share: int = 1,
) -> Generator:
    """The build's generator for one shard (templates, or an LLM endpoint whose answers are
    checked against the build's label ``vocabulary`` and its synonyms before it is asked
    again). ``llm_share``:
    the processes that share the provider's limits, each allowed its part of them."""
    if config.generator == "template" or config.llm is None:
        return TemplateGenerator(seed=config.seed, max_region_turns=config.max_region_turns)
    from medgrit.adapters.llm.generator import LLMGenerator

    out = Path(config.out)
    return LLMGenerator(
        config.llm,
        resolve_api_key(config.llm),
        out / "llm" / "cache",
        max_region_turns=config.max_region_turns,
        known_batches=known_batches,
        on_batch=lambda batch_id: record_batch(out, shard, batch_id),
        vocabulary=vocabulary,
        share=llm_share,
        progress_unit=shard,
    )


def generator_info(config: BuildConfig) -> dict:
    """Generator name, template hashes and (for an LLM) model and response format, for the
    manifest (give it the config of :func:`resolve_llm_config`)."""
    if config.generator == "llm" and config.llm is not None:
        from medgrit.adapters.llm.generator import PROMPT_FILES

        hashes = template_hashes(list(PROMPT_FILES))
        return {
            "name": "llm",
            "model": config.llm.model,
            "base_url": config.llm.base_url,
            "batch": config.llm.batch,
            "response_format": config.llm.response_format,  # resolved: see resolve_llm_config
            "template_hash": combined_hash(hashes),
            "templates": hashes,
        }
    generator = TemplateGenerator(seed=config.seed, max_region_turns=config.max_region_turns)
    return {
        "name": generator.name,
        "template_hash": generator.template_hash,
        "templates": generator.template_hashes,
    }
