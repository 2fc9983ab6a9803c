"""`probekit filter`: drop sampled solutions early by Q-value and measure majority-vote accuracy."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import app
from cli.common import console, emit_json, rich_table


@app.command("filter")
def filter_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="Probe checkpoint folder written by `probekit fit`."),
    store: Path = typer.Option(..., "--store", help="Store of sampled solutions (with answers) from `probekit extract`, same model and layer as the checkpoint."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: trajectories.jsonl, metrics.json, frontier.png, q_curves.png."),
    threshold: str = typer.Option("0", help="Drop threshold: a number (e.g. 0), a comma list (0.1,0.2) or auto (quantiles of per-trajectory min signal, plus 0). With several, the one with the best validation accuracy is chosen (ties: more tokens saved)."),
    skip_first: int = typer.Option(5, help="Never drop at token positions below this (the official evaluation skips the first 5 tokens)."),
    goal: str = typer.Option("mean", help="Goal prototype(s) for Q: mean (the paper's mean preferred representation) or kmeans (best cosine to any k-means prototype)."),
    signal: str = typer.Option("q", help="Per-token score compared with the threshold: q (cosine to the goal) or reward (the reward head)."),
    valid_frac: float = typer.Option(0.3, help="Share of the store's groups used to choose the threshold when none of the checkpoint's validation groups are in the store (seeded split, saved in metrics.json)."),
    seed: int = typer.Option(0, help="Seed of the validation split, of the random-drop baseline and of the plotted trajectories."),
    random_seeds: int = typer.Option(5, help="Seeds averaged for the random-drop baseline."),
    plots: bool = typer.Option(True, help="Write frontier.png and q_curves.png."),
    json_out: bool = typer.Option(False, "--json", help="Print metrics.json's report section as JSON on stdout."),
) -> None:
    """Filter sampled solutions by Q-value (or reward) and compare majority voting with and without filtering."""
    from probekit.errors import ProbekitError
    from probekit.filtering import GOALS, SIGNALS, filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    if goal not in GOALS:
        raise ProbekitError(f"--goal '{goal}': choose from {', '.join(GOALS)}")
    if signal not in SIGNALS:
        raise ProbekitError(f"--signal '{signal}': choose from {', '.join(SIGNALS)}")
    if random_seeds < 1:
        raise ProbekitError(f"--random-seeds {random_seeds}: must be >= 1")
    checkpoint = load_checkpoint(ckpt)
    st = Store(store)
    metrics = filter_store(
        checkpoint, st, out, threshold=threshold, skip_first=skip_first, goal=goal, signal=signal,
        valid_frac=valid_frac, seed=seed, n_random_seeds=random_seeds, plots=plots,
    )
    rep = metrics["report"]
    groups = metrics["groups"]
    if groups["n_excluded_train"]:
        console.print(f"{groups['n_excluded_train']} groups of the checkpoint's training split are excluded from the report.")
    if metrics["threshold_mode"] != "fixed":
        console.print(
            f"threshold {metrics['chosen_threshold']:.4g} chosen on {groups['n_selection']} selection groups "
            f"({groups['selection_source']}); reported on {groups['n_report']} other groups."
        )
    if json_out:
        emit_json({k: metrics[k] for k in ("signal", "goal", "skip_first", "chosen_threshold", "report", "seconds")})
        return
    base = rep["baselines"]
    rows = [
        ["report groups / trajectories", f"{rep['n_groups']} / {rep['n_trajectories']}"],
        ["threshold", metrics["chosen_threshold"]],
        ["accuracy, majority vote (no filter)", rep["accuracy_majority"]],
        ["accuracy, filtered majority vote", rep["accuracy_filtered"]],
        ["share of trajectories dropped", rep["dropped_share"]],
        ["share of tokens saved", rep["tokens_saved_share"]],
        ["groups that fell back to all trajectories", rep["fallback_groups"]],
        ["accuracy, random drops at same budget", f"{base['random']['accuracy']:.4f} ± {base['random']['accuracy_std']:.4f}"],
        ["accuracy, length cap at same budget", f"{base['length']['accuracy']:.4f} (cap {base['length']['cap_tokens']} tokens)"],
        ["accuracy, best-of-n by reward", rep.get("best_of_n_accuracy", float("nan"))],
        ["accuracy, reward-weighted vote", rep.get("weighted_vote_accuracy", float("nan"))],
        ["oracle (any correct answer in group)", rep["oracle_accuracy"]],
        ["trajectories without answer (no vote)", rep["n_without_answer"]],
    ]
    console.print(rich_table(f"probekit filter ({metrics['signal']}, skip_first {metrics['skip_first']})", ["metric", "value"], rows))
    console.print(f"wrote {out}/trajectories.jsonl, metrics.json" + (", frontier.png, q_curves.png" if plots else ""))
