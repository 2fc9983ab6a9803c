"""`probekit store verify`: the full check of a store that commands make only in part as they read it."""

from __future__ import annotations

from pathlib import Path

import typer

from probekit_cli.app import store_app
from probekit_cli.common import console, esc
from probekit_cli.progress import progress_for
from probekit_cli.summary import Report, TableFormat, fields_summary, format_option, json_option


@store_app.command()
def verify(
    store: Path = typer.Argument(..., help="Store folder (with manifest.json and shard-*.h5)."),
    progress: bool = typer.Option(True, help="Show a progress bar over shards."),
    json_out: bool = json_option("Print the summary as JSON on stdout instead of a line on stderr."),
    table_format: TableFormat = format_option(),
) -> None:
    """Check a whole store: the manifest, every shard's offsets and meta, its sha256 against the manifest's, and every
    state finite. The first damaged shard is named (exit status 2)."""
    from probekit.store import Store

    report = Report(json_out, table_format)
    summary = Store(store).verify(progress=progress_for(progress))
    if report.json:
        report.emit(summary)
        return
    if not report.text:
        report.show(fields_summary("probekit store verify", summary))
        return
    what = "sha256 of every shard matches the manifest" if summary["checksums"] else (
        "no checksums to compare (the store was written before probekit recorded them; re-extract it to get them)")
    console.print(f"[green]ok[/] {esc(summary['store'])}: {summary['shards']} shards, {summary['trajectories']} trajectories, "
                  f"{summary['rows']} rows, layers {', '.join(map(str, summary['layers']))}; {what}; every state finite", highlight=False, soft_wrap=True)
