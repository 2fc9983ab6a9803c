"""`probekit fit`, `probekit eval`, `probekit sweep`: train and evaluate probes on a store.

Their options come from the config dataclasses (`probekit.config`, `cli/options.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probekit.config import ABLATION_AXES, ComputeConfig, EvalConfig, FitConfig, SweepConfig, parse_widths_list
from probekit.errors import ProbekitError
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.legends import ERROR_LOCALISATION, FIT
from probekit_cli.options import field_help, help_panel, with_config
from probekit_cli.progress import progress_for
from probekit_cli.summary import Report, TableFormat, fields_summary, fmt_value, format_option, json_option
from probekit_cli.tables import metrics_table, sweep_table

OVERWRITE_HELP = "Write into an --out that holds other files (they are never replaced) or another command's output."
PROGRESS_HELP = "Show progress bars."


def _list(spec: str, kind, option: str) -> tuple:
    try:
        values = tuple(kind(x.strip()) for x in spec.split(",") if x.strip())
    except ValueError:
        raise ProbekitError(f"{option}: expected a comma-separated list of {kind.__name__} values, got '{spec}'") from None
    if not values:
        raise ProbekitError(f"{option}: give at least one value")
    return values


@app.command()
@with_config(FitConfig)
def fit(
    store: Path = typer.Option(..., "--store", "-s", help="Store folder written by `probekit extract`."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (weights, config, goals, split, metrics, prefix plot)."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
    json_out: bool = json_option("Print the checkpoint path and metrics as JSON on stdout."),
    table_format: TableFormat = format_option(),
    config: FitConfig = None,
) -> None:
    """Train a goal-conditioned reward probe (BT + λ·contrastive) on cached states and evaluate it on the validation split."""
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    report = Report(json_out, table_format)
    config.validate()
    ckpt = fit_probe(Store(store), out, config, overwrite=overwrite, progress=progress_for(progress))
    train = ckpt.metrics["train"]
    summary = {
        "checkpoint": str(ckpt.path), "layer": ckpt.layer, "epochs_run": train["epochs_run"], "best_epoch": train["best_epoch"],
        "train_pairs": train["n_train_pairs"], "valid_pairs": train["n_valid_pairs"], "row_source": train["row_source"], "seconds": train["seconds"],
    }
    if report.json:
        report.emit({**summary, "metrics": ckpt.metrics})
        return
    report.show(fields_summary("probekit fit", summary, FIT), *([metrics_table(ckpt.metrics["valid"])] if "valid" in ckpt.metrics else []))
    if "valid" not in ckpt.metrics:
        console.print("[yellow]warning:[/] no validation groups; nothing was evaluated (set --valid-frac > 0)")


@app.command("eval")
@with_config(EvalConfig, param="eval_config")
@with_config(ComputeConfig, param="compute")
def eval_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", "-c", help="Checkpoint folder written by `probekit fit`."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Store to evaluate on. Default: the store the probe was trained on."),
    split: str = typer.Option("valid", help="Groups to evaluate: valid, test (the final number), train, or all (every trajectory of the store)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json and prefix_auroc.png. Default: CKPT-eval-SPLIT beside the checkpoint "
                                                                  "(never inside it: a checkpoint folder stays as `fit` wrote it, ready to share)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and the random baseline."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    progress: bool = typer.Option(True, help=PROGRESS_HELP),
    json_out: bool = json_option("Print the metrics as JSON on stdout."),
    table_format: TableFormat = format_option(),
    eval_config: EvalConfig = None,
    compute: ComputeConfig = None,
) -> None:
    """Evaluate a probe: pairwise accuracy, AUROC with group-bootstrap CIs, prefix AUROC, error localisation, baselines."""
    from probekit.eval.evaluate import default_eval_out, evaluate_checkpoint, write_evaluation
    from probekit.outputs import checkpoint_inputs, claim_output
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    report = Report(json_out, table_format)
    FitConfig(compute=compute, eval=eval_config).validate()
    checkpoint = load_checkpoint(ckpt)
    if store is None:
        store = Path(checkpoint.config["store"]["path"])
        if not (store / "manifest.json").exists():
            raise ProbekitError(f"the store checkpoint {ckpt} was trained on ({store}) is gone; pass --store")
    st = Store(store)
    target = out if out is not None else default_eval_out(ckpt, split)
    with claim_output(target, "eval", ("metrics.json", "prefix_auroc.png"), overwrite=overwrite,
                      inputs=[st.path, *checkpoint_inputs(checkpoint)]) as out_dir:
        checkpoint.model.to(compute.device)
        metrics = evaluate_checkpoint(checkpoint, st, split, n_boot=eval_config.n_boot, seed=seed, baselines=eval_config.baselines,
                                      q_threshold=eval_config.q_threshold, length_bins=eval_config.length_bins,
                                      memory_budget_mb=compute.memory_budget_mb,
                                      progress=progress_for(progress))
        write_evaluation(metrics, out_dir)
    if report.json:
        report.emit(metrics)
        return
    err = metrics["probe"].get("error_localisation")
    report.show(metrics_table(metrics), *([fields_summary("error localisation (incorrect trajectories with a known first error)", err, ERROR_LOCALISATION)] if err else []))
    console.print(f"metrics and plot written to {esc(out_dir.path)}", soft_wrap=True)


SWEEP_AXES = ("lam", "K", "widths", "layer", "seed", "goal_prototypes")
SWEEP_PANEL = help_panel(SweepConfig, None)  # the grid's own options, beside the template's groups


@app.command()
@with_config(FitConfig, exclude=SWEEP_AXES, param="template", axes=ABLATION_AXES)
def sweep(
    store: Path = typer.Option(..., "--store", "-s", help="Store folder written by `probekit extract`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for runs/ (one checkpoint per run), results.csv and results.json."),
    lam: str = typer.Option("0,0.1,0.5,1", "--lam", help=field_help(SweepConfig, "lams"), rich_help_panel=SWEEP_PANEL),
    layers: Optional[str] = typer.Option(None, help=field_help(SweepConfig, "layers"), rich_help_panel=SWEEP_PANEL),
    widths: str = typer.Option("256", help=field_help(SweepConfig, "widths"), rich_help_panel=SWEEP_PANEL),
    k: str = typer.Option("8", "--k", help=field_help(SweepConfig, "ks"), rich_help_panel=SWEEP_PANEL),
    goal: str = typer.Option("mean", help=field_help(SweepConfig, "goals"), rich_help_panel=SWEEP_PANEL),
    seeds: str = typer.Option("0,1,2", help=field_help(SweepConfig, "seeds"), rich_help_panel=SWEEP_PANEL),
    prototypes: int = typer.Option(4, help=field_help(SweepConfig, "prototypes"), rich_help_panel=SWEEP_PANEL),
    split: str = typer.Option("valid", help=field_help(SweepConfig, "split"), rich_help_panel=SWEEP_PANEL),
    one_at_a_time: bool = typer.Option(False, "--one-at-a-time", help=field_help(SweepConfig, "one_at_a_time"), rich_help_panel=SWEEP_PANEL),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar over runs."),
    json_out: bool = json_option("Print results.json on stdout."),
    table_format: TableFormat = format_option(),
    template: FitConfig = None,
    axes: dict = None,
) -> None:
    """Grid of fits over λ, layer, encoder widths, K, goal kind, seeds and the ablation axes; mean ± std over seeds beside the baselines."""
    from probekit.sweep import run_sweep

    report = Report(json_out, table_format)
    config = SweepConfig(template=template, lams=_list(lam, float, "--lam"), layers=_list(layers, int, "--layers") if layers else None,
                         widths=tuple(parse_widths_list(widths)), ks=_list(k, int, "--k"), goals=_list(goal, str, "--goal"),
                         seeds=_list(seeds, int, "--seeds"), prototypes=prototypes, split=split, axes=axes,
                         one_at_a_time=one_at_a_time)

    def say_plan(plan: dict) -> None:
        console.print(f"sweep: {len(plan['runs'])} runs: layers {fmt_value(plan['layers'])} ({plan['layers_from']}), "
                      f"λ {fmt_value(plan['lams'])}, seeds {fmt_value(plan['seeds'])}; finished runs in {esc(out)} are reused",
                      highlight=False, soft_wrap=True)

    result = run_sweep(store, out, config, overwrite=overwrite, progress=progress_for(progress), on_plan=say_plan)
    if report.json:
        report.emit(result)
        return
    report.show(sweep_table(result))
    console.print(f"results written to {esc(out / 'results.csv')} and {esc(out / 'results.json')}", soft_wrap=True)
