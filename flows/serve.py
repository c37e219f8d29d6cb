"""medgrit's flows as scheduled Prefect deployments, from a validated service config.

:func:`runner_deployments` gives the deployments ``medgrit serve`` serves in its own process
(``prefect.serve``: it polls the server for scheduled runs and runs each in a subprocess, so it
needs no work pool and no server services). :func:`prefect_yaml` gives the same deployments as a
``prefect.yaml`` for ``prefect deploy --all`` and a worker of a ``process`` work pool. Each run
gets its deployment's config as the flow's one parameter, so a run is the same build as
``medgrit build`` with those settings: into an existing dataset it finishes what is missing, and
(once its source gains cases) builds only the new ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgrit.flows.prefect_env import apply_prefect_defaults
from medgrit.schemas.service import ServiceConfig, ServiceDeployment

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment


@dataclass(frozen=True)
class ServedFlow:
    """Where one of medgrit's flows lives: as a module attribute (what ``medgrit serve``
    imports) and as a file of the checkout (the ``prefect.yaml`` entrypoint)."""

    module: str
    attribute: str
    entrypoint: str

    def load(self) -> Flow:
        """Import the flow (Prefect and the flow's modules load only now)."""
        apply_prefect_defaults()
        return getattr(import_module(self.module), self.attribute)


# One entry per ``flow`` of the service config (medgrit.schemas.service.FLOW_NAMES).
FLOWS: dict[str, ServedFlow] = {
    "build": ServedFlow("medgrit.flows.build", "build_dataset", "flows/build.py:build_dataset"),
}


def flow_parameters(deployment: ServiceDeployment) -> dict[str, Any]:
    """The parameters every run of ``deployment`` gets: its config as JSON (Prefect validates
    it against the flow's signature and draws it as a form in the UI)."""
    return {"config": deployment.config.model_dump(mode="json")}


def runner_deployments(service: ServiceConfig) -> list[RunnerDeployment]:
    """The deployments of ``service`` for ``prefect.serve`` (give it a resolved config: served
    runs start in the serving process's folder, so paths must be absolute)."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for deployment in service.deployments:
        flow = FLOWS[deployment.flow].load()
        deployments.append(
            flow.to_deployment(
                name=deployment.name,
                schedules=[CronSchedule(cron=deployment.cron, timezone=deployment.timezone)],
                parameters=flow_parameters(deployment),
                tags=deployment.all_tags,
                description=deployment.description,
                paused=deployment.paused,
                concurrency_limit=one_run_at_a_time(),
                # Entrypoint as a module: any machine with medgrit installed can run it.
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments


ONE_RUN_AT_A_TIME = {"limit": 1, "collision_strategy": "CANCEL_NEW"}
"""A deployment's runs never overlap: a run due while the last one still builds (a nightly
build that outlasts its night, a retry or a manual run meanwhile) is cancelled, rather than
failing on the dataset's writer lock and raising a false alarm."""


def one_run_at_a_time() -> Any:
    """:data:`ONE_RUN_AT_A_TIME` as Prefect's ``ConcurrencyLimitConfig``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    return ConcurrencyLimitConfig(**ONE_RUN_AT_A_TIME)


def serve_deployments(deployments: list[RunnerDeployment]) -> None:
    """Serve ``deployments`` until SIGINT or SIGTERM (Prefect pauses their schedules on the way
    out, so no runs pile up that nobody would pick up)."""
    from prefect import serve

    serve(*deployments, print_starting_message=False)


def prefect_yaml(service: ServiceConfig, folder: Path) -> dict[str, Any]:
    """The ``prefect.yaml`` of ``service`` for ``prefect deploy --all`` run in ``folder``.

    Give it a resolved config. Paths inside ``folder`` are written relative to it: the flow runs
    of a process worker start where ``prefect deploy`` ran (its default pull step), so they
    resolve to the same files, and the file holds no path of one machine. There are no build or
    push steps: the code is the medgrit checkout itself.
    """
    folder = Path(os.path.abspath(folder))

    def portable(path: str) -> str:
        inside = Path(path).is_relative_to(folder)
        return os.path.relpath(path, folder) if inside else path

    entries = []
    for deployment in service.deployments:
        config = deployment.config
        sources = []
        for spec in config.sources:
            kind, sep, path = spec.partition(":")
            sources.append(f"{kind}:{portable(path)}" if sep and path else spec)
        update: dict[str, Any] = {"sources": sources, "out": portable(config.out)}
        if config.key_file is not None:
            update["key_file"] = portable(config.key_file)
        local = deployment.model_copy(update={"config": config.model_copy(update=update)})
        schedule: dict[str, Any] = {"cron": deployment.cron}
        if deployment.timezone:
            schedule["timezone"] = deployment.timezone
        entry: dict[str, Any] = {
            "name": deployment.name,
            "entrypoint": FLOWS[deployment.flow].entrypoint,
        }
        if deployment.description:
            entry["description"] = deployment.description
        entry.update(
            tags=deployment.all_tags,
            paused=deployment.paused,
            concurrency_limit=dict(ONE_RUN_AT_A_TIME),
            schedules=[schedule],
            parameters=flow_parameters(local),
            work_pool={"name": service.work_pool, "work_queue_name": None, "job_variables": {}},
        )
        entries.append(entry)
    return {
        "name": "medgrit",
        "build": None,
        "push": None,
        "deployments": entries,
    }
