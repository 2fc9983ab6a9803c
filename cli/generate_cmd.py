"""`probekit generate`: sample completions with the frozen model, store their states, optionally stop bad ones early."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from probekit.generate.config import STEER_IGNORES, GenerateConfig, SteerConfig
from probekit_cli.app import app
from probekit_cli.common import console, esc
from probekit_cli.options import with_config
from probekit_cli.progress import progress_for
from probekit_cli.legends import GENERATE, GOAL, STEER
from probekit_cli.summary import Report, TableFormat, fields_summary, format_option, json_option


def _threshold(spec: str, ckpt, goal: str, skip_first: int) -> tuple[float, str]:
    """(threshold, where it comes from): a number, `auto`, or a `probekit filter` output folder whose chosen threshold is used."""
    from probekit.filter.filtering import auto_threshold, filter_output_threshold

    if spec == "auto":
        chosen = auto_threshold(ckpt, goal, skip_first)
        return chosen["threshold"], chosen["chosen_on"]
    try:
        return float(spec), "given"
    except ValueError:
        return filter_output_threshold(spec, ckpt, goal, skip_first)


@app.command()
@with_config(GenerateConfig)
def generate(
    prompts: Path = typer.Argument(..., help="Prompts JSONL: one {\"id\", \"prompt\", \"gold\"?} per line; gold answers grade the samples."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: trajectories.jsonl, pairs.jsonl, store/ (the states) and generation.json."),
    filter_ckpt: Optional[Path] = typer.Option(None, "--filter", help="Probe checkpoint: stop each sample at its first token whose Q-value falls below --threshold."),
    threshold: str = typer.Option("auto", help="Q threshold for --filter: auto (the default: chosen as `probekit filter --threshold auto` "
                                              "would, on the checkpoint's validation groups of its training store); a number in (-1, 1] "
                                              "(a cosine; negative is normal); or a `probekit filter` output folder (its chosen threshold)."),
    skip_first: int = typer.Option(5, help="With --filter, never stop at completion positions below this."),
    goal: str = typer.Option("mean", help="With --filter, the goal the Q-value points at: mean or kmeans."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid prompt records (and report their count) instead of stopping at the first."),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced) or another command's output."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = json_option("Print generation.json on stdout."),
    table_format: TableFormat = format_option(),
    config: GenerateConfig = None,
) -> None:
    """Sample N completions per prompt with the frozen model, grade them, and store their hidden states as they are generated."""
    from probekit.data.prompts import read_prompts
    from probekit.generate.generation import generate as run_generate
    from probekit.generate.stopping import OnlineStop

    report = Report(json_out, table_format)
    config.validate()
    items, n_skipped = read_prompts(prompts, skip_invalid=skip_invalid)
    stop = None
    inputs = [prompts]
    if filter_ckpt is not None:
        from probekit.outputs import check_not_input, checkpoint_inputs
        from probekit.probe.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(filter_ckpt)
        # Everything read is an input: the checkpoint, the store it was trained on (read by --threshold auto), a filter folder.
        inputs += [*checkpoint_inputs(checkpoint), threshold if Path(threshold).is_dir() else None]
        check_not_input(out, inputs)  # before the threshold is computed: the refusal costs nothing
        value, chosen_on = _threshold(threshold, checkpoint, goal, skip_first)
        stop = OnlineStop(checkpoint, value, skip_first, goal, chosen_on)
    result = run_generate(items, out, config, stop=stop, overwrite=overwrite, inputs=tuple(inputs), progress=progress_for(progress))
    stats = {**result.stats, "n_skipped_invalid": n_skipped}
    if n_skipped:
        console.print(f"[yellow]warning:[/] skipped {n_skipped} invalid prompt records (--skip-invalid)")
    if report.json:
        report.emit(stats)
        return
    keys = ("n_prompts", "n_trajectories", "tokens_generated", "seconds", "tokens_per_second", "accuracy_per_sample",
            "n_hit_max_new_tokens", "n_stopped_early", "n_fallback_groups", "tokens_resumed_for_fallback")
    report.show(fields_summary("probekit generate", {k: stats[k] for k in keys}, GENERATE))
    console.print(f"wrote {esc(out)}/trajectories.jsonl, pairs.jsonl, store/ and generation.json", soft_wrap=True)


# steer reads only some of GenerateConfig's fields, and three of them mean something else for it than for generate.
STEER_HELP = {
    "max_new_tokens": {"help": "Most tokens of a completion: a beam that reaches it ends."},
    "seed": {"help": "Seed; each (prompt, step, candidate) has its own generator, so a run is reproducible."},
    "dtype": {"help": "Precision the captured states are rounded to before they are scored: float16 or float32 (nothing is stored)."},
}


@app.command()
@with_config(GenerateConfig, exclude=STEER_IGNORES, overrides=STEER_HELP, param="gen")
@with_config(SteerConfig, param="search")
def steer(
    prompts: Path = typer.Argument(..., help="Prompts JSONL: one {\"id\", \"prompt\", \"gold\"?} per line."),
    ckpt: Path = typer.Option(..., "--ckpt", help="Probe checkpoint whose Q-values score the candidates."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: trajectories.jsonl (final beams, best first) and steering.json."),
    goal_dir: Optional[Path] = typer.Option(None, "--goal-from", help="A goal folder from `probekit goal` (its name becomes a --goal choice)."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid prompt records (and report their count)."),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced) or another command's output."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    json_out: bool = json_option("Print steering.json on stdout."),
    table_format: TableFormat = format_option(),
    gen: GenerateConfig = None,
    search: SteerConfig = None,
) -> None:
    """Q-guided decoding: a step-wise beam search that keeps the candidates whose Q-value is closest to the goal."""
    from probekit.data.prompts import read_prompts
    from probekit.generate.custom_goals import read_goal
    from probekit.generate.steering import steer as run_steer
    from probekit.probe.checkpoint import load_checkpoint

    report = Report(json_out, table_format)
    gen.validate()
    search.validate()
    items, n_skipped = read_prompts(prompts, skip_invalid=skip_invalid)
    if n_skipped:
        console.print(f"[yellow]warning:[/] skipped {n_skipped} invalid prompt records (--skip-invalid)")
    checkpoint = load_checkpoint(ckpt)
    extra = read_goal(goal_dir, checkpoint) if goal_dir is not None else None
    result = run_steer(items, out, gen, search, checkpoint, extra, overwrite=overwrite, inputs=(prompts, ckpt, goal_dir),
                       progress=progress_for(progress))
    if report.json:
        report.emit(result.stats)
        return
    keys = ("n_prompts", "tokens_generated", "goal", "mean_q_best_beam", "accuracy_best_beam", "resampled_steps", "n_best_ended_without_match")
    report.show(fields_summary("probekit steer", {k: result.stats[k] for k in keys}, STEER))
    console.print(f"wrote {esc(out)}/trajectories.jsonl and steering.json", soft_wrap=True)


@app.command()
def goal(
    ckpt: Path = typer.Option(..., "--ckpt", help="Probe checkpoint whose φ encodes the goal (and whose layer is read)."),
    examples: Path = typer.Option(..., "--from", help="Trajectories JSONL of example completions that show the goal (see data/README.md)."),
    name: str = typer.Option(..., help="Name of the goal, used as `probekit steer --goal NAME`."),
    out: Path = typer.Option(..., "--out", "-o", help="Goal folder to write: goal.safetensors and goal.json."),
    model: Optional[str] = typer.Option(None, help="Where the checkpoint's frozen model is, when not where the checkpoint says. Default: the one it records."),
    template: Optional[str] = typer.Option(None, help="Prompt rendering, as for `probekit extract`. Default: the checkpoint's."),
    skip_invalid: bool = typer.Option(False, help="Skip invalid example records (and report their count)."),
    overwrite: bool = typer.Option(False, help="Write into an --out that holds other files (they are never replaced)."),
    json_out: bool = json_option("Print the goal's description (n examples, norm, cosine to the checkpoint's goals) as JSON on stdout."),
    table_format: TableFormat = format_option(),
) -> None:
    """Build a goal prototype from example completions: the mean φ of their final states, reported beside the checkpoint's goals."""
    from probekit.generate.custom_goals import GOAL_FILES, check_goal_name, describe_goal, goal_from_examples, write_goal
    from probekit.models import load_model
    from probekit.outputs import checkpoint_inputs, claim_output
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.probe.inputs import input_spec

    report = Report(json_out, table_format)
    check_goal_name(name)
    checkpoint = load_checkpoint(ckpt)
    with claim_output(out, "goal", GOAL_FILES, overwrite=overwrite, inputs=[examples, *checkpoint_inputs(checkpoint)]) as out_dir:
        # The model, dtype, template and max length the probe was trained with; an older checkpoint without them
        # (and without its training store) works as before when --model names the model.
        spec = input_spec(checkpoint) if model is None or checkpoint.config.get("inputs") else None
        loaded = load_model(model or spec.model.name, dtype=spec.compute_dtype if spec else "auto")
        prototype, info = goal_from_examples(checkpoint, examples, loaded, template or (spec.template if spec else "auto"),
                                             max_length=(spec.max_length if spec else None) or 1024, skip_invalid=skip_invalid)
        with out_dir.commit_set(last=("goal.safetensors",)):  # the two files replace the previous goal together
            write_goal(out_dir, name, prototype, info)
    described = describe_goal(checkpoint, prototype, info)
    if report.json:
        report.emit({"name": name, "out": str(out), **described})
        return
    cosines = {f"cosine to {kind} goal": c for kind, c in described.pop("cosine_to_checkpoint_goals").items()}
    report.show(fields_summary(f"probekit goal '{name}'", {**described, **cosines}, GOAL))
    console.print(f"goal '{esc(name)}' from {info['n_examples']} examples written to {esc(out)}", soft_wrap=True)
