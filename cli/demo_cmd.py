"""`probekit demo`: the whole pipeline on the bundled model and synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import app
from cli.common import console, emit_json


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for every stage's outputs (data, store, checkpoints, evals, filters, summary.json)."),
    model: str = typer.Option("smollm2-135m", help="Frozen model: smollm2-135m (bundled), gemma3-270m, a local folder or .gguf file."),
    n_problems: int = typer.Option(300, help="Synthetic problems to generate; each gets --solutions sampled solutions."),
    solutions: int = typer.Option(4, help="Solutions per problem (the majority-voting group)."),
    lam: float = typer.Option(0.5, help="λ of the goal-conditioned probe (the baseline always uses λ = 0)."),
    layers: Optional[str] = typer.Option(None, help="Layer to extract (default: the model's middle layer)."),
    epochs: int = typer.Option(30, help="Maximum training epochs per probe (early stopping on validation pairwise accuracy)."),
    seed: int = typer.Option(0, help="Seed for data generation, splits and training."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Generate data, extract, fit the baseline and goal-conditioned probes, evaluate, filter, and summarise."""
    from probekit.demo import DemoOptions, run_demo, summary_table

    summary = run_demo(
        DemoOptions(out=out, model=model, n_problems=n_problems, solutions=solutions, lam=lam, layers=layers,
                    epochs=epochs, seed=seed, progress=progress),
        console=console,
    )
    if json_out:
        emit_json(summary)
    console.print(summary_table(summary))
    console.print(f"plots: {', '.join(summary['plots'])}")
    console.print(f"everything is in {out}/ (summary.json); took {summary['seconds']['total']:.0f} s")
