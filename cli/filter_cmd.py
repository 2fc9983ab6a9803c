"""`probekit filter`: drop sampled solutions early by Q-value and measure majority-vote accuracy."""

from __future__ import annotations

from pathlib import Path

import typer

from probekit.filter.config import FilterConfig
from probekit_cli.app import app
from probekit_cli.common import console, emit_json, esc
from probekit_cli.options import with_config
from probekit_cli.progress import progress_for
from probekit_cli.tables import filter_table


@app.command("filter")
@with_config(FilterConfig)
def filter_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="Probe checkpoint folder written by `probekit fit`."),
    store: Path = typer.Option(..., "--store", help="Store of sampled solutions (with answers) from `probekit extract`, same model and layer as the checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (owned by this command): decisions.jsonl, metrics.json, frontier.png, q_curves.png."),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced) or another command's output."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json's report section as JSON on stdout."),
    config: FilterConfig = None,
) -> None:
    """Filter sampled solutions by Q-value (or reward) and compare majority voting with and without filtering."""
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    config.validate()
    metrics = filter_store(load_checkpoint(ckpt), Store(store), out, config, overwrite=overwrite, progress=progress_for(progress))
    for warning in metrics["warnings"]:
        console.print(f"[yellow]warning:[/] {esc(warning)}", highlight=False, soft_wrap=True)
    groups = metrics["groups"]
    if groups["n_excluded_train"]:
        console.print(f"{groups['n_excluded_train']} groups of the checkpoint's training split are excluded from the report.")
    if metrics["threshold_mode"] != "fixed":
        console.print(
            f"threshold {metrics['chosen_threshold']:.4g} chosen on {groups['n_selection']} selection groups "
            f"({esc(groups['selection_source'])}); reported on {groups['n_report']} other groups."
        )
    if json_out:
        emit_json({k: metrics[k] for k in ("signal", "goal", "skip_first", "skip_frac", "weighting", "chosen_threshold", "report",
                                           "warnings", "seconds")})
        return
    table = filter_table(metrics)
    for row in _added_rows(metrics):  # until cli/tables.py's filter_table lists them
        table.add_row(*map(esc, row))
    console.print(table)
    console.print(f"wrote {esc(out)}/decisions.jsonl, metrics.json" + (", frontier.png, q_curves.png" if config.plots else ""), soft_wrap=True)


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _added_rows(metrics: dict) -> list[list[str]]:
    """The vote tests (and, with --weighting softmax, Q-Probe's weighted accuracies) as rows of the summary table."""
    rep = metrics["report"]
    paired, tt = rep["vote_tests"]["paired"], rep["vote_tests"]["official_ttest"]
    rows = [["filtered vs majority, McNemar exact p (paired, per problem)", _p(paired["p_value"])],
            ["  problems: both right / only filtered / only majority / both wrong",
             f"{paired['both_correct']} / {paired['only_filtered_correct']} / {paired['only_majority_correct']} / {paired['both_wrong']}"],
            [f"share correct filtered vs all, t-test p over {tt['n_problems']} problems (official Student / Welch)",
             f"{_p(tt['student']['p_value'])} / {_p(tt['welch']['p_value'])}"]]
    if metrics["skip_frac"]:
        rows.insert(0, ["never dropped before position", f"max({metrics['skip_first']}, floor({metrics['skip_frac']:g} x length))"])
    w = metrics["weighting"]
    if w["kind"] == "softmax":
        name = f"softmax({w['score']}/{w['beta']:g})"
        rows += [[f"accuracy, best-of-n by {name} (expected)", f"{rep['softmax_best_of_n_accuracy']:.4f}"],
                 [f"accuracy, {name}-weighted vote", f"{rep['softmax_vote_accuracy']:.4f}"],
                 [f"accuracy, {name}-weighted vote, filtered", f"{rep['softmax_vote_filtered_accuracy']:.4f}"]]
    return rows
