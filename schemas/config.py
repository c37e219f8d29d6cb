"""The one typed configuration of a build.

A pydantic model: Prefect validates it as a flow parameter and draws its form in the UI.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from medgrit.core.fsnames import from_portable, to_portable
from medgrit.core.vocab import Modality
from medgrit.schemas.sources import KIND_NAMES

_DASK_ADDRESS = re.compile(r"(tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")

# Structured-output modes (medgrit.adapters.llm.formats); auto: the first the endpoint accepts.
ResponseFormat = Literal["auto", "json_schema", "json_object_schema", "json_object", "none"]


class LLMConfig(BaseModel):
    """Settings of the LLM generator. The API key is never part of the config: it comes from
    ``OPENAI_API_KEY`` or a Prefect Secret block named here, and is never logged or written."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(description="LLM model name.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint URL.")
    api_key_block: str | None = Field(
        None, description="Prefect Secret block with the API key (else $OPENAI_API_KEY)."
    )
    temperature: float = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int = Field(1024, ge=64, description="Max completion tokens.")
    requests_per_minute: int = Field(500, ge=1, description="Requests per minute allowed.")
    tokens_per_minute: int = Field(200_000, ge=100, description="Tokens per minute allowed.")
    max_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests in flight at most (default: the limit times the observed latency).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Seconds before a request times out.")
    price_input_per_million: float = Field(0.0, ge=0.0, description="USD per 1M prompt tokens.")
    price_output_per_million: float = Field(
        0.0, ge=0.0, description="USD per 1M completion tokens."
    )
    response_format: ResponseFormat = Field(
        "auto",
        description="How the endpoint is asked for JSON: auto (ask it: the first of json_schema, "
        "json_object_schema, json_object, none it accepts), json_schema, json_object_schema "
        "(json_object with a schema field: llama-cpp-python's server), json_object or none "
        "(the prompt only).",
    )
    retry_invalid: int = Field(
        1, ge=0, le=3, description="Ask again with the error fed back, this many times."
    )
    batch: bool = Field(False, description="Use the OpenAI Batch API.")
    batch_poll_s: float = Field(
        30.0, gt=0, description="Seconds between polls of a batch's status."
    )


class BuildConfig(BaseModel):
    """Everything that decides the contents of a dataset build.

    The same sources, config and seed give identical table contents.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    sources: list[str] = Field(
        default_factory=lambda: ["demo"],
        description="Sources as KIND:PATH (nnunet, msd) or 'demo'.",
    )
    out: str = Field(description="Dataset directory to write.")
    seed: int = Field(0, description="Seed of phrasing and task choices.")
    plane: Literal["axial", "coronal", "sagittal"] = "axial"
    slice_stride: int = Field(1, ge=1, description="Take every N-th slice with foreground.")
    max_slices_per_case: int | None = Field(
        None, ge=1, description="At most this many slices per case, spread evenly."
    )
    max_images: int | None = Field(
        None, ge=1, description="At most this many images in all (for trials)."
    )
    min_area: int = Field(16, ge=1, description="Drop region instances with fewer pixels.")
    ct_window: tuple[float, float] = Field(
        (40.0, 400.0), description="CT window (level, width) in HU; soft tissue by default."
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="Intensity percentiles mapped to 0 and 255 for MR and PET."
    )
    pet_suv_window: tuple[float, float] = Field(
        (0.0, 6.0), description="SUV range mapped to 0 and 255 for PET with SUV tags."
    )
    test_fraction: float = Field(0.11, ge=0.0, lt=1.0, description="Share of cases held out.")
    split_seed: int = Field(0, description="Seed of the case-level train/test split.")
    images_per_shard: int = Field(
        200,
        ge=1,
        description="Target images per shard (one Prefect task each); cases are packed "
        "together up to it and never split.",
    )
    cases_per_shard: int | None = Field(
        None, ge=1, description="At most this many cases per shard (default: no cap)."
    )
    max_region_turns: int = Field(3, ge=0, description="Region-level turns per conversation.")
    modality: Modality | None = Field(
        None, description="Modality of every source, when its metadata does not tell."
    )
    channels: list[str] | None = Field(
        None,
        description="Of sources that give each channel of a multi-channel image (MR sequences: "
        "FLAIR, T1Gd, ...) as its own image, keep only these channels: names as the source "
        "writes them (any case) or channel indices (0, 3). Sources with one channel are kept "
        "whole. Default: every channel.",
    )
    label_names: dict[str, str] = Field(
        default_factory=dict,
        description="The words the text names labels by, by the name their source writes "
        '({"GTVp": "primary tumor volume"}), in place of medgrit\'s reading of that name.',
    )
    key_file: str | None = Field(
        None,
        description="Pseudonymisation key file, kept outside the dataset directory "
        "(default: $MEDGRIT_KEY_FILE or ~/.config/medgrit/pseudonym.key).",
    )
    generator: Literal["template", "llm"] = Field(
        "template", description="template (no network) or llm (an OpenAI-compatible endpoint)."
    )
    llm: LLMConfig | None = Field(None, description="Settings of --generator llm.")
    workers: int = Field(2, ge=1, description="Shards processed at once.")
    runner: Literal["processes", "threads", "dask"] = Field(
        "processes",
        description="How shards run: `workers` worker processes of this machine (an LLM "
        "build's shards, which wait on the network, run on threads of this process), threads "
        "in this process, or Dask worker processes (a local cluster of `workers` processes, or "
        "the cluster at `dask_address`).",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster, tcp://HOST:PORT or tls://HOST:PORT "
        "(runner dask; default: a local cluster).",
    )
    verify_sources: bool = Field(
        False,
        description="Fingerprint each case by a sha256 of its files' bytes (a full read of "
        "the sources), not only their sizes and modification times, and compare those when "
        "building again into the dataset.",
    )
    rebuild_changed: bool = Field(
        False,
        description="When building again into the dataset, rebuild the cases that changed "
        "since they were built (or whose source's label map changed, or that share a shard "
        "with a case gone from its source) as new shards, retiring the shards they were in; "
        "without it such a build is refused.",
    )

    @field_validator("sources", "out", "key_file", mode="before")
    @classmethod
    def _read_paths(cls, value: object) -> object:
        # Paths may hold any bytes a file system allows; JSON carries them in portable form.
        if isinstance(value, str):
            return from_portable(value)
        if isinstance(value, list):
            return [from_portable(v) if isinstance(v, str) else v for v in value]
        return value

    @field_serializer("sources", when_used="json")
    def _write_sources(self, value: list[str]) -> list[str]:
        return [to_portable(v) for v in value]

    @field_serializer("out", "key_file", when_used="json")
    def _write_path(self, value: str | None) -> str | None:
        return None if value is None else to_portable(value)

    @model_serializer(mode="wrap")
    def _without_defaults_of_new_settings(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Every channel, and medgrit's own words for labels, is what a build without these
        # settings made: its recorded config (and the digest its shards' records are keyed by)
        # stays the same.
        data = handler(self)
        if self.channels is None:
            data.pop("channels", None)
        if not self.label_names:
            data.pop("label_names", None)
        return data

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [name.strip() for name in value]
        if not names or not all(names):
            raise ValueError(
                "give channel names or indices separated by commas, e.g. FLAIR,T1Gd or 0,3"
            )
        # A set of channels, recorded one way whatever order it was typed in.
        return sorted(set(names), key=lambda name: (name.casefold(), name))

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(
                "give at least one source, e.g. 'demo' or 'nnunet:/data/Dataset001_Liver'"
            )
        for spec in value:
            kind = spec.split(":", 1)[0]
            if kind not in KIND_NAMES:
                raise ValueError(
                    f"unknown source kind {kind!r} in {spec!r}; "
                    f"use one of {', '.join(KIND_NAMES)}"
                    " as KIND:PATH"
                )
            if kind != "demo" and (":" not in spec or not spec.split(":", 1)[1]):
                raise ValueError(f"source {spec!r} needs a path: {kind}:PATH")
        return value

    @field_validator("dask_address")
    @classmethod
    def _check_dask_address(cls, value: str | None) -> str | None:
        # What a Dask client in another process can reach: tcp or tls, with an explicit port.
        found = None if value is None else _DASK_ADDRESS.fullmatch(value)
        if value is not None and (found is None or not 0 < int(found["port"]) < 65536):
            raise ValueError(
                f"{value!r} is not a Dask scheduler address; give tcp://HOST:PORT "
                "(or tls://HOST:PORT), e.g. tcp://10.0.0.5:8786"
            )
        return value

    @model_validator(mode="after")
    def _check_runner(self) -> BuildConfig:
        if self.dask_address is not None and self.runner != "dask":
            raise ValueError("--dask-address needs --runner dask")
        return self

    @model_validator(mode="after")
    def _check_generator(self) -> BuildConfig:
        if self.generator == "llm" and self.llm is None:
            raise ValueError("--generator llm needs --llm-model NAME")
        return self

    @field_validator("label_names")
    @classmethod
    def _label_words(cls, value: dict[str, str]) -> dict[str, str]:
        from medgrit.core.label_names import checked_label_words

        return checked_label_words(value)

    @field_validator("percentiles")
    @classmethod
    def _check_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100, e.g. 0.5,99.5")
        return value

    @field_validator("ct_window")
    @classmethod
    def _check_window(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] <= 0:
            raise ValueError("CT window width must be positive, e.g. 40,400 (level,width)")
        return value
