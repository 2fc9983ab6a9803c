"""`probekit score` and `probekit baseline`: a probe as a reward model over files (the library side is probekit.reward)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probekit.generate.config import GenerateConfig
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.legends import BASELINE, SCORE
from probekit_cli.options import with_config
from probekit_cli.progress import progress_for
from probekit_cli.summary import Report, TableFormat, fields_summary, format_option, json_option

# What loads the probe and its frozen model, shared by both commands.
CKPT_HELP = "Probe checkpoint (from `probekit fit`); it names the frozen model, template and max length it was trained with."
MODEL_HELP = "Where the checkpoint's frozen model is on this machine, when it is not where the checkpoint says (the same weights)."
STORE_HELP = "The store the checkpoint was fitted on: needed only by checkpoints older than their 'inputs' record."
DEVICE_HELP = "auto (CUDA when available), cpu or cuda."
TOKENS_HELP = "Token budget of one forward batch (padded length x rows). Default: extraction's for the device."


def _load(ckpt: Path, model: Optional[str], device: str, store: Optional[Path], baseline: Optional[Path] = None, on_missing: str = "error"):
    from probekit.reward import RewardProbe

    return RewardProbe.load(ckpt, device=device, model=model, store=store, baseline=baseline, on_missing=on_missing)


def _stat_fields(summary: dict, key: str) -> dict:
    return {f"{key} {k}": v for k, v in (summary.get(key) or {}).items()}


@app.command()
def score(
    file: Path = typer.Argument(..., help="JSONL to score: probekit trajectories, TRL prompt/completion (plain or conversational) or chat {\"messages\"}."),
    ckpt: Path = typer.Option(..., "--ckpt", help=CKPT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.jsonl (one row per record) and summary.json."),
    baseline: Optional[Path] = typer.Option(None, help="A `probekit baseline` folder: also write contrastive rewards (reward - the prompt's baseline mean)."),
    on_missing: str = typer.Option("error", help="A prompt without a baseline: error (default), or zero (no penalty, flagged has_baseline=false)."),
    q: bool = typer.Option(False, "--q", help="Also write each completion's per-token Q-values, their positions and token texts."),
    goal: str = typer.Option("mean", help="With --q: the goal Q points at: mean, kmeans, or a `probekit goal` folder."),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, help=STORE_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    chunk: int = typer.Option(256, help="Records read, scored and written at a time (memory holds one chunk's states)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help=TOKENS_HELP),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced) or another command's output."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = json_option("Print summary.json on stdout."),
    table_format: TableFormat = format_option(),
) -> None:
    """Score every completion of a JSONL file with a probe: rewards (and contrastive rewards, per-token Q) as JSONL."""
    from probekit.outputs import checkpoint_inputs, claim_output
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.reward.score_file import OUTPUTS, score_file

    report = Report(json_out, table_format)
    checkpoint = load_checkpoint(ckpt)
    inputs = [file, baseline, store, *checkpoint_inputs(checkpoint), goal if Path(goal).is_dir() else None]
    with claim_output(out, "score", OUTPUTS, overwrite=overwrite, inputs=inputs) as out_dir:
        rp = _load(checkpoint, model, device, store, baseline, on_missing)
        with out_dir.commit_set(last=("summary.json",)):
            summary = score_file(rp, file, out_dir, q=q, goal=goal, chunk=chunk, max_batch_tokens=max_batch_tokens,
                                 progress=progress_for(progress))
    if report.json:
        report.emit(summary)
        return
    fields = {"records": summary["n_records"], "truncated": summary["n_truncated"]}
    if "n_without_baseline" in summary:
        fields["without baseline"] = summary["n_without_baseline"]
    fields.update({**_stat_fields(summary, "reward"), **_stat_fields(summary, "contrastive_reward"), "seconds": summary["seconds"],
                   "records/s": summary["records_per_second"]})
    report.show(fields_summary("probekit score", fields, SCORE))
    console.print(f"wrote {esc(out)}/scores.jsonl and summary.json (rewards are logits: compare them, do not read them as probabilities)",
                  soft_wrap=True)


# The sampling options `baseline` takes from generate's; the model, layers and template are the checkpoint's.
BASELINE_IGNORES = ("model", "layers", "template", "dtype", "shard_size", "device", "model_dtype")


@app.command()
@with_config(GenerateConfig, exclude=BASELINE_IGNORES, param="gen")
def baseline(
    prompts: Optional[Path] = typer.Argument(None, help="Prompts JSONL ({\"id\", \"prompt\"}) to sample --samples baseline responses for."),
    ckpt: Path = typer.Option(..., "--ckpt", help=CKPT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Baseline folder: baseline.json, baselines.jsonl (and samples/ when sampled)."),
    from_samples: Optional[Path] = typer.Option(None, "--from-samples", help="Read the baseline responses from this file (e.g. the SFT policy's "
                                                "samples, several per prompt, in any format `probekit score` reads) instead of sampling."),
    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, help=STORE_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced) or another command's output."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = json_option("Print the summary on stdout."),
    table_format: TableFormat = format_option(),
    gen: GenerateConfig = None,
) -> None:
    """Per-prompt baseline rewards for contrastive rewards (Shen et al. 2024): the mean reward of k baseline responses."""
    from probekit.data.prompts import read_prompts
    from probekit.errors import ProbekitError
    from probekit.outputs import checkpoint_inputs, claim_output
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.reward.baseline import FILES
    from probekit.reward.make_baseline import SAMPLES, baseline_from_file, sample_baseline

    report = Report(json_out, table_format)
    if (prompts is None) == (from_samples is None):
        raise ProbekitError("give either PROMPTS (to sample baseline responses) or --from-samples FILE, not both or neither")
    gen.validate()
    checkpoint = load_checkpoint(ckpt)
    outputs = (*FILES, SAMPLES) if prompts is not None else FILES
    inputs = [prompts, from_samples, store, *checkpoint_inputs(checkpoint)]
    with claim_output(out, "baseline", outputs, overwrite=overwrite, inputs=inputs) as out_dir:
        rp = _load(checkpoint, model, device, store)
        with out_dir.commit_set(last=("baseline.json",)):
            if from_samples is not None:
                summary = baseline_from_file(rp, from_samples, out_dir, progress_for(progress))
            else:
                items, _ = read_prompts(prompts)
                summary = sample_baseline(rp, items, out_dir, gen, overwrite=overwrite, progress=progress_for(progress))
    if report.json:
        report.emit(summary)
        return
    report.show(fields_summary("probekit baseline", summary, BASELINE))
    console.print(f"wrote {esc(out)}: use it with `probekit score --baseline {esc(out)}` or RewardProbe.load(..., baseline=...)", soft_wrap=True)
