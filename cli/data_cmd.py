"""`probekit data ...`: write and check trajectory/pair JSONL files.

Every writer claims `--out` first (before reading its input: a refused,
read-only or busy folder fails at once) and holds it until it is done, puts
`trajectories.jsonl` and `pairs.jsonl` there as one set (both written under
temporary names, then renamed together: `probekit.outputs.OutputDir.commit_set`)
and prints one summary line, or the summary as JSON with `--json`. The adapters live in `probekit.data.*`; this module only
wires them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer

from probekit.data.fetch import DATASETS, MIRROR_ENV
from probekit.data.samples import SampleFields
from probekit_cli.app import data_app
from probekit_cli.common import console, esc
from probekit_cli.options import with_config
from probekit_cli.summary import Report, Summary, TableFormat, fields_summary, format_option, json_option

if TYPE_CHECKING:
    from probekit.data.schema import Pair, Trajectory

    Converted = tuple[list[Trajectory], list[Pair] | None, Counter | None]  # trajectories, pairs (None: derive), skipped

OUTPUTS = ("trajectories.jsonl", "pairs.jsonl")
OUT_HELP = (
    "Output folder for trajectories.jsonl and pairs.jsonl: a new or empty folder, or an earlier output of "
    "`probekit data` (whose two files are replaced)."
)
OVERWRITE_HELP = (
    "Write into a folder that holds other files too (they are never replaced; a file of yours named "
    "trajectories.jsonl or pairs.jsonl is always refused)."
)
JSON_HELP = "Print the summary as JSON on stdout instead of a line on stderr."


def summarize(trajectories: list[Trajectory], pairs: list[Pair], skipped: Counter | None = None) -> dict:
    """Counts for the one-line report: trajectories, groups, pairs, labels and skipped records by reason."""
    labels = Counter("none" if t.label is None else str(t.label) for t in trajectories)
    skipped = skipped or Counter()
    return {
        "trajectories": len(trajectories),
        "groups": len({t.group for t in trajectories}),
        "pairs": len(pairs),
        "labels": dict(sorted(labels.items())),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": dict(skipped),
    }


def report(title: str, summary: dict, output: Report) -> None:
    """The summary as one line on stderr, or as JSON, or its fields as a markdown / csv table on stdout."""
    if output.json:
        output.emit(summary)
        return
    if not output.text:
        output.show(fields_summary(f"probekit data {title}", {k: v for k, v in summary.items() if k != "skipped_by_reason"}))
        return
    labels = ", ".join(f"label {k}: {v}" for k, v in summary["labels"].items())
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["skipped_by_reason"].items())
    line = (
        f"[bold]{esc(title)}[/]: {summary['trajectories']} trajectories in {summary['groups']} groups, "
        f"{summary['pairs']} pairs ({esc(labels)}); skipped {summary['skipped']}" + (f" ({esc(reasons)})" if reasons else "")
    )
    if "out" in summary:
        line += f" -> {esc(summary['out'])}"
    console.print(line, highlight=False, soft_wrap=True)


def convert(title: str, out: Path, overwrite: bool, source: Path | None, build: Callable[[], Converted], output: Report) -> None:
    """Every data writer's one path: claim `out` before any work, run the adapter, write trajectories.jsonl and
    pairs.jsonl as one set (pairs derived within groups when the adapter gives none), and report. The input file
    may not live inside `out`."""
    from probekit.data.schema import derive_pairs, write_pairs, write_trajectories
    from probekit.outputs import claim_output

    with claim_output(out, "data", OUTPUTS, overwrite=overwrite, inputs=[source]) as target:
        trajectories, pairs, skipped = build()
        if pairs is None:
            pairs = derive_pairs(trajectories)
        traj_name, pairs_name = OUTPUTS
        with target.commit_set():
            write_trajectories(target.file(traj_name), trajectories)
            write_pairs(target.file(pairs_name), pairs)
    report(title, {**summarize(trajectories, pairs, skipped), "out": str(target.path)}, output)


def counted(adapter: Callable[..., tuple[list[Trajectory], list[Pair]]], *args) -> Callable[[], Converted]:
    """An adapter that counts what it skips in a Counter passed last, as a `convert` build."""
    def build() -> Converted:
        skipped: Counter = Counter()
        trajectories, pairs = adapter(*args, skipped)
        return trajectories, pairs, skipped
    return build


@data_app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    n_problems: int = typer.Option(200, min=1, help="Number of word problems (groups)."),
    solutions: int = typer.Option(4, min=1, help="Sampled solutions per problem."),
    p_correct: float = typer.Option(0.5, min=0.0, max=1.0, help="Probability that a solution is correct; otherwise one step is wrong and carried forward."),
    min_steps: int = typer.Option(2, min=1, help="Fewest arithmetic steps per problem."),
    max_steps: int = typer.Option(4, min=1, help="Most arithmetic steps per problem."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same files."),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """Generate seeded synthetic multi-step arithmetic problems with labelled solutions and known error positions."""
    from probekit.data.synth import synth_problems
    from probekit.errors import ProbekitError

    output = Report(json_out, table_format)
    if min_steps > max_steps:
        raise ProbekitError(f"--min-steps {min_steps} is larger than --max-steps {max_steps}")
    convert("synth", out, overwrite, None, lambda: (synth_problems(n_problems, solutions, p_correct, min_steps, max_steps, seed), None, None), output)


@data_app.command("synth-prompts")
def synth_prompts(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for prompts.jsonl (input of `probekit generate` and `probekit steer`)."),
    n_problems: int = typer.Option(100, min=1, help="Number of problems (one prompt each)."),
    min_steps: int = typer.Option(1, min=1, help="Fewest arithmetic steps per problem."),
    max_steps: int = typer.Option(2, min=1, help="Most arithmetic steps per problem."),
    shots: int = typer.Option(2, min=0, help="Worked examples shown before each problem (0 = zero-shot)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same file."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
) -> None:
    """Synthetic word problems as prompts with gold answers, for generating samples with the frozen model."""
    from probekit.data.prompts import write_prompts
    from probekit.data.synth import synth_prompts as build
    from probekit.errors import ProbekitError
    from probekit.outputs import claim_output

    if min_steps > max_steps:
        raise ProbekitError(f"--min-steps {min_steps} is larger than --max-steps {max_steps}")
    with claim_output(out, "data", ("prompts.jsonl",), overwrite=overwrite) as target, target.commit_set():
        prompts = build(n_problems, min_steps, max_steps, shots, seed)
        write_prompts(target.file("prompts.jsonl"), prompts)
    console.print(f"[bold]synth-prompts[/]: {len(prompts)} prompts ({shots}-shot, {min_steps}-{max_steps} steps) -> {esc(out / 'prompts.jsonl')}", highlight=False, soft_wrap=True)


@data_app.command()
def gsm8k(
    solutions: Path = typer.Option(..., help="gsm8k/example_model_solutions.jsonl (4 labelled model solutions per test problem; `probekit data fetch gsm8k-model-solutions` puts it in probekit's cache)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    strip_calculator: bool = typer.Option(False, help="Remove the <<expr=result>> calculator annotations from the solutions (gold/corrupted data never shows them)."),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """Labelled GSM8K model solutions: one group per test problem, pairs = every (correct, incorrect) combination."""
    from probekit.data.gsm8k import labelled_solutions

    convert("gsm8k", out, overwrite, solutions, lambda: (labelled_solutions(solutions, strip_calculator), None, None), Report(json_out, table_format))


@data_app.command("gsm8k-gold")
def gsm8k_gold(
    source: Path = typer.Option(..., "--input", "-i", help="gsm8k/train.jsonl or gsm8k/test.jsonl ({question, answer} with '#### n'; `probekit data fetch gsm8k` puts both in probekit's cache)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """GSM8K gold solutions as label-1 trajectories, rewritten as 'A: n' solutions without calculator annotations."""
    from probekit.data.gsm8k import gold_solutions

    convert("gsm8k-gold", out, overwrite, source, lambda: (gold_solutions(source), None, None), Report(json_out, table_format))


@data_app.command("gsm8k-corrupt")
def gsm8k_corrupt(
    source: Path = typer.Option(..., "--input", "-i", help="gsm8k/train.jsonl (gold answers with <<expr=result>> annotations; `probekit data fetch gsm8k`)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    per_problem: int = typer.Option(1, min=1, help="Corrupted copies per problem (fewer when fewer distinct ones exist)."),
    seed: int = typer.Option(0, help="Random seed for the choice of step and wrong value."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N problems."),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """Gold solutions paired with copies that have one arithmetic result changed and carried forward (known error position)."""
    from probekit.data.corrupt import corrupt_gold

    convert("gsm8k-corrupt", out, overwrite, source, counted(corrupt_gold, source, per_problem, seed, limit), Report(json_out, table_format))


@data_app.command("math")
def math_gold(
    source: Path = typer.Option(..., "--input", "-i", help="math/test.jsonl ({problem, solution} per line, the answer in \\boxed{}; `probekit data fetch math` puts PRM800K's 500 MATH test problems in probekit's cache)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """MATH problems with their gold solutions as label-1 trajectories; the answer is the solution's \\boxed{} content."""
    from probekit.data.competition_math import gold_solutions

    convert("math", out, overwrite, source, lambda: (gold_solutions(source), None, None), Report(json_out, table_format))


@data_app.command()
def hh(
    source: Path = typer.Option(..., "--input", "-i", help="hh_rlhf/harmless-base/test.jsonl.gz ({chosen, rejected} dialogues; .gz or plain; `probekit data fetch hh-rlhf-harmless`, or hh-rlhf-helpful for helpful-base)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """HH-RLHF preference pairs: prompt = shared dialogue, completions = the chosen and rejected last Assistant turns."""
    from probekit.data.hh import hh_pairs

    convert("hh", out, overwrite, source, counted(hh_pairs, source), Report(json_out, table_format))


@data_app.command()
def preferences(
    source: Path = typer.Argument(..., help="TRL preference JSONL: {prompt, chosen, rejected} per line, as strings or message lists; the prompt may be implicit (the shared start of chosen and rejected)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """TRL's preference format (DPO / reward-model data) as chosen and rejected trajectories with one pair each (margin kept)."""
    from probekit.data.preferences import preference_pairs

    convert("preferences", out, overwrite, source, counted(preference_pairs, source), Report(json_out, table_format))


@data_app.command()
@with_config(SampleFields, param="fields")
def samples(
    source: Path = typer.Argument(..., help="Samples JSONL from an outside generator: one record per prompt with a list of completions."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    skip_invalid: bool = typer.Option(False, help="Count and skip invalid records instead of stopping at the first."),
    overwrite: bool = typer.Option(False, help=OVERWRITE_HELP),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
    fields: SampleFields = None,
) -> None:
    """Bring your own samples: one record per prompt with N completions (vLLM-style) as trajectories and pairs."""
    from probekit.data.samples import read_samples

    def build() -> Converted:
        trajectories, n_skipped = read_samples(source, fields, skip_invalid=skip_invalid)
        return trajectories, None, Counter({"invalid record": n_skipped}) if n_skipped else None

    convert("samples", out, overwrite, source, build, Report(json_out, table_format))


@data_app.command()
def check(
    path: Path = typer.Argument(..., help="Trajectories JSONL file to validate."),
    pairs: Optional[Path] = typer.Option(None, help="Pairs JSONL to validate against it. Default: derive every (label 1, label 0) combination within a group."),
    skip_invalid: bool = typer.Option(False, help="Count and skip invalid trajectory records instead of stopping at the first."),
    json_out: bool = json_option(JSON_HELP),
    table_format: TableFormat = format_option(),
) -> None:
    """Validate a trajectories file (and optionally its pairs) and print their counts."""
    from probekit.data.schema import derive_pairs, read_pairs, read_trajectories

    output = Report(json_out, table_format)
    trajectories, n_skipped = read_trajectories(path, skip_invalid=skip_invalid)
    pair_list = read_pairs(pairs, trajectories) if pairs is not None else derive_pairs(trajectories)
    skipped = Counter({"invalid record": n_skipped}) if n_skipped else None
    report(f"check {path}", summarize(trajectories, pair_list, skipped), output)


@data_app.command()
def fetch(
    names: list[str] = typer.Argument(..., help=f"Data sets to fetch: {', '.join(DATASETS)} (math: the 500 MATH test problems "
                                                 "held out by PRM800K; `probekit data math` reads them)."),
    mirror: Optional[str] = typer.Option(
        None, help=f"Base URL of a copy laid out like a data folder (http(s):// or file://), instead of each file's "
                   f"pinned public URL. Default: ${MIRROR_ENV} when set."),
    progress: bool = typer.Option(True, help="Show a progress bar per download."),
    json_out: bool = json_option("Print the data folder and every file (path, url, sha256, bytes, status) as JSON on stdout."),
    table_format: TableFormat = format_option(),
) -> None:
    """Download public data sets from their pinned sources into the probekit cache, verified by sha256; prints the folder to pass as --data-dir."""
    from probekit.data.fetch import data_cache_dir, fetch_datasets
    from probekit_cli.progress import progress_for

    output = Report(json_out, table_format)
    root = data_cache_dir()
    done = fetch_datasets(names, root, mirror, progress_for(progress))
    if output.json:
        output.emit({"data_dir": str(root), "datasets": list(dict.fromkeys(names)), "files": [f.to_json() for f in done]})
        return
    rows = [[str(f.path.relative_to(root)), f.dataset, f.bytes, f.status] for f in done]
    output.show(Summary("probekit data fetch", ["file", "data set", "bytes", "status"], rows))
    console.print(f"[bold]data fetch[/]: {len(done)} files verified by sha256 in {esc(root)} (pass it as --data-dir)", highlight=False, soft_wrap=True)
