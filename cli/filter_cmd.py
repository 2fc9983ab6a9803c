"""`probekit filter`: drop sampled solutions early by Q-value and measure majority-vote accuracy."""

from __future__ import annotations

from pathlib import Path

import typer

from probekit.filter.config import FilterConfig
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.options import with_config
from probekit_cli.progress import progress_for
from probekit_cli.summary import Report, TableFormat, fmt_num, format_option, json_option
from probekit_cli.tables import filter_table


@app.command("filter")
@with_config(FilterConfig)
def filter_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="Probe checkpoint folder written by `probekit fit`."),
    store: Path = typer.Option(..., "--store", help="Store of sampled solutions (with answers) from `probekit extract`, same model and layer as the checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (owned by this command): decisions.jsonl, metrics.json, frontier.png, q_curves.png."),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced) or another command's output."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    json_out: bool = json_option("Print metrics.json's report section as JSON on stdout."),
    table_format: TableFormat = format_option(),
    config: FilterConfig = None,
) -> None:
    """Filter sampled solutions by Q-value (or reward) and compare majority voting with and without filtering."""
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    report = Report(json_out, table_format)
    config.validate()
    metrics = filter_store(load_checkpoint(ckpt), Store(store), out, config, overwrite=overwrite, progress=progress_for(progress))
    for warning in metrics["warnings"]:
        console.print(f"[yellow]warning:[/] {esc(warning)}", highlight=False, soft_wrap=True)
    groups = metrics["groups"]
    if groups["n_excluded_train"]:
        console.print(f"{groups['n_excluded_train']} groups of the checkpoint's training split are excluded from the report.")
    if metrics["threshold_mode"] != "fixed":
        console.print(
            f"threshold {fmt_num(metrics['chosen_threshold'])} chosen on {groups['n_selection']} selection groups "
            f"({esc(groups['selection_source'])}); reported on {groups['n_report']} other groups."
        )
    if report.json:
        report.emit({k: metrics[k] for k in ("signal", "goal", "skip_first", "skip_frac", "weighting", "chosen_threshold", "report",
                                             "warnings", "seconds")})
        return
    report.show(filter_table(metrics))
    console.print(f"wrote {esc(out)}/decisions.jsonl, metrics.json" + (", frontier.png, q_curves.png" if config.plots else ""), soft_wrap=True)

