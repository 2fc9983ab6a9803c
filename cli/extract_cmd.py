"""`probekit extract`: cache a frozen LM's completion-token states once."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import app
from cli.common import console, emit_json, rich_table


@app.command()
def extract(
    trajectories: Path = typer.Argument(..., help="Trajectories JSONL (see data/README.md), e.g. from `probekit data synth`."),
    out: Path = typer.Option(..., "--out", "-o", help="Store folder: manifest.json, pairs.jsonl and shard-*.h5 go here. Re-running the same command resumes."),
    pairs: Optional[Path] = typer.Option(None, help="Pairs JSONL ({chosen, rejected} ids). Default: every (label 1, label 0) combination within a group."),
    model: str = typer.Option("smollm2-135m", help="smollm2-135m (bundled), gemma3-270m, a local model folder, a local .gguf file, or a Hugging Face hub id (needs network)."),
    layers: Optional[str] = typer.Option(None, help="Layer(s) in Hugging Face hidden_states numbering, e.g. 15 or 10,15,20. Default: the middle layer."),
    template: str = typer.Option("auto", help="Prompt rendering: chat (the model's chat template), raw (prompt + completion), auto (chat when the tokenizer has one)."),
    positions: str = typer.Option("all", help="Completion positions to store: all, last, or stride:K (every K-th token; the last token is always kept)."),
    max_length: int = typer.Option(1024, help="Maximum tokens per trajectory; longer ones lose tokens from the prompt's left side first (counted and reported)."),
    dtype: str = typer.Option("float16", help="Storage dtype of the states: float16 (half the disk; overflow fails loudly) or float32."),
    model_dtype: str = typer.Option("auto", help="Dtype the model runs in: auto (bfloat16 on CUDA, float32 on CPU), float32, float16, bfloat16."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    max_batch_tokens: int = typer.Option(8192, help="Token budget of one length-bucketed batch (padded length x batch size)."),
    shard_size: int = typer.Option(512, help="Trajectories per HDF5 shard (the unit of resumption and of multi-process splitting)."),
    shard: Optional[str] = typer.Option(None, help="Process only part i of N (e.g. 0/4) for job arrays; under torchrun RANK/WORLD_SIZE are used."),
    overwrite: bool = typer.Option(False, help="Replace a store in --out made with other settings or data (otherwise refused)."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid records (and report their count) instead of stopping at the first."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest summary as JSON on stdout."),
) -> None:
    """Run a frozen causal LM once over prompt + completion trajectories and store completion-token hidden states."""
    from cli.progress import progress_for
    from probekit.extract.run import ExtractOptions, extract as run_extract

    result = run_extract(
        ExtractOptions(
            trajectories=trajectories, out=out, pairs=pairs, model=model, layers=layers, template=template,
            positions=positions, max_length=max_length, dtype=dtype, model_dtype=model_dtype, device=device,
            max_batch_tokens=max_batch_tokens, shard_size=shard_size, shard=shard, overwrite=overwrite,
            skip_invalid=skip_invalid,
        ),
        progress=progress_for(progress),
    )
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
        console.print(f"[yellow]warning:[/] {result.n_truncated} trajectories were longer than --max-length {max_length} and were truncated from the left (counted in manifest.json)")
    if result.shards_busy:
        console.print(f"[yellow]warning:[/] shards {result.shards_busy} are being written by another live process and were left to it; "
                      "the store is complete once that process finishes (or re-run this command after it stops)")
    if not result.complete:
        console.print("This rank's shards are done; the store is complete once every rank has finished.")
    if json_out:
        emit_json(summary)
    else:
        console.print(rich_table("probekit extract", ["field", "value"], [[k, v] for k, v in summary.items()]))
