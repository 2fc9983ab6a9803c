"""`probekit demo`: the whole pipeline on the bundled model and synthetic data."""

from __future__ import annotations

from pathlib import Path

import typer

from probekit.config import DemoConfig
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.options import with_config
from probekit_cli.progress import progress_for
from probekit_cli.summary import Report, TableFormat, format_option, json_option
from probekit_cli.tables import demo_table, generation_table


@app.command()
@with_config(DemoConfig)
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for every stage's outputs (data, store, checkpoints, evals, filters, summary.json)."),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    json_out: bool = json_option("Print the summary as JSON on stdout (the tables are still drawn on stderr)."),
    table_format: TableFormat = format_option(),
    config: DemoConfig = None,
) -> None:
    """Generate data, extract, fit the baseline and goal-conditioned probes, evaluate, filter, and summarise."""
    from probekit.demo import run_demo

    report = Report(json_out, table_format)
    summary = run_demo(out, config, overwrite=overwrite, progress=progress_for(progress),
                       log=lambda text: console.print(f"[bold cyan]demo[/] {esc(text)}", highlight=False, soft_wrap=True))
    if report.json:
        report.emit(summary)
    report.show(demo_table(summary), *([generation_table(summary["generation"])] if summary.get("generation") else []))
    console.print(f"plots: {esc(', '.join(summary['plots']))}", soft_wrap=True)
    console.print(f"everything is in {esc(out)}/ (summary.json); took {summary['seconds']['total']:.0f} s", soft_wrap=True)
