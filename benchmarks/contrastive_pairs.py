"""`--contrastive-pairs paired` (probekit's loss) vs `kxk` (the official code's), side by side on GSM8K and HH.

The official code (vaskarnathscale/goal-conditioned-rm, openrlhf/models/loss.py,
`ContrastiveGoalLoss.forward`) averages σ of all K×K source/goal cosines and
all K×K chosen/rejected cosines over the micro-batch before one −log each, and
samples positions in its percentile convention (windows 0, as its released
scripts); probekit's `paired` loss takes K (source, goal) pairs with the source
strictly before the goal and a −log per preference pair. Both run at the same
λ, K, layer, seeds and splits, beside pure Bradley-Terry (λ = 0):

  gsm8k   GSM8K labelled model solutions (the first N test problems x 4), split by problem
  hh      Helpful-Harmless harmless-base (the first N test dialogues, chosen vs rejected)

Reported per arm and mode, on the test split (60/20/20 by group): reward AUROC
and pairwise accuracy, mean and 95 % t-interval across seeds, each seed's
group-bootstrap interval, and kxk − paired per seed (same split and
initialisation), mean and 95 % t-interval. The stores are those of
`make reproduce` (reproduce.py's data subsets and extraction settings), at one
layer; extraction and each arm's runs are cached under --work and reused
(`--arms gsm8k` fits one arm; a later run reports every cached arm).

    .venv/bin/python benchmarks/contrastive_pairs.py --data-dir ../shared/data --work /tmp/contrastive-pairs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import ArgumentParser, Clock, machine, print_stdout, results_header, table  # noqa: E402
from benchmarks.studies import METRICS, add_study_options, build_data, cached, data_folder, extract_store, fit_modes, fmt  # noqa: E402
from benchmarks.studies import summarise_modes  # noqa: E402
from probekit.io import write_json  # noqa: E402

MODES = {"bt": dict(lam=0.0), "paired": dict(contrastive_pairs="paired"), "kxk": dict(contrastive_pairs="kxk")}
DIFFERENCES = (("kxk", "paired"), ("paired", "bt"), ("kxk", "bt"))
ARMS = {"gsm8k": "solutions", "hh": "hh"}  # arm -> extraction kind (benchmarks/studies.py EXTRACT)


def verdict(summary: dict) -> str:
    """Which mode the evidence favours: kxk only where its gain over paired is positive with a 95 % interval above 0 on
    some arm and negative with an interval below 0 on none."""
    lows = [(arm, m, s["differences"]["kxk-paired"][m]) for arm, s in summary.items() for m in METRICS]
    better = [f"{arm} {m}" for arm, m, d in lows if d["lo"] is not None and d["lo"] > 0]
    worse = [f"{arm} {m}" for arm, m, d in lows if d["hi"] is not None and d["hi"] < 0]
    if better and not worse:
        return f"kxk: better than paired on {', '.join(better)}, worse nowhere"
    if worse:
        return f"paired: kxk is worse on {', '.join(worse)}" + (f" (better on {', '.join(better)})" if better else "")
    return "paired: kxk − paired has a 95 % interval containing 0 on every arm and metric (no evidence to change the default)"


def add_cli_args(ap: ArgumentParser) -> None:
    add_study_options(ap, "contrastive_pairs", "float32", "dtype the model computes in (as make reproduce)")
    ap.add_argument("--layer", type=int, default=16, help="the layer of every fit (reproduce.py's fixed layer)")
    ap.add_argument("--lam", type=float, default=0.5, help="λ of the contrastive runs (the official --contrastive_loss_beta 0.5)")
    ap.add_argument("--gsm8k-problems", type=int, default=700)
    ap.add_argument("--hh-dialogues", type=int, default=400)
    ap.add_argument("--corrupt-problems", type=int, default=400, help=argparse.SUPPRESS)  # build_data also writes these (no extraction)
    ap.add_argument("--arms", default=",".join(ARMS), help="arms to run (each arm's runs are cached under --work; the report has "
                                                          "every arm cached for these settings)")
    ap.add_check(lambda args: f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}"
                 if (unknown := set(args.arms.split(",")) - set(ARMS)) else None)


def main(args) -> None:
    args.seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work.resolve()
    started = Clock().start()
    from probekit.models import load_model

    files = build_data(data_folder(args.data_dir), work, args)
    stores = {name: work / "stores" / f"{name}-{args.model_tag}" for name in ARMS}
    tag = f"{args.model_tag}-l{args.layer}-lam{args.lam:g}-s{'_'.join(map(str, args.seeds))}-e{args.epochs}-b{args.n_boot}"
    results = {name: work / "results" / f"contrastive_pairs-{name}-{tag}.json" for name in ARMS}
    loaded = load_model(args.model, dtype=args.model_dtype)
    for name in args.arms.split(","):
        extract_store(files[name], stores[name], ARMS[name], str(args.layer), args, loaded)
    extracted = started.elapsed
    import torch

    from probekit.store import Store

    torch.set_num_threads(args.fit_threads)
    runs = {name: cached(results[name], lambda name=name: fit_modes(stores[name], work / "runs" / name, args, MODES))
            for name in ARMS if name in args.arms.split(",") or results[name].exists()}
    summary = {name: summarise_modes(r, MODES, DIFFERENCES) for name, r in runs.items()}
    report = {
        **results_header("contrastive_pairs"),
        "machine": machine(),
        "model": args.model,
        "settings": {"layer": args.layer, "lam": args.lam, "K": 8, "seeds": args.seeds, "epochs": args.epochs, "n_boot": args.n_boot,
                     "split": "test (60/20/20 by group)", "kxk_windows": "source 0, goal 0 (the released scripts)",
                     "data": {"gsm8k_problems": args.gsm8k_problems, "hh_dialogues": args.hh_dialogues}},
        "summary": summary,
        "verdict": verdict(summary),
        "runs": runs,
        "seconds": {"this_invocation": round(started.elapsed, 1), "of_which_extraction_or_cache": round(extracted, 1),
                    "fits_per_arm": {name: round(sum(r["seconds"] for r in rs), 1) for name, rs in runs.items()},
                    "extraction_per_store": {name: (Store(stores[name]).manifest.get("stats") or {}).get("seconds") for name in runs}},
    }
    write_json(args.out, report)
    rows = [[arm, mode, *(fmt(s["modes"][mode][m]) for m in METRICS)] for arm, s in summary.items() for mode in MODES]
    rows += [[arm, d, *(fmt(s["differences"][d][m]) for m in METRICS)] for arm, s in summary.items() for d in s["differences"]]
    print_stdout(table(f"test split, layer {args.layer}, {len(args.seeds)} seeds", ["arm", "mode", "AUROC", "pairwise acc"], rows))
    print_stdout(f"verdict: {report['verdict']}\nwritten to {args.out}")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
