"""The service config of ``medgrit serve``: scheduled deployments of medgrit's flows.

A user edits one file (TOML or YAML) that lists deployments. Each names a flow, a cron schedule
and the flow's own config, exactly the model the flow takes as its parameter (for ``build``,
:class:`BuildConfig`), so what the file says is what each scheduled run gets. A flow is chosen by
``flow``; only ``build`` exists now, and a later flow (``finetune``) becomes one more member of a
union discriminated on that field.

Relative paths in a deployment's config are relative to the file's folder:
:meth:`ServiceConfig.resolved` makes them absolute (the schema itself does no I/O).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medgrit.schemas.config import BuildConfig

FLOW_NAMES = ("build",)
# What Prefect refuses in a deployment name (prefect's name validators).
_BANNED_IN_NAMES = "/%&<>"
# The tag of every deployment medgrit serves: automations (notifications) select by it.
SERVICE_TAG = "medgrit"


def _cron_problem(cron: str, timezone: str | None) -> str | None:
    """Why Prefect's own cron schedule model refuses ``cron`` in ``timezone`` (None: it does
    not). Prefect validates with its vendored croniter and refuses random and hashed fields."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as exc:
        return exc.errors()[0]["msg"].removeprefix("Value error, ")
    return None


class ServiceDeployment(BaseModel):
    """One scheduled deployment: a flow, when it runs, and the config each run gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Deployment name, unique in the file.")
    flow: Literal["build"] = Field("build", description="The flow to run: build.")
    cron: str = Field(description="Cron schedule, e.g. '0 2 * * *' (02:00 every night).")
    timezone: str | None = Field(
        None, description="IANA time zone of the schedule, e.g. Europe/Berlin (default UTC)."
    )
    tags: list[str] = Field(default_factory=list, description="Prefect tags (medgrit is added).")
    description: str | None = Field(None, description="Shown in the Prefect UI.")
    paused: bool = Field(False, description="Register the schedule paused.")
    config: BuildConfig = Field(description="The flow's config: the fields of `medgrit build`.")

    @field_validator("flow", mode="before")
    @classmethod
    def _check_flow(cls, value: object) -> object:
        if value not in FLOW_NAMES:
            raise ValueError(f"unknown flow {value!r}; use one of: {', '.join(FLOW_NAMES)}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give the deployment a name")
        banned = sorted({c for c in value if c in _BANNED_IN_NAMES})
        if banned:
            raise ValueError(f"a deployment name may not contain {' '.join(banned)}")
        return value

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, value: str) -> str:
        problem = _cron_problem(value, None)
        if problem:
            raise ValueError(f"{problem}; give five fields, e.g. '0 2 * * *' (02:00 every night)")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        problem = None if value is None else _cron_problem("0 0 * * *", value)
        if problem:
            raise ValueError(problem)
        return value

    @property
    def all_tags(self) -> list[str]:
        """The deployment's tags with medgrit's first, each once."""
        return list(dict.fromkeys([SERVICE_TAG, *self.tags]))

    def resolved(self, base: Path) -> ServiceDeployment:
        """This deployment with the config's relative paths made absolute against ``base``."""
        config = self.config

        def absolute(path: str) -> str:
            return str((base / Path(path).expanduser()).absolute())

        sources = []
        for spec in config.sources:
            kind, sep, path = spec.partition(":")
            sources.append(f"{kind}:{absolute(path)}" if sep and path else spec)
        update: dict = {"sources": sources, "out": absolute(config.out)}
        if config.key_file is not None:
            update["key_file"] = absolute(config.key_file)
        return self.model_copy(update={"config": config.model_copy(update=update)})


class ServiceConfig(BaseModel):
    """The whole file: the deployments, and the work pool ``prefect.yaml`` names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    work_pool: str = Field(
        "medgrit",
        description="Work pool of `prefect deploy` (prefect.yaml); `medgrit serve` needs none.",
    )
    deployments: list[ServiceDeployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_unique_names(self) -> ServiceConfig:
        first: dict[str, int] = {}
        for i, deployment in enumerate(self.deployments):
            j = first.setdefault(deployment.name, i)
            if j != i:
                raise ValueError(
                    f"deployments[{i}].name: {deployment.name!r} is already the name of "
                    f"deployments[{j}]; give each deployment its own name"
                )
        return self

    def resolved(self, base: Path) -> ServiceConfig:
        """The config with every deployment's relative paths made absolute against ``base``
        (the folder of the file)."""
        deployments = [d.resolved(base) for d in self.deployments]
        return self.model_copy(update={"deployments": deployments})
