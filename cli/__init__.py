"""The ``medgrit`` command line: one command per user intent, over the library and flows.

Errors a user can fix (a missing path, an unknown source kind, a bad flag, a malformed
dataset.json, an --out that cannot be written or is being written by another process) print one
line and exit with code 2, before anything is written. Prefect is imported only by commands that
run a flow, so these checks answer at once. A build that fails later (shards that failed, a full
disk) prints one line and exits with code 1; SIGINT and SIGTERM stop it cleanly with 130 and 143.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
from pydantic import ValidationError

from medgrit.adapters.store.dataset_dir import is_medgrit_dataset
from medgrit.cli.configfile import read_label_words
from medgrit.cli.demo import demo_data
from medgrit.cli.evaluate import evaluate
from medgrit.cli.export import export
from medgrit.cli.finetune import finetune
from medgrit.cli.inspect import inspect
from medgrit.cli.llm_options import with_llm_options
from medgrit.cli.messages import EXIT_USER_ERROR, fail, reason_of, shown
from medgrit.cli.predict import predict_baseline
from medgrit.cli.preflight import (
    absolute_spec,
    check_out,
    create_key,
    holds_more_than_locks,
    open_checked,
    take_out,
    writing,
)
from medgrit.cli.report import report as report_command
from medgrit.cli.running import build_replacing, report, run_flow, shard_runner
from medgrit.cli.serve import serve
from medgrit.cli.status import status
from medgrit.core.markdown import printable_text
from medgrit.flows.temporary_server import temporary_prefect_server
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.sources import kinds_help

app = typer.Typer(
    name="medgrit",
    help="Build refer-and-ground (Med-GRIT-style) instruction datasets from medical segmentations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"medgrit {version('medgrit')}")
        raise typer.Exit()


_QUIET = typer.Option(
    "--quiet", "-q", metavar="", help="Print no progress and no log below warnings: the result."
)
_NO_PREFECT = typer.Option(
    "--no-prefect",
    metavar="",
    help="Run in this process without Prefect: no server start, no UI; the same tables.",
)
_VERSION = typer.Option(
    "--version", "-V", metavar="", callback=_show_version, is_eager=True, help="Print the version."
)


@app.callback()
def _everywhere(
    ctx: typer.Context,
    quiet: Annotated[bool, _QUIET] = False,
    version: Annotated[bool, _VERSION] = False,
) -> None:
    """Progress goes to stderr (bars on a terminal, plain lines elsewhere) unless --quiet."""
    from medgrit.cli.terminal import showing_progress

    # Phase lines of checks wait for --out to be taken: a user error stays the only line.
    checked = ctx.invoked_subcommand in ("build", "resume", "serve", "inspect")
    ctx.with_resource(showing_progress(quiet, (lambda: not writing) if checked else None))


def _pair(text: str | None, flag: str) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        a, b = (float(p) for p in parts)
    except ValueError:
        fail(f"{flag} takes two numbers separated by a comma, e.g. {flag} 40,400")
    return a, b


def _config_error(exc: ValidationError) -> NoReturn:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    fail(f"{where.replace('_', '-')}: {msg}" if where else msg)


@app.command(  # the listing of commands would show the docstring's text after \f too
    short_help="Build a dataset from segmentation sources (the bundled demo when none is given)."
)
@with_llm_options
def build(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help=f"Sources as KIND:PATH or 'demo' (the default). {kinds_help()}."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")] = ...,  # type: ignore[assignment]
    max_images: Annotated[int | None, typer.Option(help="Take at most N images (trials).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of phrasing and task choices.")] = 0,
    plane: Annotated[
        Literal["axial", "coronal", "sagittal"],
        typer.Option(case_sensitive=False, help="Slice plane."),
    ] = "axial",
    slice_stride: Annotated[int, typer.Option(help="Take every N-th slice with foreground.")] = 1,
    max_slices_per_case: Annotated[
        int | None, typer.Option(help="At most N slices per case, spread evenly.")
    ] = None,
    min_area: Annotated[int, typer.Option(help="Drop region instances under N pixels.")] = 16,
    ct_window: Annotated[
        str | None,
        typer.Option(metavar="LEVEL,WIDTH", help="CT window in HU (default 40,400)."),
    ] = None,
    percentiles: Annotated[
        str | None,
        typer.Option(metavar="LOW,HIGH", help="MR/PET intensity percentiles (default 0.5,99.5)."),
    ] = None,
    modality: Annotated[
        str | None,
        typer.Option(help="Modality key (ct, mr, xray, pet, ...) when the source does not say."),
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(
            metavar="NAMES",
            help="Of multi-channel sources, build only these channels: names or indices, "
            "comma-separated (e.g. FLAIR,T1Gd or 0,3; default: every channel).",
        ),
    ] = None,
    label_names: Annotated[
        Path | None,
        typer.Option(
            help="JSON, TOML or YAML file of the words for labels, by the name their source "
            'writes: {"GTVp": "primary tumor volume"} (default: medgrit reads the names).'
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="Pseudonymisation key file, outside --out "
            "(default $MEDGRIT_KEY_FILE or ~/.config/medgrit/pseudonym.key)."
        ),
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of cases held out as test.")] = 0.11,
    images_per_shard: Annotated[
        int,
        typer.Option(help="Target images per shard; cases are packed up to it, never split."),
    ] = 200,
    cases_per_shard: Annotated[
        int | None, typer.Option(help="At most this many cases per shard (default: no cap).")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Shards built at once (worker processes, threads or Dask workers).")
    ] = 2,
    runner: Annotated[
        Literal["processes", "threads", "dask"],
        typer.Option(
            case_sensitive=False,
            help="processes (--workers worker processes of this machine; an LLM build's shards "
            "read their images there and ask the LLM from this process), threads (in this "
            "process) or dask (worker processes: a local cluster of --workers, or the cluster "
            "at --dask-address).",
        ),
    ] = "processes",
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Scheduler of an existing Dask cluster, tcp://HOST:PORT (with --runner dask); "
            "OUT and the sources must be at the same path on every worker."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(metavar="", help="Replace an existing medgrit dataset in --out.")
    ] = False,
    rebuild_changed: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Building into a dataset whose sources changed since (a label map, a case's "
            "files): rebuild the changed cases as new shards and retire the old ones "
            "(default: refuse).",
        ),
    ] = False,
    verify_sources: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Tell changed cases by a sha256 of their files (reads every file), not only "
            "by sizes and modification times.",
        ),
    ] = False,
    generator: Annotated[
        Literal["template", "llm"],
        typer.Option(
            case_sensitive=False,
            help="template (no network) or llm (an OpenAI-compatible endpoint).",
        ),
    ] = "template",
    no_prefect: Annotated[bool, _NO_PREFECT] = False,
    # The --llm-* options (with_llm_options): by LLMConfig field, None without --llm-model.
    llm: dict[str, Any] | None = None,
) -> None:
    """Build a dataset from segmentation sources (the bundled demo when none is given).
    \f
    The parameters are the command's options (typer reads them from the signature, the
    ``--llm-*`` ones from LLMConfig), one per parameter, which is what makes this function long;
    it turns them into a BuildConfig and hands that to ``_build_into``.
    """
    if not str(out).strip():
        fail("--out needs a folder name")
    fields: dict = {
        # Absolute paths: a resume from another directory must read the same sources.
        "sources": [absolute_spec(spec) for spec in (sources or ["demo"])],
        "out": str(out),
        "max_images": max_images,
        "seed": seed,
        "plane": plane,
        "slice_stride": slice_stride,
        "max_slices_per_case": max_slices_per_case,
        "min_area": min_area,
        "modality": modality,
        "channels": None if channels is None else channels.split(","),
        "label_names": read_label_words(label_names) if label_names else {},
        "key_file": str(key_file.expanduser().absolute()) if key_file else None,
        "test_fraction": test_fraction,
        "images_per_shard": images_per_shard,
        "cases_per_shard": cases_per_shard,
        "workers": workers,
        "runner": runner,
        "dask_address": dask_address,
        "rebuild_changed": rebuild_changed,
        "verify_sources": verify_sources,
    }
    if ct_window is not None:
        fields["ct_window"] = _pair(ct_window, "--ct-window")
    if percentiles is not None:
        fields["percentiles"] = _pair(percentiles, "--percentiles")
    fields["generator"] = generator
    if llm is not None:
        fields["llm"] = llm
    try:
        config = BuildConfig(**fields)
    except ValidationError as exc:
        _config_error(exc)
    if no_prefect and config.runner == "dask":
        fail("--no-prefect builds on this machine; leave out --runner dask")
    _build_into(out, config, overwrite, prefect=not no_prefect)


def _build_into(out: Path, config: BuildConfig, overwrite: bool, prefect: bool = True) -> None:
    """Check --out and the sources, then build into --out: a new dataset, more of an existing
    one, or (with --overwrite) a replacement of one; ``prefect`` False: without Prefect."""
    listing = open_checked(config, out)
    opened = listing.sources
    replace = check_out(out, [Path(s.root) for s in opened], overwrite)
    existing = is_medgrit_dataset(out)  # built before: built again, adding what is new
    if existing and not replace:
        _check_same_settings(out, config)
        _check_sources_unchanged(out, config, opened)
    with ExitStack() as stack:
        if prefect:  # (it starts while the build gets ready)
            stack.enter_context(temporary_prefect_server())
        task_runner = stack.enter_context(shard_runner(config, [s.root for s in opened]))
        if replace:
            build_replacing(config, out, task_runner, listing, prefect)
            return
        take_out(out, stack, "build")
        if not existing and holds_more_than_locks(out):
            fail(
                f"--out {shown(out)} was filled by another process meanwhile; choose another folder"
            )
        create_key(config)
        report(out, run_flow(config, task_runner=task_runner, listing=listing, prefect=prefect))


def _check_same_settings(out: Path, config: BuildConfig) -> None:
    """A build into a dataset of other settings is refused before anything starts."""
    from medgrit.adapters.store.bookkeeping import content_config, load_dataset
    from medgrit.adapters.store.manifest import ManifestError

    try:
        recorded = load_dataset(out).config
    except ManifestError as exc:
        fail(str(exc))
    before, now = content_config(recorded), content_config(config.model_dump(mode="json"))
    if before != now:
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        fail(
            f"--out {shown(out)} holds another build: the build settings differ from the ones "
            f"it was built with ({', '.join(k.replace('_', '-') for k in differ[:4])}); nothing "
            "was changed. Build into a new folder, or replace it with --overwrite"
        )


def _check_sources_unchanged(
    out: Path, config: BuildConfig, opened: list, resume: bool = False
) -> None:
    """A build or resume into a dataset whose sources changed since it was built is refused
    before anything starts (unless --rebuild-changed; with --verify-sources the build checks,
    so that every file is read once)."""
    from medgrit.adapters.planning import check_sources_unchanged
    from medgrit.adapters.runtime.keys import load_or_create_key
    from medgrit.cli.preflight import key_path_of

    key_path = key_path_of(config)
    if config.verify_sources or not key_path.is_file():
        return  # the build says so (a new key matches no recorded case)
    try:
        key = load_or_create_key(key_path)
    except (OSError, ValueError) as exc:
        fail(f"cannot use the pseudonymisation key {shown(key_path)}: {reason_of(exc)}")
    message = check_sources_unchanged(config, out, opened, key, resume)
    if message:
        fail(message)


@app.command()
def resume(
    out: Annotated[Path, typer.Argument(help="Dataset directory of an interrupted build.")],
    runner: Annotated[
        Literal["processes", "threads", "dask"] | None,
        typer.Option(case_sensitive=False, help="How shards run (default: as the build ran)."),
    ] = None,
    dask_address: Annotated[
        str | None,
        typer.Option(
            help="Scheduler of an existing Dask cluster, tcp://HOST:PORT (default: as the "
            "build ran, unless --runner is given)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Shards built at once (default: as the build ran).")
    ] = None,
    rebuild_changed: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Sources changed since the build began (a label map, a case's files): "
            "rebuild the changed cases as new shards and retire the old ones (default: refuse).",
        ),
    ] = False,
    verify_sources: Annotated[
        bool,
        typer.Option(
            metavar="", help="Tell changed cases by a sha256 of their files (reads every file)."
        ),
    ] = False,
    no_prefect: Annotated[bool, _NO_PREFECT] = False,
) -> None:
    """Finish an interrupted or failed build: only shards not yet done are built.

    It runs as the build ran (processes, threads or Dask, the same workers) unless told
    otherwise; how shards run never changes what they hold.
    """
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.manifest import ManifestError

    try:
        manifest = load_dataset(out)
    except ManifestError as exc:
        fail(str(exc))
    try:
        config = BuildConfig(**{**manifest.config, "out": str(out)})
    except (ValidationError, KeyError, TypeError):
        fail(f"{shown(out)}/dataset.json holds no valid build config")
    how: dict = {} if workers is None else {"workers": workers}
    how.update(rebuild_changed=rebuild_changed, verify_sources=verify_sources)
    if runner is not None:  # a runner given anew: a local cluster unless an address is too
        how.update(runner=runner, dask_address=dask_address)
    elif dask_address is not None:
        how["dask_address"] = dask_address
    if how:
        try:
            config = BuildConfig(**{**manifest.config, "out": str(out), **how})
        except ValidationError as exc:
            _config_error(exc)
    if no_prefect and config.runner == "dask":
        fail("--no-prefect runs on this machine; add --runner processes")
    listing = open_checked(config, out)
    opened = listing.sources
    _check_sources_unchanged(out, config, opened, resume=True)
    with ExitStack() as stack:
        if not no_prefect:  # (it starts while the resume gets ready)
            stack.enter_context(temporary_prefect_server())
        task_runner = stack.enter_context(shard_runner(config, [s.root for s in opened]))
        take_out(out, stack, "resume")
        create_key(config)
        report(
            out,
            run_flow(
                config,
                task_runner=task_runner,
                add_new_cases=False,
                listing=listing,
                prefect=not no_prefect,
            ),
        )


app.command()(status)


@app.command()
def validate(out: Annotated[Path, typer.Argument(help="Dataset directory.")]) -> None:
    """Check a dataset against the data contract (files, schemas, boxes, text, splits)."""
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.adapters.store.validate import validate_dataset, vocabulary_note

    try:
        problems = validate_dataset(out)
        note = vocabulary_note(load_dataset(out))
    except ManifestError as exc:
        fail(str(exc))
    if note:
        typer.echo(printable_text(note))
    for p in problems:
        typer.echo(printable_text(p))
    if problems:
        typer.echo(f"{len(problems)} problem(s) found", err=True)
        raise typer.Exit(1)
    typer.echo(f"{shown(out)}: valid")


app.command("demo-data")(demo_data)
app.command()(serve)
app.command()(inspect)
app.command()(export)
app.command()(evaluate)
app.command()(report_command)
app.command("predict-baseline")(predict_baseline)
app.command()(finetune)


def _continue_hint() -> str:
    if not writing:
        return "nothing was written"
    out, mode = writing[0]
    if mode == "finetune":
        return f"run the same command again to resume the fine-tune in {shown(out)}"
    if mode == "overwrite":
        return f"{shown(out)} is unchanged; run the same command again to replace it"
    if not (out / "dataset.json").is_file():
        return "run the same command again to build the dataset"
    return f"`medgrit resume {shown(out)}` continues the build"


def main() -> None:
    """Entry point of the ``medgrit`` console script."""
    from medgrit.adapters.runtime.interrupt import exit_code, install_stop_handlers, signalled
    from medgrit.cli.messages import error_line
    from medgrit.flows.prefect_env import apply_prefect_defaults, quiet_prefect_when_stopped

    apply_prefect_defaults()
    quiet_prefect_when_stopped()  # a stop is said in medgrit's one line, not in Prefect's logs
    install_stop_handlers()
    try:
        code = app(standalone_mode=False, prog_name="medgrit")
    except typer.TyperException as exc:  # click's usage errors: one line, exit 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        error_line(f"{printable_text(' '.join(message.split()))}{hint}")
        sys.exit(getattr(exc, "exit_code", EXIT_USER_ERROR) or EXIT_USER_ERROR)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except BaseException:  # Prefect's TerminationSignal after a SIGTERM, among others
        if not signalled():
            raise
        code = 130
    if signalled() or code == 130:  # Typer turns KeyboardInterrupt into exit code 130
        typer.echo(f"medgrit: stopped; {_continue_hint()}", err=True)
        sys.exit(exit_code())
    sys.exit(code if isinstance(code, int) else 0)
