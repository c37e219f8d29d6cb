"""``medgrit serve CONFIG``: run medgrit's flows as scheduled Prefect deployments.

The config file (TOML or YAML, by suffix) is read and validated whole, and every deployment's
sources and dataset folder are checked as ``medgrit build`` checks them, before anything
connects to Prefect: a problem is one line naming the field by its path
(``deployments[0].config.plane: ...``) and exit code 2. A dataset folder that already holds a
medgrit dataset of the same settings is fine: each scheduled run builds into it again and adds
what is new. ``--prefect-yaml FILE`` writes the same deployments as a ``prefect.yaml`` for
``prefect deploy --all`` and a work pool instead, and serves nothing; it checks each deployment
the same way first, so a file that names a missing source or a folder that cannot be written is
never written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from medgrit.adapters.runtime.atomic import write_atomic
from medgrit.cli.configfile import invalid_config, parse_config_file
from medgrit.cli.messages import fail, reason_of, shown, speaking_of
from medgrit.cli.preflight import check_dataset_folders, check_out, create_key, open_checked
from medgrit.schemas.service import ServiceConfig


def load_service_config(path: Path) -> ServiceConfig:
    """Read and validate a service config; its relative paths are made absolute against the
    file's folder. Every problem is one line and exit code 2."""
    data = parse_config_file(path, "service config")
    if not isinstance(data, dict):
        fail(f"{shown(path)}: the file must hold a `deployments` list (see examples/service.toml)")
    try:
        service = ServiceConfig.model_validate(data)
    except ValidationError as exc:
        invalid_config(shown(path), exc)
    service = service.resolved(path.parent.absolute())
    seen: dict[Path, int] = {}
    for i, deployment in enumerate(service.deployments):
        out = Path(os.path.realpath(deployment.config.out))
        j = seen.setdefault(out, i)
        if j != i:
            fail(
                f"{shown(path)}: deployments[{i}].config.out: {shown(out)} is also the dataset "
                f"of deployments[{j}]; give each deployment its own folder (one writer at a time)"
            )
    return service


def check_deployment(where: str, service: ServiceConfig, i: int) -> None:
    """The checks of ``medgrit build`` for one deployment (its sources, its key, its ``out``:
    a folder that can be written, outside every source), each problem one line naming the
    deployment; an existing dataset of the same settings is welcome (each run builds into it
    again) when its folders can be written."""
    from medgrit.adapters.store.bookkeeping import content_config, load_dataset
    from medgrit.adapters.store.manifest import ManifestError

    deployment = service.deployments[i]
    config = deployment.config
    out = Path(config.out)
    with speaking_of(f"{where}: deployments[{i}] ({deployment.name})"):
        opened = open_checked(config, out).sources
        if not check_out(out, [Path(s.root) for s in opened], overwrite=True, flag="config.out"):
            return
        try:
            built = load_dataset(out).config
        except (ManifestError, KeyError, TypeError):
            fail(f"{shown(out)}/dataset.json holds no valid build config")
        ours = content_config(config.model_dump(mode="json"))
        theirs = content_config(built) if isinstance(built, dict) else {}
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if differ:
            fail(
                f"config.out {shown(out)} holds a dataset built with other settings "
                f"({', '.join(differ)}); give those settings or another folder"
            )
        check_dataset_folders(out)


def _check_server() -> str:
    """The API URL of a reachable Prefect server (serve needs one: the ephemeral server of
    ``medgrit build`` ends with its process, and with it the schedules)."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        fail(
            "medgrit serve needs a Prefect server: run `prefect server start --host 127.0.0.1`, "
            "then `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    return url


def _check_reachable(url: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        detail = " ".join(str(problem).split())[:200]
        fail(
            f"the Prefect server at {url} does not answer ({detail}); start it with "
            "`prefect server start --host 127.0.0.1` or fix PREFECT_API_URL"
        )


def write_prefect_yaml(service: ServiceConfig, config_path: Path, target: Path) -> None:
    """Write ``target`` (a ``prefect.yaml``) for ``service``, atomically."""
    import yaml

    from medgrit.flows.serve import prefect_yaml

    folder = target.parent.absolute()
    if target.is_dir():
        fail(f"--prefect-yaml {shown(target)} is a folder; give a file name")
    if not folder.is_dir():
        fail(f"--prefect-yaml {shown(target)}: the folder {shown(folder)} does not exist")
    source = config_path.absolute()
    named = os.path.relpath(source, folder) if source.is_relative_to(folder) else str(source)
    header = (
        f"# Written by `medgrit serve {named} --prefect-yaml {target.name}`: edit that file, "
        "not this one.\n"
        f"# Deploy: `prefect work-pool create {service.work_pool} --type process`, then "
        "`prefect deploy --all` in this folder;\n"
        f"# Run: `prefect worker start --pool {service.work_pool}`. Runs start in the folder "
        "`prefect deploy` ran in,\n# so relative paths below are relative to this folder.\n"
    )
    body = yaml.safe_dump(
        prefect_yaml(service, folder), sort_keys=False, allow_unicode=True, width=100
    )
    try:
        write_atomic(target, header + body)
    except OSError as exc:
        fail(f"cannot write {shown(target)}: {reason_of(exc)}")


def serve(
    config: Annotated[
        Path, typer.Argument(help="Service config (.toml, .yaml or .yml) listing deployments.")
    ],
    prefect_yaml: Annotated[
        Path | None,
        typer.Option(
            "--prefect-yaml",
            help="Write the deployments to this prefect.yaml (for `prefect deploy --all` and a "
            "work pool) instead of serving them.",
        ),
    ] = None,
) -> None:
    """Serve scheduled builds from a config file (needs a Prefect server: PREFECT_API_URL)."""
    service = load_service_config(config)
    if prefect_yaml is not None:
        for i in range(len(service.deployments)):
            check_deployment(shown(config), service, i)
        write_prefect_yaml(service, config, prefect_yaml)
        typer.echo(
            f"{shown(prefect_yaml)} written ({len(service.deployments)} deployment(s)); deploy "
            f"with `prefect deploy --all` in {shown(prefect_yaml.parent.absolute())}"
        )
        return
    url = _check_server()
    for i in range(len(service.deployments)):
        check_deployment(shown(config), service, i)
    _check_reachable(url)
    for deployment in service.deployments:
        create_key(deployment.config)
    _serve(service)


def _serve(service: ServiceConfig) -> None:
    import signal

    from medgrit.flows.serve import runner_deployments, serve_deployments

    deployments = runner_deployments(service)
    for deployment in service.deployments:
        zone = deployment.timezone or "UTC"
        state = ", paused" if deployment.paused else ""
        typer.echo(
            f"serving {deployment.name}: {deployment.flow} at cron '{deployment.cron}' "
            f"({zone}{state}) into {shown(deployment.config.out)}"
        )
    # SIGINT as Python's own: asyncio then cancels the runner, which pauses the schedules and
    # stops its runs on the way out (SIGTERM: the runner's handler does the same).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serve_deployments(deployments)
    typer.echo("medgrit: stopped serving; the schedules are paused until it serves again")
