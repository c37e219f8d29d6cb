"""``medgrit status DIR``: how far a build got, for people (a table of the shards, the totals,
why shards failed) and for scripts (``--json``, and exit codes: 0 complete, 1 while anything
failed, 3 while anything is pending). The numbers are ``medgrit.core.status``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medgrit.cli.messages import fail, shown
from medgrit.cli.running import summary_text


def status(
    out: Annotated[Path, typer.Argument(help="Dataset directory.")],
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print JSON (for scripts).")
    ] = False,
) -> None:
    """Show how far a build got: each shard, the totals, and why shards failed.

    A table of the shards (done, pending or failed; cases, images, QA pairs, rejects, tokens),
    the totals, and the reason of each failed shard; --json gives the same for scripts.

    Exit code: 0 when every shard is done, 1 while any shard failed, 3 while any is pending.
    """
    from medgrit.adapters.store.bookkeeping import load_dataset
    from medgrit.adapters.store.dataset_dir import current_writer
    from medgrit.adapters.store.manifest import ManifestError
    from medgrit.cli.tables import status_for_stdout
    from medgrit.core.status import (
        STATUS_ALIGN,
        ShardStatus,
        build_state,
        exit_code,
        failed_lines,
        render_status_table,
        retired_line,
        status_json,
        status_rows,
    )

    try:
        manifest = load_dataset(out)
    except ManifestError as exc:
        fail(str(exc))
    shards = [ShardStatus.of(e.id, len(e.cases), e.counts(), e.error) for e in manifest.shards]
    state = build_state(shards)
    totals = manifest.totals.to_json() if manifest.totals is not None else None
    retired = [r.to_json() for r in manifest.retired or []]
    if as_json:
        document = status_json(shown(out), shards, totals, current_writer(out), retired)
        typer.echo(json.dumps(document, indent=2))
        raise typer.Exit(exit_code(state))
    counts = {k: sum(s.status == k for s in shards) for k in ("done", "pending", "failed")}
    typer.echo(
        f"shards: {counts['done']} done, {counts['pending']} pending, "
        f"{counts['failed']} failed (of {len(shards)})"
    )
    on_terminal = status_for_stdout(*status_rows(shards), STATUS_ALIGN, failed_lines(shards))
    typer.echo(on_terminal if on_terminal is not None else render_status_table(shards))
    retired_shards = retired_line(retired)
    if retired_shards:
        typer.echo(retired_shards)
    if totals and state == "complete":
        typer.echo("")
        typer.echo(summary_text(out))
    elif state != "complete":
        typer.echo("")
        writer = current_writer(out)
        if writer is not None:
            typer.echo(f"a build is writing {shown(out)} now{f' ({writer})' if writer else ''}")
        else:
            typer.echo(f"`medgrit resume {shown(out)}` builds the shards not yet done")
    raise typer.Exit(exit_code(state))
