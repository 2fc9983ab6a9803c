"""What grows with the store: numpy's traced peak (tracemalloc) of scoring, evaluation or a fit on a planted store.

    .venv/bin/python benchmarks/adhoc/scale_memory.py ROWS STEP [WORK]
      ROWS e.g. 1e6 or 3e6; STEP score, eval or fit; WORK default /tmp/probekit-scale-memory (store kept there)

Run at two sizes; (peak difference) / (row difference) is the bytes a row that step holds. Not recorded in a JSON.
"""

import shutil
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.run_scale import LAYER, fit_config, write_planted_store  # noqa: E402
from probekit.pipeline import fit_probe  # noqa: E402
from probekit.probe.checkpoint import load_checkpoint  # noqa: E402
from probekit.store import Store  # noqa: E402


class Settings:  # what fit_config reads from run_scale's arguments
    memory_budget_mb = 256.0
    device = "cpu"
    n_boot = 50


n, step = int(float(sys.argv[1])), sys.argv[2]
work = Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/probekit-scale-memory") / f"{n}"
if not (work / "store" / "manifest.json").exists():
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_planted_store(work / "store", n)
if not (work / "fit").exists():
    fit_probe(Store(work / "store"), work / "fit", fit_config(Settings, 1, lam=0.5, n_boot=50), overwrite=True)
ckpt = load_checkpoint(work / "fit")

tracemalloc.start(8)
if step == "score":
    from probekit.filter.early_stop import apply_threshold, min_signal
    from probekit.probe.scoring import Scorer, score_store

    store = Store(work / "store")
    scores = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), LAYER)
    mins = min_signal(scores.offsets, scores.positions, scores.q["mean"], 5)
    apply_threshold(scores.offsets, scores.positions, scores.q["mean"], store.meta.completion_tokens, float(np.median(mins)), 5)
elif step == "eval":
    from probekit.eval.evaluate import evaluate_checkpoint

    evaluate_checkpoint(ckpt, Store(work / "store"), "valid", n_boot=50, memory_budget_mb=Settings.memory_budget_mb)
elif step == "fit":
    fit_probe(Store(work / "store"), work / "fit2", fit_config(Settings, 1, lam=0.5, n_boot=50), overwrite=True)
else:
    raise SystemExit("STEP must be score, eval or fit")
current, peak = tracemalloc.get_traced_memory()
print(f"{step} at {n} rows: traced peak {peak / 2**20:.1f} MB, still held {current / 2**20:.1f} MB")
for stat in tracemalloc.take_snapshot().statistics("lineno")[:5]:
    print(f"  {stat.size / 2**20:.1f} MB  {stat.traceback[0]}")
