"""`make ood`: probes fitted on GSM8K, scored on the greedy solutions of the paper's out-of-distribution sets.

The paper (and `examples/eval_rm.py --benchmarks gsm8k math gsm-hard mawps asdiv algebra222 svamp` of the
official code) scores each set's greedy model solutions with a reward model trained on GSM8K and reports the
AUROC of correct vs incorrect. Here, on the bundled SmolLM2-135M:

  data      GSM8K labelled solutions (first --gsm8k-problems problems, as reproduce.py builds them), and
            --problems problems of each OOD set (a seeded sample; probekit.data.ood adapts each set's files)
  probes    λ = 0 and λ = --lam at --layer, --seeds seeds, fitted on GSM8K exactly as reproduce.py fits them
  generate  one greedy solution per OOD problem (`probekit generate`: zero-shot, the chat template extract used,
            graded by the numeric gold answer with the gsm8k parser), its states stored at --layer
  eval      every probe on every set's solutions (split all): reward and Q AUROC with a 95 % bootstrap interval
            over problems, their length-controlled AUROCs (within length strata / log length regressed out), and
            the trivial baselines fitted on GSM8K (completion length, random, logistic on the last/mean state)
Numbers: per set, the mean over seeds and a 95 % t-interval across seeds; each seed's bootstrap interval over
problems is in the JSON. A set whose greedy solutions are all wrong (or all right) has no AUROC: it is reported
with its accuracy and n_correct, not dropped.

    python benchmarks/ood.py [--ood-data-dir DIR] [--problems 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (ArgumentParser, Clock, add_threads_option, apply_threads, console, machine,  # noqa: E402
                                machine_line, results_header, table as rich_table)
from benchmarks.studies import (add_study_options, build_data, cached, data_folder, extract_store, fmt, mean_ci,  # noqa: E402
                                probe_summary, sweep)
from probekit.io import write_json  # noqa: E402

SETS = ("gsm-hard", "svamp", "asdiv", "mawps", "algebra222")
BASELINES = ("length", "random", "logistic_last", "logistic_mean")


def ood_folder(arg: str | None) -> Path:
    """The folder holding the OOD sets (fetched into probekit's cache when not given); one line and exit 2 on failure."""
    from probekit.data.fetch import resolve_data_dir
    from probekit.errors import ProbekitError

    try:
        return resolve_data_dir(arg, need=SETS).resolve()
    except ProbekitError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def sample_problems(name: str, data_dir: Path, n: int, seed: int) -> tuple[list, dict]:
    """A seeded sample of `n` problems of set `name` (all when it has fewer), in the set's order, and its counts."""
    from probekit.data.ood import ood_problems

    problems = ood_problems(name, data_dir)
    keep = np.sort(np.random.default_rng(seed).choice(len(problems.prompts), min(n, len(problems.prompts)), replace=False))
    return [problems.prompts[i] for i in keep], {**problems.to_json(), "sampled": int(len(keep))}


def generate_set(prompts: list, out: Path, args, loaded) -> Path:
    """Greedy solutions of `prompts`, graded, with their states at --layer; the generated store's path."""
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate

    cfg = GenerateConfig(model=args.model, samples=1, max_new_tokens=args.max_new_tokens, temperature=0.0, seed=0, layers=str(args.layer),
                         answer="gsm8k", batch_size=32, model_dtype=args.model_dtype, dtype=args.store_dtype)
    store = out / "store"
    if not (out / "generation.json").exists():  # generate resumes an interrupted run; a finished one is kept
        generate(prompts, out, cfg, loaded=loaded, overwrite=True)
    return store


def solutions_summary(gen_dir: Path) -> dict:
    """Accuracy of the greedy solutions (95 % bootstrap interval over problems), answer-less share, mean length."""
    from benchmarks.generation_task import boot_ci
    from probekit.data.schema import read_trajectories

    trajs = read_trajectories(gen_dir / "trajectories.jsonl")[0]
    labels = np.array([t.label for t in trajs], dtype=float)
    return {"n": len(trajs), "n_correct": int(labels.sum()), "accuracy": boot_ci(labels),
            "no_answer_share": float(np.mean([t.answer is None for t in trajs])),
            "mean_tokens": float(np.mean([t.meta["tokens"] for t in trajs])),
            "example": trajs[0].completion}


def evaluate_set(gsm8k_result: dict, store_path: Path, layer: int) -> dict:
    """Every GSM8K probe at `layer` on one set's solutions: the probe per λ (across seeds) and the baselines (across seeds)."""
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    store = Store(store_path)
    probes: dict[float, list[dict]] = {}
    baselines: dict[str, list[float | None]] = {}
    per_seed = []
    for r in gsm8k_result["runs"]:
        if r["layer"] != layer or r["goal"] != "mean":
            continue
        m = evaluate_checkpoint(load_checkpoint(r["checkpoint"]), store, "all", n_boot=500, seed=r["seed"])
        probes.setdefault(r["lam"], []).append(m["probe"])
        per_seed.append({"lam": r["lam"], "seed": r["seed"], "auroc": m["probe"]["auroc"], "q_auroc_mean": m["probe"]["q_auroc_mean"]})
        if r["lam"] == 0:  # the baselines depend on the seed's GSM8K split, not on λ: once per seed
            for name in BASELINES:
                b = (m.get("baselines") or {}).get(name) or {}
                baselines.setdefault(name, []).append((b.get("auroc") or {}).get("value"))
    return {"probes": [{"lam": lam, **probe_summary(ps)} for lam, ps in sorted(probes.items())],
            "baselines": {name: mean_ci(v) for name, v in baselines.items()}, "per_seed": per_seed}


def add_cli_args(ap: ArgumentParser) -> None:
    add_study_options(ap, "ood", "auto", "dtype the model computes in (auto: bfloat16 where it measures faster; the GSM8K store and the "
                                         "generated ones are computed by the same loaded model)")
    add_threads_option(ap, default=1)
    ap.add_argument("--ood-data-dir", default=None,
                    help="folder with the OOD sets in the `probekit data fetch` layout (gsm_hard/, svamp/, asdiv/, mawps/, algebra222/); "
                         "default: probekit's cache, with them fetched (verified by sha256)")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--problems", type=int, default=60, help="problems sampled per OOD set (seed 0)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--layer", type=int, default=16, help="layer of the probes (reproduce.py's filter/transfer layer)")
    ap.add_argument("--lam", type=float, default=0.5, help="λ of the goal-conditioned probe")
    ap.add_argument("--gsm8k-problems", type=int, default=200, help="GSM8K problems (4 labelled solutions each) the probes are fitted on")
    # build_data makes reproduce.py's other data sets too (cheap, no extraction): their sizes as reproduce.py's defaults
    ap.add_argument("--corrupt-problems", type=int, default=400, help=argparse.SUPPRESS)
    ap.add_argument("--hh-dialogues", type=int, default=400, help=argparse.SUPPRESS)
    ap.add_check(lambda args: f"unknown sets {sorted(unknown)}; choose from {', '.join(SETS)}"
                 if (unknown := set(args.sets.split(",")) - set(SETS)) else None)


def main(args) -> None:
    args.seeds = [int(s) for s in args.seeds.split(",")]
    sets = args.sets.split(",")
    work = args.work.resolve()
    started = Clock().start()
    threads = apply_threads(args.threads)  # before the model runs: on a shared CPU, OpenMP spin-waits made decoding ~10x slower

    from probekit.models import load_model

    files = build_data(data_folder(args.data_dir), work, args)
    ood_dir = ood_folder(args.ood_data_dir)
    problems = {name: sample_problems(name, ood_dir, args.problems, seed=0) for name in sets}
    loaded = load_model(args.model, dtype=args.model_dtype)
    gsm8k_store = extract_store(files["gsm8k"], work / "stores" / f"gsm8k-{args.gsm8k_problems}-L{args.layer}-{args.model_tag}", "solutions",
                                str(args.layer), args, loaded)
    generated = {}
    for name in sets:
        console.print(f"[bold]generate[/] {name}: {len(problems[name][0])} greedy solutions")
        generated[name] = generate_set(problems[name][0], work / "generated" / f"{name}-{args.problems}-{args.model_tag}", args, loaded)
    import torch

    torch.set_num_threads(args.fit_threads)  # as reproduce.py: tiny fits are slower with more threads on a shared machine
    tag = f"{args.model_tag}-g{args.gsm8k_problems}-L{args.layer}-s{'_'.join(map(str, args.seeds))}-e{args.epochs}"
    g = cached(work / "results" / tag / "gsm8k_sweep.json", lambda: sweep(gsm8k_store, work / "sweeps" / f"gsm8k-{tag}", args, layers=[args.layer]))
    in_domain = [{"lam": lam, **probe_summary([m for m in _test_metrics(g, args.layer, lam)])} for lam in sorted({r["lam"] for r in g["runs"]})]
    report = {
        **results_header(exact_command=False, day_only=True, machine=machine_line()), **machine("commit=git_commit"),
        "model": args.model, "model_dtype": str(loaded.dtype).removeprefix("torch."), "torch_threads": threads, "layer": args.layer, "lam": args.lam, "seeds": args.seeds,
        "gsm8k_problems": args.gsm8k_problems, "problems_per_set": args.problems, "max_new_tokens": args.max_new_tokens,
        "generation": "greedy, 1 solution per problem, zero-shot, chat template, graded by the numeric gold answer (gsm8k parser; "
                      "numbers within a relative 1e-4 unless both are integers, as NeMo-Skills grades)",
        "gsm8k_test": in_domain,
        "sets": {},
    }
    for name in sets:
        gen_dir = generated[name].parent
        report["sets"][name] = {"data": problems[name][1], "solutions": solutions_summary(gen_dir),
                                **cached(work / "results" / tag / f"ood-{name}-{args.problems}.json",
                                         lambda name=name: evaluate_set(g, generated[name], args.layer))}
    report["seconds"] = round(started.elapsed, 1)
    write_json(args.out, report)
    print_report(report)


def _test_metrics(result: dict, layer: int, lam: float) -> list[dict]:
    """The GSM8K test-split probe metrics of each seed's run (the sweep's own evaluation), for the in-domain row."""
    from probekit.io import read_json

    return [read_json(Path(r["checkpoint"]) / "metrics.json")["test"]["probe"]
            for r in result["runs"] if r["layer"] == layer and r["lam"] == lam and r["goal"] == "mean"]


def print_report(report: dict) -> None:
    rows = [["gsm8k (test split)", "-", "-", f"{r['lam']:g}", fmt(r["auroc"]), f"{fmt(r['auroc_strat'])} / {fmt(r['auroc_resid'])}",
             fmt(r["q_auroc"])] for r in report["gsm8k_test"]]
    for name, s in report["sets"].items():
        sol = s["solutions"]
        acc = f"{sol['accuracy']['mean']:.3f} [{sol['accuracy']['ci95'][0]:.3f}, {sol['accuracy']['ci95'][1]:.3f}]"
        for p in s["probes"]:
            rows.append([name, f"{sol['n_correct']}/{sol['n']}", acc, f"{p['lam']:g}", fmt(p["auroc"]),
                         f"{fmt(p['auroc_strat'])} / {fmt(p['auroc_resid'])}", fmt(p["q_auroc"])])
    console.print(rich_table("Probes fitted on GSM8K, on greedy solutions of each set (mean [95% CI over seeds])",
                             ["set", "correct", "greedy accuracy", "λ", "reward AUROC", "length-controlled (strat / resid)", "Q AUROC"], rows))
    rows = [[name, *(fmt(s["baselines"].get(b)) for b in BASELINES)] for name, s in report["sets"].items()]
    console.print(rich_table("Trivial baselines fitted on GSM8K, AUROC on each set (mean [95% CI over seeds])", ["set", *BASELINES], rows))


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
