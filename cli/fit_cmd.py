"""`probekit fit`, `probekit eval`, `probekit sweep`: train and evaluate probes on a store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import app
from cli.common import console, emit_json, rich_table
from probekit.errors import ProbekitError


def _list(spec: str, kind, option: str) -> list:
    try:
        values = [kind(x.strip()) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ProbekitError(f"{option}: expected a comma-separated list of {kind.__name__} values, got '{spec}'") from None
    if not values:
        raise ProbekitError(f"{option}: give at least one value")
    return values


def _widths(spec: str) -> tuple[int, ...]:
    """'256' or '256x128' or '256,128' -> one encoder's hidden widths."""
    items = [w for w in spec.replace("x", ",").split(",") if w.strip()]
    try:
        widths = tuple(int(w) for w in items)
    except ValueError:
        raise ProbekitError(f"--widths: expected widths like 256 or 256x128, got '{spec}'") from None
    if not widths or any(w < 1 for w in widths):
        raise ProbekitError(f"--widths: widths must be positive integers, got '{spec}'")
    return widths


@app.command()
def fit(
    store: Path = typer.Option(..., "--store", "-s", help="Store folder written by `probekit extract`."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (weights, config, goals, split, metrics, prefix plot)."),
    layer: Optional[int] = typer.Option(None, help="Layer of the store to read. Default: the store's first layer."),
    encoder: str = typer.Option("mlp", help="Encoder φ: mlp (Linear/GELU through --widths) or linear (one Linear layer)."),
    widths: str = typer.Option("256", help="Hidden widths of the mlp encoder, e.g. 256 or 256x128."),
    rep_size: int = typer.Option(128, help="Size of the representation φ (goal space)."),
    head: str = typer.Option("linear", help="Reward head on φ: linear or mlp (the official value_head_strategy)."),
    head_hidden: int = typer.Option(64, help="Hidden width of the mlp reward head."),
    lam: float = typer.Option(0.5, "--lam", help="Weight λ of the contrastive loss; 0 = pure Bradley-Terry (contrastive term not computed)."),
    k: int = typer.Option(8, "--k", help="Contrastive (source, goal) and negative position pairs sampled per preference pair."),
    goal_min_frac: float = typer.Option(0.0, help="Goals are sampled from positions >= this fraction of the chosen completion."),
    late_frac: Optional[float] = typer.Option(None, help="Draw negatives only from the last LATE_FRAC of each completion (default: uniform)."),
    margin: float = typer.Option(0.0, help="Margin in the Bradley-Terry loss: −log σ(r_c − r_r − margin)."),
    epochs: int = typer.Option(30, help="Maximum training epochs."),
    batch_size: int = typer.Option(32, help="Preference pairs per batch."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay."),
    patience: int = typer.Option(5, help="Stop after this many epochs without a better validation pairwise accuracy."),
    valid_frac: float = typer.Option(0.2, help="Fraction of GROUPS held out for validation (early stopping, reported metrics)."),
    test_frac: float = typer.Option(0.2, help="Fraction of GROUPS held out for the final test (`probekit eval --split test`)."),
    split_file: Optional[Path] = typer.Option(None, help="Explicit split JSON {train: [groups], valid: [...], test: [...]} instead of a random one."),
    seed: int = typer.Option(0, help="Seed of the split, initialisation, batch order, sampling and bootstrap."),
    goal_prototypes: int = typer.Option(1, help="K > 1 also stores K k-means goal prototypes (Q = max cosine over them)."),
    memory_budget_mb: float = typer.Option(2048, help="Load the layer into memory when it fits this budget, else stream rows from the shards."),
    device: str = typer.Option("cpu", help="Torch device for the probe (cpu or cuda)."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples (of groups) for the confidence intervals."),
    progress: bool = typer.Option(True, help="Show a progress bar with the loss terms."),
    json_out: bool = typer.Option(False, "--json", help="Print the checkpoint path and metrics as JSON on stdout."),
) -> None:
    """Train a goal-conditioned reward probe (BT + λ·contrastive) on cached states and evaluate it on the validation split."""
    from probekit.evaluate import metrics_table
    from probekit.probe.train import FitOptions, fit as run_fit

    opts = FitOptions(
        store=store, out=out, layer=layer, encoder=encoder, widths=_widths(widths), rep_size=rep_size, head=head, head_hidden=head_hidden,
        lam=lam, K=k, goal_min_frac=goal_min_frac, late_frac=late_frac, margin=margin, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, patience=patience, valid_frac=valid_frac, test_frac=test_frac, split_file=split_file, seed=seed,
        goal_prototypes=goal_prototypes, memory_budget_mb=memory_budget_mb, device=device, progress=progress, n_boot=n_boot,
    )
    ckpt = run_fit(opts, console=console)
    train = ckpt.metrics["train"]
    summary = {
        "checkpoint": str(ckpt.path), "layer": ckpt.layer, "epochs_run": train["epochs_run"], "best_epoch": train["best_epoch"],
        "train_pairs": train["n_train_pairs"], "valid_pairs": train["n_valid_pairs"], "row_source": train["row_source"], "seconds": train["seconds"],
    }
    if json_out:
        emit_json({**summary, "metrics": ckpt.metrics})
        return
    console.print(rich_table("probekit fit", ["field", "value"], [[k2, v] for k2, v in summary.items()]))
    if "valid" in ckpt.metrics:
        console.print(metrics_table(ckpt.metrics["valid"]))
    else:
        console.print("[yellow]warning:[/] no validation groups; nothing was evaluated (set --valid-frac > 0)")


@app.command("eval")
def eval_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", "-c", help="Checkpoint folder written by `probekit fit`."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Store to evaluate on. Default: the store the probe was trained on."),
    split: str = typer.Option("valid", help="Groups to evaluate: valid, test (the final number), train, or all (every trajectory of the store)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for metrics.json and prefix_auroc.png. Default: CKPT/eval-SPLIT."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples (of groups) for the 95% intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap and the random baseline."),
    q_threshold: Optional[float] = typer.Option(None, help="Q threshold for error localisation. Default: midpoint of the mean last-token Q of label 1 and 0."),
    baselines: bool = typer.Option(True, help="Also report the length, logistic-regression and random baselines."),
    memory_budget_mb: float = typer.Option(2048, help="Load the layer into memory when it fits this budget, else stream from the shards."),
    device: str = typer.Option("cpu", help="Torch device for the probe (cpu or cuda)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
) -> None:
    """Evaluate a probe: pairwise accuracy, AUROC with group-bootstrap CIs, prefix AUROC, error localisation, baselines."""
    from probekit.evaluate import evaluate_checkpoint, metrics_table
    from probekit.probe.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(ckpt)
    checkpoint.model.to(device)
    out_dir = out if out is not None else ckpt / f"eval-{split}"
    metrics = evaluate_checkpoint(checkpoint, store, split, out_dir=out_dir, n_boot=n_boot, seed=seed, q_threshold=q_threshold,
                                  baselines=baselines, memory_budget_mb=memory_budget_mb, device=device)
    if json_out:
        emit_json(metrics)
        return
    console.print(metrics_table(metrics))
    err = metrics["probe"].get("error_localisation")
    if err:
        console.print(rich_table("error localisation (incorrect trajectories with a known first error)", ["field", "value"], [[k2, v] for k2, v in err.items()]))
    console.print(f"metrics and plot written to {out_dir}")


@app.command()
def sweep(
    store: Path = typer.Option(..., "--store", "-s", help="Store folder written by `probekit extract`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for runs/ (one checkpoint per run), results.csv and results.json."),
    lam: str = typer.Option("0,0.1,0.5,1", "--lam", help="Comma list of contrastive weights λ; 0 (pure Bradley-Terry) is always added."),
    layers: Optional[str] = typer.Option(None, help="Comma list of layers. Default: every layer of the store."),
    widths: str = typer.Option("256", help="Comma list of encoders: 256, 128x128 (two hidden layers), linear."),
    k: str = typer.Option("8", "--k", help="Comma list of K (contrastive samples per pair); λ = 0 runs ignore K."),
    goal: str = typer.Option("mean", help="Comma list of goal kinds for Q-values: mean, kmeans (evaluated on the same runs)."),
    seeds: str = typer.Option("0,1,2", help="Comma list of seeds (split, init, sampling); results are mean ± std over them."),
    prototypes: int = typer.Option(4, help="Number of k-means goal prototypes when --goal includes kmeans."),
    split: str = typer.Option("valid", help="Split the runs are compared on: valid (default; keep test for the final number), test or all."),
    epochs: int = typer.Option(30, help="Maximum training epochs per run."),
    rep_size: int = typer.Option(128, help="Size of φ."),
    head: str = typer.Option("linear", help="Reward head: linear or mlp."),
    batch_size: int = typer.Option(32, help="Preference pairs per batch."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    weight_decay: float = typer.Option(0.01, help="AdamW weight decay."),
    patience: int = typer.Option(5, help="Early-stopping patience (epochs)."),
    valid_frac: float = typer.Option(0.2, help="Fraction of groups for validation."),
    test_frac: float = typer.Option(0.2, help="Fraction of groups for test."),
    goal_min_frac: float = typer.Option(0.0, help="Goals are sampled from positions >= this fraction of the completion."),
    late_frac: Optional[float] = typer.Option(None, help="Draw negatives only from the last LATE_FRAC of each completion."),
    margin: float = typer.Option(0.0, help="Bradley-Terry margin."),
    n_boot: int = typer.Option(1000, help="Bootstrap resamples for the intervals."),
    memory_budget_mb: float = typer.Option(2048, help="Load a layer into memory when it fits this budget, else stream."),
    device: str = typer.Option("cpu", help="Torch device for the probes."),
    progress: bool = typer.Option(True, help="Show a progress bar over runs."),
    json_out: bool = typer.Option(False, "--json", help="Print results.json on stdout."),
) -> None:
    """Grid of fits over λ, layer, encoder widths, K, goal kind and seeds; mean ± std over seeds beside the baselines."""
    from probekit.sweep import SweepOptions, parse_widths_list, run_sweep, sweep_table

    opts = SweepOptions(
        store=store, out=out, lams=_list(lam, float, "--lam"), layers=_list(layers, int, "--layers") if layers else None,
        widths=parse_widths_list(widths), ks=_list(k, int, "--k"), goals=_list(goal, str, "--goal"), seeds=_list(seeds, int, "--seeds"),
        prototypes=prototypes, split=split, progress=progress,
        base={"epochs": epochs, "rep_size": rep_size, "head": head, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "patience": patience, "valid_frac": valid_frac, "test_frac": test_frac, "goal_min_frac": goal_min_frac, "late_frac": late_frac,
              "margin": margin, "n_boot": n_boot, "memory_budget_mb": memory_budget_mb, "device": device},
    )
    result = run_sweep(opts, console=console)
    if json_out:
        emit_json(result)
        return
    console.print(sweep_table(result))
    console.print(f"results written to {out / 'results.csv'} and {out / 'results.json'}")
