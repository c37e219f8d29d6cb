"""The ``medgrit`` command line: one command per user intent, over the library and flows.

Errors a user can fix (a missing path, an unknown source kind, a bad flag, a malformed
dataset.json, an --out that cannot be written or is being written by another process) print one
line and exit with code 2, before anything is written. Prefect is imported only by commands that
run a flow, so these checks answer at once. A build that fails later (shards that failed, a full
disk) prints one line and exits with code 1; SIGINT and SIGTERM stop it cleanly with 130 and 143.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from medgrit.core.fsnames import escape_name
from medgrit.schemas.config import BuildConfig
from medgrit.schemas.sources import kinds_help

app = typer.Typer(
    name="medgrit",
    help="Build refer-and-ground (Med-GRIT-style) instruction datasets from medical segmentations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    """Print one error line to stderr (names escaped) and exit."""
    typer.echo(f"medgrit: error: {' '.join(escape_name(message).split())}", err=True)
    raise typer.Exit(code)


def _shown(path: Path | str) -> str:
    return escape_name(str(path))


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


def _run_flow(config: BuildConfig, fresh: bool = False) -> dict:
    """Run the build flow; the failures a user can act on end in one line.

    ``fresh``: the folder is medgrit's staging folder, rebuilt from scratch when it holds
    another build (else a changed plan is a user error)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from medgrit.adapters.runtime.interrupt import signalled
    from medgrit.adapters.store.dataset_dir import DatasetBusy
    from medgrit.core.failures import StopRequested, is_disk_full
    from medgrit.flows.build import BuildFailed, DatasetMismatch, build_dataset

    out = Path(config.out)
    # LLM shards share one provider limit: run them one at a time, each saturating it.
    workers = 1 if config.generator == "llm" else config.workers
    flow = build_dataset.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    try:
        return flow(config=config, rebuild_if_changed=fresh)
    except DatasetMismatch as exc:
        fail(str(exc))
    except BuildFailed as exc:
        typer.echo(_summary_text(out))
        fail(str(exc), code=1)
    except DatasetBusy as exc:
        fail(str(exc))
    except StopRequested:
        if signalled():
            raise KeyboardInterrupt from None  # main() says how to continue
        fail(f"the build stopped; run `medgrit resume {_shown(out)}` to finish it", code=1)
    except OSError as exc:
        if is_disk_full(exc):
            fail(
                f"no space left on {_mount_point(out)} (the disk holding {_shown(out)}); "
                f"free some space, then run `medgrit resume {_shown(out)}`",
                code=1,
            )
        where = f" ({_shown(exc.filename)})" if exc.filename else ""
        fail(
            f"the build of {_shown(out)} failed: {exc.strerror or exc}{where}; "
            f"fix it, then run `medgrit resume {_shown(out)}`",
            code=1,
        )


def _mount_point(path: Path) -> str:
    """The mount point of the file system holding ``path`` (for messages about the disk)."""
    current = path.resolve()
    while not current.exists() and current != current.parent:
        current = current.parent
    device = current.stat().st_dev
    while current != current.parent and current.parent.stat().st_dev == device:
        current = current.parent
    return _shown(current)


def _report(out: Path, manifest: dict) -> None:
    """Print the summary of a finished build; exit 1 when it kept no image at all."""
    typer.echo(_summary_text(out))
    rows = (manifest.get("totals") or {}).get("rows", {})
    if not rows.get("images"):
        reasons = (manifest.get("totals") or {}).get("rejects_by_reason", {})
        why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        fail(
            f"the build kept no image from its sources ({why or 'no rejects'}); "
            f"see the rejects table in {_shown(out)}",
            code=1,
        )
    typer.echo(f"dataset written to {_shown(out.resolve())} ({manifest['status']})")


def _summary_text(out: Path) -> str:
    from medgrit.adapters.store.manifest import read_manifest
    from medgrit.core.summary import render_summary

    manifest = read_manifest(out)
    totals = manifest.get("totals") or {
        "rows": {},
        "images_by_modality": {},
        "images_by_split": {},
        "qa_by_modality_task": {},
        "rejects_by_reason": {},
    }
    shards = manifest["shards"]
    done = sum(s["status"] == "done" for s in shards)
    failed = [s["id"] for s in shards if s["status"] == "failed"]
    llm = totals.get("llm") if manifest["config"].get("generator") == "llm" else None
    return render_summary(
        _shown(out), totals.get("rows", {}), totals, done, len(shards), failed, llm=llm
    )


@app.command()
def build(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help=f"Sources as KIND:PATH or 'demo' (the default). {kinds_help()}."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to write.")] = ...,  # type: ignore[assignment]
    max_images: Annotated[int | None, typer.Option(help="Take at most N images (trials).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of phrasing and task choices.")] = 0,
    plane: Annotated[str, typer.Option(help="Slice plane: axial, coronal or sagittal.")] = "axial",
    slice_stride: Annotated[int, typer.Option(help="Take every N-th slice with foreground.")] = 1,
    max_slices_per_case: Annotated[
        int | None, typer.Option(help="At most N slices per case, spread evenly.")
    ] = None,
    min_area: Annotated[int, typer.Option(help="Drop region instances under N pixels.")] = 16,
    ct_window: Annotated[
        str | None, typer.Option(help="CT window LEVEL,WIDTH in HU (default 40,400).")
    ] = None,
    percentiles: Annotated[
        str | None, typer.Option(help="MR/PET intensity percentiles LOW,HIGH (default 0.5,99.5).")
    ] = None,
    modality: Annotated[
        str | None,
        typer.Option(help="Modality key (ct, mr, xray, pet, ...) when the source does not say."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            help="Pseudonymisation key file, outside --out "
            "(default $MEDGRIT_KEY_FILE or ~/.config/medgrit/pseudonym.key)."
        ),
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of cases held out as test.")] = 0.11,
    cases_per_shard: Annotated[int, typer.Option(help="Cases per shard.")] = 4,
    workers: Annotated[int, typer.Option(help="Shards built at once.")] = 2,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing medgrit dataset in --out.")
    ] = False,
    generator: Annotated[
        str, typer.Option(help="template (no network) or llm (an OpenAI-compatible endpoint).")
    ] = "template",
    llm_model: Annotated[str | None, typer.Option(help="LLM model name.")] = None,
    llm_base_url: Annotated[
        str | None,
        typer.Option(envvar="OPENAI_BASE_URL", help="OpenAI-compatible endpoint URL."),
    ] = None,
    llm_api_key_block: Annotated[
        str | None,
        typer.Option(help="Prefect Secret block with the API key (else $OPENAI_API_KEY)."),
    ] = None,
    llm_temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.2,
    llm_max_tokens: Annotated[int, typer.Option(help="Max completion tokens.")] = 1024,
    llm_rpm: Annotated[int, typer.Option(help="Requests per minute allowed.")] = 500,
    llm_tpm: Annotated[int, typer.Option(help="Tokens per minute allowed.")] = 200_000,
    llm_concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 32,
    llm_price_input: Annotated[float, typer.Option(help="USD per 1M prompt tokens.")] = 0.0,
    llm_price_output: Annotated[float, typer.Option(help="USD per 1M completion tokens.")] = 0.0,
    llm_response_format: Annotated[
        str, typer.Option(help="json_schema, json_object or none (what the server supports).")
    ] = "json_schema",
    llm_retry_invalid: Annotated[
        int, typer.Option(help="Ask again with the error fed back, this many times.")
    ] = 1,
    llm_batch: Annotated[bool, typer.Option(help="Use the OpenAI Batch API.")] = False,
    llm_batch_poll_s: Annotated[
        float, typer.Option(help="Seconds between polls of a batch's status.")
    ] = 30.0,
    llm_timeout_s: Annotated[
        float, typer.Option(help="Seconds before a request times out.")
    ] = 60.0,
) -> None:
    """Build a dataset from segmentation sources (the bundled demo when none is given)."""
    if not str(out).strip():
        fail("--out needs a folder name")
    fields: dict = {
        # Absolute paths: a resume from another directory must read the same sources.
        "sources": [_absolute_spec(spec) for spec in (sources or ["demo"])],
        "out": str(out),
        "max_images": max_images,
        "seed": seed,
        "plane": plane,
        "slice_stride": slice_stride,
        "max_slices_per_case": max_slices_per_case,
        "min_area": min_area,
        "modality": modality,
        "key_file": str(key_file.expanduser().absolute()) if key_file else None,
        "test_fraction": test_fraction,
        "cases_per_shard": cases_per_shard,
        "workers": workers,
    }
    if ct_window is not None:
        fields["ct_window"] = _pair(ct_window, "--ct-window")
    if percentiles is not None:
        fields["percentiles"] = _pair(percentiles, "--percentiles")
    fields["generator"] = generator
    if llm_model is not None:
        fields["llm"] = {
            "model": llm_model,
            "base_url": llm_base_url,
            "api_key_block": llm_api_key_block,
            "temperature": llm_temperature,
            "max_tokens": llm_max_tokens,
            "requests_per_minute": llm_rpm,
            "tokens_per_minute": llm_tpm,
            "max_concurrency": llm_concurrency,
            "price_input_per_million": llm_price_input,
            "price_output_per_million": llm_price_output,
            "response_format": llm_response_format,
            "retry_invalid": llm_retry_invalid,
            "batch": llm_batch,
            "batch_poll_s": llm_batch_poll_s,
            "timeout_s": llm_timeout_s,
        }
    try:
        config = BuildConfig(**fields)
    except ValidationError as exc:
        _config_error(exc)
    opened = _open_checked(config, out)
    replace = _check_out(out, [Path(s.root) for s in opened], overwrite)
    if replace:
        _build_replacing(config, out)
        return
    with ExitStack() as stack:
        _take_out(out, stack, "build")
        if _holds_more_than_locks(out):
            fail(
                f"--out {_shown(out)} was filled by another process meanwhile; "
                "choose another folder"
            )
        _create_key(config)
        _report(out, _run_flow(config))


def _absolute_spec(spec: str) -> str:
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        return spec  # ``demo``, or an error BuildConfig names
    return f"{kind}:{Path(path).expanduser().absolute()}"


def _key_path(config: BuildConfig) -> Path:
    from medgrit.adapters.runtime.keys import default_key_file

    return Path(config.key_file).expanduser() if config.key_file else default_key_file()


def _open_checked(config: BuildConfig, out: Path) -> list:
    """Open the sources and check them, the key and the API key; nothing is written.

    A key file that does not exist yet is created only once every check has passed (see
    :func:`_create_key`); until then a throwaway key lists the cases.
    """
    import secrets

    from medgrit.adapters.build import open_build_sources
    from medgrit.adapters.runtime.keys import is_inside, load_or_create_key
    from medgrit.adapters.sources import SourceError

    key_path = _key_path(config)
    if is_inside(key_path, out):
        fail(
            f"the pseudonymisation key {_shown(key_path)} must be kept outside --out {_shown(out)}"
        )
    try:
        key = load_or_create_key(key_path) if key_path.exists() else secrets.token_bytes(32)
    except (OSError, ValueError) as exc:
        fail(f"cannot use the pseudonymisation key {_shown(key_path)}: {_reason(exc)}")
    try:
        opened = open_build_sources(config, key)
    except SourceError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read the sources: {_reason(exc)}")
    except (RecursionError, ValueError) as exc:
        fail(f"cannot read the sources: {type(exc).__name__}: {str(exc)[:200]}")
    for source in opened:
        if is_inside(key_path, Path(source.root)):
            fail(
                f"the pseudonymisation key {_shown(key_path)} lies inside the source folder "
                f"{_shown(source.root)}; keep it elsewhere (sources are never written)"
            )
    if config.llm is not None and config.generator == "llm" and not config.llm.api_key_block:
        if not os.environ.get("OPENAI_API_KEY"):
            fail("--generator llm needs an API key: set OPENAI_API_KEY or --llm-api-key-block")
    if not any(s.cases for s in opened):
        fail("the sources hold no cases (no label files found)")
    return opened


def _create_key(config: BuildConfig) -> None:
    from medgrit.adapters.runtime.keys import load_or_create_key

    key_path = _key_path(config)
    try:
        load_or_create_key(key_path)
    except (OSError, ValueError) as exc:
        fail(f"cannot use the pseudonymisation key {_shown(key_path)}: {_reason(exc)}")


_LOCK_FILES = (".medgrit.lock", ".dataset.json.lock")


def _holds_more_than_locks(folder: Path) -> bool:
    """Whether a folder holds anything besides medgrit's lock files (a build stopped before
    it wrote its manifest leaves only those)."""
    return any(entry.name not in _LOCK_FILES for entry in folder.iterdir())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {_shown(exc.filename)}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _check_out(out: Path, source_roots: list[Path], overwrite: bool) -> bool:
    """Check --out before anything is written; True when it holds a dataset to replace."""
    from medgrit.adapters.runtime.keys import is_inside
    from medgrit.adapters.store.dataset_dir import foreign_entries, is_medgrit_dataset

    existing = out
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        if existing == out:
            fail(f"--out {_shown(out)} is a file, not a folder")
        fail(f"--out {_shown(out)} lies under {_shown(existing)}, which is a file, not a folder")
    for root in source_roots:
        if is_inside(out, root) or is_inside(root, out):
            relation = (
                "is"
                if out.resolve() == root.resolve()
                else ("lies inside" if is_inside(out, root) else "contains")
            )
            fail(
                f"--out {_shown(out)} {relation} the source folder {_shown(root)}; "
                "write the dataset to another folder (sources are never written)"
            )
    for parent in out.resolve().parents:
        if is_medgrit_dataset(parent):
            fail(
                f"--out {_shown(out)} lies inside the dataset {_shown(parent)}; "
                "choose a folder outside it"
            )
    if not (out.is_dir() and _holds_more_than_locks(out)):
        return False
    if not is_medgrit_dataset(out):
        fail(
            f"--out {_shown(out)} is not empty and holds no medgrit dataset; choose another folder"
        )
    if not overwrite:
        fail(
            f"--out {_shown(out)} already holds a dataset: use `medgrit resume {_shown(out)}`, "
            "or --overwrite to replace it"
        )
    foreign = foreign_entries(out)
    if foreign:
        listed = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        fail(
            f"--out {_shown(out)} holds files medgrit did not write ({listed}); "
            "move them out, or choose another folder"
        )
    return True


# The dataset being written and how, for the message of a stopped build.
_writing: list[tuple[Path, str]] = []


def _take_out(out: Path, stack: ExitStack, mode: str) -> None:
    """Create --out (when missing) and hold its writer lock until ``stack`` closes."""
    from medgrit.adapters.store.dataset_dir import DatasetBusy, hold_dataset

    if not _writing:
        _writing.append((out, mode))
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(hold_dataset(out))
    except DatasetBusy as exc:
        fail(str(exc))
    except OSError as exc:
        if created:
            _remove_empty(out)
        fail(f"cannot write to --out {_shown(out)}: {exc.strerror or exc}")


def _remove_empty(folder: Path) -> None:
    try:
        for name in _LOCK_FILES:
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass


def _build_replacing(config: BuildConfig, out: Path) -> None:
    """--overwrite: build beside ``out`` and swap the new dataset in once it is complete."""
    from medgrit.adapters.runtime.interrupt import signalled
    from medgrit.adapters.store.dataset_dir import foreign_entries, prepare_staging, swap_in
    from medgrit.adapters.store.manifest import update_manifest

    shown = out
    out = out.resolve()  # replace the folder itself, not a link to it
    with ExitStack() as stack:
        _take_out(out, stack, "overwrite")
        if foreign_entries(out):  # checked again now that no other writer can add any
            fail(f"--out {_shown(shown)} holds files medgrit did not write; choose another folder")
        try:
            staging = prepare_staging(out)
        except OSError as exc:
            fail(f"cannot prepare the replacement of {_shown(out)}: {_reason(exc)}")
        _take_out(staging, stack, "overwrite")
        _share_llm_cache(out, staging)
        _create_key(config)
        try:
            manifest = _run_flow(config.model_copy(update={"out": str(staging)}), fresh=True)
        except typer.Exit as exc:
            if exc.exit_code == 1:
                typer.echo(
                    f"medgrit: {_shown(out)} is unchanged; run the same command again to "
                    "finish the new dataset and replace it",
                    err=True,
                )
            raise
        if signalled() or manifest.get("status") != "complete":
            fail(
                f"the new dataset is not complete; {_shown(shown)} is unchanged: run the same "
                "command again to finish it and replace the old one",
                code=1,
            )
        if not (manifest.get("totals") or {}).get("rows", {}).get("images"):
            _report(staging, manifest)  # exits 1: nothing to replace the dataset with
        swap_in(staging, out)

        def retarget(on_disk: dict) -> None:
            on_disk.setdefault("config", {})["out"] = config.model_dump(mode="json")["out"]

        update_manifest(out, retarget)
        _report(out, manifest)


def _share_llm_cache(old: Path, new: Path) -> None:
    """Hard-link the old dataset's LLM answers into the new one (answers are keyed by content,
    so a rebuild asks again only what changed)."""
    import shutil

    cache = old / "llm" / "cache"
    if not cache.is_dir() or (new / "llm").exists():
        return
    try:
        shutil.copytree(cache, new / "llm" / "cache", copy_function=os.link)
    except OSError:
        shutil.rmtree(new / "llm", ignore_errors=True)  # a plain rebuild then


@app.command()
def resume(
    out: Annotated[Path, typer.Argument(help="Dataset directory of an interrupted build.")],
) -> None:
    """Finish an interrupted or failed build: only shards not yet done are built."""
    from medgrit.adapters.store.manifest import ManifestError, read_manifest

    try:
        manifest = read_manifest(out)
    except ManifestError as exc:
        fail(str(exc))
    try:
        config = BuildConfig(**{**manifest["config"], "out": str(out)})
    except (ValidationError, KeyError, TypeError):
        fail(f"{_shown(out)}/dataset.json holds no valid build config")
    _open_checked(config, out)
    with ExitStack() as stack:
        _take_out(out, stack, "resume")
        _create_key(config)
        _report(out, _run_flow(config))


@app.command()
def status(
    out: Annotated[Path, typer.Argument(help="Dataset directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show how far a build got: shards done, pending and failed, and the totals."""
    from medgrit.adapters.store.manifest import ManifestError, read_manifest

    try:
        manifest = read_manifest(out)
    except ManifestError as exc:
        fail(str(exc))
    shards = manifest.get("shards", [])
    counts = {k: sum(s.get("status") == k for s in shards) for k in ("done", "pending", "failed")}
    if as_json:
        typer.echo(json.dumps({"shards": counts, "totals": manifest.get("totals")}, indent=2))
        return
    typer.echo(
        f"shards: {counts['done']} done, {counts['pending']} pending, "
        f"{counts['failed']} failed (of {len(shards)})"
    )
    for s in shards:
        if s.get("status") == "failed":
            typer.echo(f"  {s['id']}: {s.get('error', 'failed')}")
    if manifest.get("totals"):
        typer.echo(_summary_text(out))


@app.command()
def validate(out: Annotated[Path, typer.Argument(help="Dataset directory.")]) -> None:
    """Check a dataset against the data contract (files, schemas, boxes, text, splits)."""
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.adapters.store.validate import validate_dataset

    try:
        problems = validate_dataset(out)
    except ManifestError as exc:
        fail(str(exc))
    for p in problems[:50]:
        typer.echo(escape_name(p))
    if problems:
        typer.echo(f"{len(problems)} problem(s) found", err=True)
        raise typer.Exit(1)
    typer.echo(f"{_shown(out)}: valid")


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to write the demo sources into.")],
) -> None:
    """Write the demo sources (all eight modalities, in their native layouts) to a folder."""
    from medgrit.adapters.synthetic.demo import demo_source_specs, ensure_demo_data

    if out.exists() and not out.is_dir():
        fail(f"{_shown(out)} is a file, not a folder; choose a new folder")
    if out.exists() and any(out.iterdir()) and not (out / ".complete").is_file():
        fail(f"{_shown(out)} is not empty; choose a new folder")
    try:
        root = ensure_demo_data(out)
    except OSError as exc:
        fail(f"cannot write the demo sources to {_shown(out)}: {_reason(exc)}")
    typer.echo(f"demo sources written to {_shown(root.resolve())}; build them with:")
    typer.echo("  medgrit build " + _shown(" ".join(demo_source_specs(root))) + " --out DIR")


def _continue_hint() -> str:
    if not _writing:
        return "nothing was written"
    out, mode = _writing[0]
    if mode == "overwrite":
        return f"{_shown(out)} is unchanged; run the same command again to replace it"
    if not (out / "dataset.json").is_file():
        return "run the same command again to build the dataset"
    return f"`medgrit resume {_shown(out)}` continues the build"


def main() -> None:
    """Entry point of the ``medgrit`` console script."""
    from medgrit.adapters.runtime.interrupt import exit_code, install_stop_handlers, signalled
    from medgrit.flows.prefect_env import apply_prefect_defaults

    apply_prefect_defaults()
    install_stop_handlers()
    try:
        code = app(standalone_mode=False, prog_name="medgrit")
    except typer.TyperException as exc:  # click's usage errors: one line, exit 2
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"medgrit: error: {escape_name(' '.join(message.split()))}{hint}", err=True)
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
