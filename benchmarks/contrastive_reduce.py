"""`--contrastive-reduce example` (the official loss at its released micro-batch of 1) beside `batch` (kxk's default).

The official code (vaskarnathscale/goal-conditioned-rm) trains with `--micro_train_batch_size 1`
(examples/run_scripts/train_contrastive_rm.sh), so each −log of `ContrastiveGoalLoss.forward` is taken on one
preference pair and the gradients are accumulated over the batch; probekit's `kxk` takes one −log of the batch's
mean by default. On one store already extracted (any with preference pairs), per seed and on the same split and
initialisation: pure Bradley-Terry (λ = 0), `paired`, `kxk` (batch), `kxk` with `--contrastive-reduce example`, and
the latter at the official `--sim_samples 16 --unsim_samples 16`; test-split reward AUROC and pairwise accuracy, mean
and 95 % t-interval across seeds, differences paired by seed (`studies.fit_modes`, as contrastive_pairs.py).

    .venv/bin/python benchmarks/contrastive_reduce.py --store STORE --layer 15 --seeds 0,1,2,3,4 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    ArgumentParser, Clock, add_threads_option, apply_threads, machine, print_stdout, results_header, table,
)
from benchmarks.studies import METRICS, fit_modes, fmt, summarise_modes  # noqa: E402
from probekit.io import write_json  # noqa: E402

KXK = dict(contrastive_pairs="kxk")
MODES = {"bt": dict(lam=0.0), "paired": dict(contrastive_pairs="paired"), "kxk_batch": KXK,
         "kxk_example": {**KXK, "contrastive_reduce": "example"},
         "kxk_example_16": {**KXK, "contrastive_reduce": "example", "sim_samples": 16, "unsim_samples": 16}}
DIFFERENCES = (("kxk_example", "kxk_batch"), ("kxk_example", "paired"), ("kxk_example_16", "kxk_example"), ("kxk_example", "bt"))


def add_cli_args(ap: ArgumentParser) -> None:
    ap.add_argument("--store", type=Path, required=True, help="an extracted store with preference pairs")
    ap.add_argument("--layer", type=int, required=True, help="the layer of every fit")
    ap.add_argument("--lam", type=float, default=0.5, help="λ of the contrastive runs (the official --contrastive_loss_beta 0.5)")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of each run's own test interval")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "contrastive-reduce", help="folder for the fitted probes")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "contrastive_reduce.json")
    add_threads_option(ap)


def main(args) -> None:
    threads = apply_threads(args.threads)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    started = Clock().start()
    load_at_start = machine("load_average_at_start=load_average")
    runs = fit_modes(args.store, args.work, args, MODES)
    summary = summarise_modes(runs, MODES, DIFFERENCES)
    report = {
        **results_header("contrastive_reduce"), "machine": machine(), **load_at_start, "torch_threads": threads,
        "store": str(args.store),
        "settings": {"layer": args.layer, "lam": args.lam, "K": 8, "seeds": args.seeds, "epochs": args.epochs, "n_boot": args.n_boot,
                     "split": "test (60/20/20 by group)", "kxk_windows": "source 0, goal 0 (the released scripts)", "batch_size": 32,
                     "modes": MODES},
        "summary": summary, "runs": runs, "seconds": round(started.elapsed, 1),
    }
    write_json(args.out, report)
    rows = [[mode, *(fmt(summary["modes"][mode][m]) for m in METRICS)] for mode in MODES]
    rows += [[d, *(fmt(summary["differences"][d][m]) for m in METRICS)] for d in summary["differences"]]
    print_stdout(table(f"test split, layer {args.layer}, {len(args.seeds)} seeds", ["mode", "AUROC", "pairwise acc"], rows))
    print_stdout(f"written to {args.out}")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
