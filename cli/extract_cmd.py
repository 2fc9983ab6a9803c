"""`probekit extract`: cache a frozen LM's completion-token states once."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer

from probekit.extract.options import ExtractOptions
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.legends import EXTRACT
from probekit_cli.options import field_help, with_config
from probekit_cli.summary import Report, TableFormat, fields_summary, fmt_value, format_option, json_option


@app.command()
@with_config(ExtractOptions, exclude=("trajectories", "out", "padding_side"), param="options", partial=True)
def extract(
    trajectories: Path = typer.Argument(..., help=field_help(ExtractOptions, "trajectories")),
    out: Path = typer.Option(..., "--out", "-o", help=field_help(ExtractOptions, "out")),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = json_option("Print the manifest summary as JSON on stdout."),
    table_format: TableFormat = format_option(),
    options: Callable[..., ExtractOptions] = None,
) -> None:
    """Run a frozen causal LM once over prompt + completion trajectories and store completion-token hidden states."""
    from probekit.extract.run import extract as run_extract
    from probekit_cli.progress import progress_for

    report = Report(json_out, table_format)
    opts = options(trajectories=trajectories, out=out)
    result = run_extract(opts, progress=progress_for(progress))
    summary = {
        "out": str(result.out),
        "complete": result.complete,
        "shards_written": result.shards_done,
        "shards_already_complete": result.shards_skipped,
        "shards_held_by_another_process": result.shards_busy,
        "n_skipped_invalid": result.n_skipped_invalid,
        **result.manifest.get("stats", {}),
    }
    if result.n_skipped_invalid:
        console.print(f"[yellow]warning:[/] skipped {result.n_skipped_invalid} invalid records (--skip-invalid)")
    if result.n_truncated:
        console.print(f"[yellow]warning:[/] {result.n_truncated} trajectories were longer than --max-length {opts.max_length} and were truncated from the left (counted in manifest.json)")
    if result.shards_busy:
        console.print(f"[yellow]warning:[/] shards {esc(fmt_value(result.shards_busy))} are being written by another live process and were left to it; "
                      "the store is complete once that process finishes (or re-run this command after it stops)")
    if not result.complete:
        console.print("This rank's shards are done; the store is complete once every rank has finished.")
    if report.json:
        report.emit(summary)
    else:
        report.show(fields_summary("probekit extract", summary, EXTRACT))
