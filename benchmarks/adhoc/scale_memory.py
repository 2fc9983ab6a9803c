"""What grows with the store: numpy's traced peak (tracemalloc) of scoring, evaluation or a fit on a planted store.

    .venv/bin/python benchmarks/adhoc/scale_memory.py ROWS STEP [WORK]
      ROWS e.g. 1e6 or 3e6; STEP score, eval or fit; WORK default /tmp/probekit-scale-memory (store kept there)

Run at two sizes; (peak difference) / (row difference) is the bytes a row that step holds. Not recorded in a JSON.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import TracedMemory  # noqa: E402
from benchmarks.planted import LAYER, fit_config, write_planted_store  # noqa: E402

STEPS = ("score", "eval", "fit")
N_BOOT = 50


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("rows", type=lambda x: int(float(x)), metavar="ROWS", help="stored rows of the planted store, e.g. 1e6 or 3e6")
    ap.add_argument("step", choices=STEPS, metavar="STEP", help=f"what to trace: {', '.join(STEPS)}")
    ap.add_argument("work", nargs="?", type=Path, default=Path("/tmp/probekit-scale-memory"), metavar="WORK",
                    help="where the store and its probe are kept (default /tmp/probekit-scale-memory)")
    # what fit_config reads from run_scale's arguments
    ap.set_defaults(memory_budget_mb=256.0, device="cpu", n_boot=N_BOOT)


def main(args) -> None:
    import numpy as np

    from probekit.pipeline import fit_probe
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    n, step = args.rows, args.step
    work = args.work / f"{n}"
    if not (work / "store" / "manifest.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        write_planted_store(work / "store", n)
    if not (work / "fit").exists():
        fit_probe(Store(work / "store"), work / "fit", fit_config(args, 1, lam=0.5, n_boot=N_BOOT), overwrite=True)
    ckpt = load_checkpoint(work / "fit")

    with TracedMemory(frames=8) as traced:
        if step == "score":
            from probekit.filter.early_stop import apply_threshold, min_signal
            from probekit.probe.scoring import Scorer, score_store

            store = Store(work / "store")
            scores = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), LAYER)
            mins = min_signal(scores.offsets, scores.positions, scores.q["mean"], 5)
            apply_threshold(scores.offsets, scores.positions, scores.q["mean"], store.meta.completion_tokens, float(np.median(mins)), 5)
        elif step == "eval":
            from probekit.eval.evaluate import evaluate_checkpoint

            evaluate_checkpoint(ckpt, Store(work / "store"), "valid", n_boot=N_BOOT, memory_budget_mb=args.memory_budget_mb)
        elif step == "fit":
            fit_probe(Store(work / "store"), work / "fit2", fit_config(args, 1, lam=0.5, n_boot=N_BOOT), overwrite=True)
    print(f"{step} at {n} rows: traced peak {traced.peak_mb:.1f} MB, still held {traced.current_mb:.1f} MB")
    for size_mb, where in traced.top(5):
        print(f"  {size_mb:.1f} MB  {where}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
