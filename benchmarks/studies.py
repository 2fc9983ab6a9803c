"""What the real-data studies share (reproduce.py, ablations.py, bf16_agreement.py, ood.py): their options, data, stores and intervals.

* options: `add_study_options` (data, cache, output, model, seeds, fits), `add_data_dir_option`;
* data: `data_folder` (the folder --data-dir means, fetched where missing), `build_data` (GSM8K labelled solutions,
  corrupted-gold pairs, HH-RLHF pairs, as subsets of whole groups: benchmarks/subsets.py), `extract_store`;
* probes: `sweep` (λ = 0 and λ > 0 over layers x seeds, the fits of reproduce.py and ood.py);
* results: `cached` (a stage's JSON, computed once), `evaluate_on` (a probe on another store's test split), `probe_summary`,
  `mean_ci` (mean and 95 % t-interval across seeds) and `fmt`, `LENGTH_CONTROLLED` (the length-controlled AUROCs);
* loss modes: `fit_modes` (FitConfig variants of one store, same seeds and splits, test metrics) and `summarise_modes`
  (contrastive_pairs.py, contrastive_reduce.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, Clock, console
from benchmarks.subsets import concatenate, first_groups
from probekit.io import read_json, write_json

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values, bounded: bool = True) -> dict:
    """Mean and 95% t-interval across seeds."""
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    if len(v) == 1:
        return {"mean": float(v[0]), "lo": None, "hi": None, "n": 1}
    half = T975.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    lo, hi = v.mean() - half, v.mean() + half
    if bounded:  # shares and AUROCs live in [0, 1]
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(v))}


def fmt(m: dict | None, pct: bool = False) -> str:
    if not m or m.get("mean") is None:
        return "-"
    k = 100.0 if pct else 1.0
    if m.get("lo") is None:
        return f"{k * m['mean']:.3f}"
    return f"{k * m['mean']:.3f} [{k * m['lo']:.3f}, {k * m['hi']:.3f}]" if not pct else f"{k * m['mean']:.1f}% [{k * m['lo']:.1f}, {k * m['hi']:.1f}]"


def cached(path: Path, fn):
    """Run `fn` once; later runs read its JSON result (delete the file to recompute)."""
    if path.exists():
        return read_json(path)
    result = fn()
    write_json(path, result)
    return result


# ---- data and stores ----------------------------------------------------------------------------------
NEEDED = ("gsm8k", "gsm8k-model-solutions", "hh-rlhf-harmless")  # `probekit data fetch` names of the files read below


def add_data_dir_option(ap) -> None:
    ap.add_argument("--data-dir", default=None,
                    help="folder with gsm8k/ and hh_rlhf/, or a data-set name (probekit's cache); default ../shared/data "
                         f"when present, else probekit's cache with {', '.join(NEEDED)} fetched (verified by sha256)")


def add_study_options(ap, name: str, model_dtype: str, model_dtype_help: str) -> None:
    """The options every real-data study script shares (reproduce.py and ablations.py): data, cache, output, model, seeds."""
    add_data_dir_option(ap)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / name, help="cache folder for data, stores and runs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"{name}.json")
    ap.add_argument("--model", default="smollm2-135m", help="frozen model (bundled name, folder or .gguf)")
    ap.add_argument("--model-tag", default="smollm2", help="store folder suffix and report name of this model")
    ap.add_argument("--store-dtype", default="float16", choices=("float16", "float32"),
                    help="dtype of the cached states (Gemma-3's residual stream overflows float16: use float32)")
    ap.add_argument("--model-dtype", default=model_dtype, help=model_dtype_help)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--fit-threads", type=int, default=1, help="torch threads for the probe fits")


def data_folder(arg: str | None) -> Path:
    """The data folder `--data-dir` means (fetching what is missing); a failure is one line and exit status 2, as in the CLI."""
    from probekit.data.fetch import resolve_data_dir
    from probekit.errors import ProbekitError

    try:
        return resolve_data_dir(arg, default=ROOT.parent / "shared" / "data", need=NEEDED).resolve()
    except ProbekitError as exc:  # offline, or a download that failed its sha256
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def build_data(data_dir: Path, work: Path, args) -> dict[str, Path]:
    from probekit.data.corrupt import corrupt_gold
    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.hh import hh_pairs
    from probekit.data.schema import write_pairs, write_trajectories

    for sub in ("gsm8k/example_model_solutions.jsonl", "gsm8k/train.jsonl", "hh_rlhf/harmless-base/test.jsonl.gz"):
        if not (data_dir / sub).exists():
            raise SystemExit(f"error: {data_dir / sub} not found (pass --data-dir pointing at a data folder, or leave it "
                             f"out to fetch {', '.join(NEEDED)} into probekit's cache)")
    out = {}
    full = work / "gsm8k-all" / "trajectories.jsonl"
    if not full.exists():
        trajs = labelled_solutions(data_dir / "gsm8k/example_model_solutions.jsonl", strip_calculator=True)
        from probekit.data.schema import derive_pairs

        write_trajectories(full, trajs)
        write_pairs(full.with_name("pairs.jsonl"), derive_pairs(trajs))
    out["gsm8k"] = first_groups(full, work / f"gsm8k-{args.gsm8k_problems}" / "trajectories.jsonl", args.gsm8k_problems)
    full = work / "corrupt" / "trajectories.jsonl"
    if not full.exists():
        trajs, pairs = corrupt_gold(data_dir / "gsm8k/train.jsonl", n_per_problem=1, seed=0, limit=1000)
        write_trajectories(full, trajs)
        write_pairs(full.with_name("pairs.jsonl"), pairs)
    out["corrupt"] = first_groups(full, work / f"corrupt-{args.corrupt_problems}" / "trajectories.jsonl", args.corrupt_problems)
    full = work / "hh-all" / "trajectories.jsonl"
    if not full.exists():
        trajs, pairs = hh_pairs(data_dir / "hh_rlhf/harmless-base/test.jsonl.gz")
        write_trajectories(full, trajs)
        write_pairs(full.with_name("pairs.jsonl"), pairs)
    out["hh"] = first_groups(full, work / f"hh-{args.hh_dialogues}" / "trajectories.jsonl", args.hh_dialogues)
    both = work / f"both-{args.corrupt_problems}-{args.gsm8k_problems}" / "trajectories.jsonl"
    out["both"] = concatenate([out["corrupt"], out["gsm8k"]], both)  # corrupted gold + real labelled, one store
    return out


# How each kind of data is extracted (layers aside): solutions every 2nd token; HH dialogues as raw text, cut at 512 tokens.
EXTRACT = {"solutions": dict(positions="stride:2"), "hh": dict(positions="stride:2", template="raw", max_length=512)}


def extract_store(trajectories: Path, out: Path, kind: str, layers: str, args, loaded) -> Path:
    """Extract (or resume, or find complete) the store of `trajectories` and its pairs.jsonl at `out`."""
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract

    console.print(f"[bold]extract[/] {trajectories} -> {out}")
    extract(ExtractOptions(trajectories=trajectories, pairs=trajectories.with_name("pairs.jsonl"), out=out, model=args.model,
                           dtype=args.store_dtype, layers=layers, **EXTRACT[kind]), loaded=loaded)
    return out


LENGTH_CONTROLLED = ("auroc_strat", "auroc_resid")  # within length strata / log length regressed out (probekit.eval.length_control)


def evaluate_on(ckpt, store, layer: int, split: dict, seed: int) -> dict:
    """A checkpoint's probe on the test split of `split` in `store` (no baselines: the studies report them once)."""
    from probekit.eval.evaluate import evaluate
    from probekit.eval.context import make_context
    from probekit.probe.data import open_rows
    from probekit.probe.scoring import Scorer

    ctx = make_context(store, split, "test", n_boot=200, seed=seed)
    return evaluate(Scorer.from_checkpoint(ckpt), ctx, open_rows(store, layer, 2048), layer=layer, baselines=False)


def sweep(store: Path, out: Path, args, layers=None, goals=("mean",)) -> dict:
    """λ = 0 and λ = args.lam over `layers` (default: every layer of the store) x args.seeds, evaluated on the test split."""
    from probekit.config import FitConfig
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    config = SweepConfig(template=FitConfig().vary(epochs=args.epochs, n_boot=args.n_boot), lams=(0.0, args.lam),
                         layers=tuple(layers) if layers else None, seeds=tuple(args.seeds), goals=tuple(goals), prototypes=4, split="test")
    return run_sweep(store, out, config, overwrite=True)


def probe_summary(probes: list[dict]) -> dict:
    """Mean and 95% t-interval across seeds of the reward AUROC (raw and length-controlled), pairwise accuracy and Q AUROC."""
    def controlled(p: dict, name: str) -> float | None:
        return ((p["auroc"].get("length_controlled") or {}).get(name) or {}).get("value")

    return {"n_seeds": len(probes), "auroc": mean_ci(p["auroc"]["value"] for p in probes),
            "auroc_strat": mean_ci(controlled(p, "stratified") for p in probes),
            "auroc_resid": mean_ci(controlled(p, "residualised") for p in probes),
            "beats_length": f"{sum(bool((p['auroc'].get('length_controlled') or {}).get('beats_length')) for p in probes)}/{len(probes)}",
            "pairwise_acc": mean_ci(p["pairwise_accuracy"]["value"] for p in probes),
            "q_auroc": mean_ci(p["q_auroc_mean"]["value"] for p in probes)}


# ---- loss modes on one store (contrastive_pairs.py, contrastive_reduce.py) ----
METRICS = ("auroc", "pairwise_accuracy")


def fit_modes(store_path: Path, out: Path, args, modes: dict[str, dict]) -> list[dict]:
    """Every (seed, mode) fit of one store, evaluated on its test split: one record per run (`modes`: name -> FitConfig
    changes beside layer, λ, seed, epochs)."""
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe
    from probekit.probe.train import prepare
    from probekit.store import Store

    store = Store(store_path)
    source, runs = None, []
    for seed in args.seeds:
        for mode, changes in modes.items():
            cfg = FitConfig().vary(**{**dict(layer=args.layer, lam=args.lam, seed=seed, epochs=args.epochs, n_boot=args.n_boot,
                                             baselines=False), **changes})
            data = prepare(store, cfg, source=source)
            source = data.source
            clock = Clock().start()
            ckpt = fit_probe(store, out / f"{mode}_s{seed}", cfg, overwrite=True, data=data, eval_split="test")
            probe = ckpt.metrics["test"]["probe"]
            runs.append({"seed": seed, "mode": mode, "seconds": round(clock.elapsed, 1), "best_epoch": ckpt.metrics["train"]["best_epoch"],
                         **{m: {k: probe[m][k] for k in ("value", "lo", "hi")} for m in METRICS}})
            console.log(f"{store_path.name} seed {seed} {mode}: AUROC {probe['auroc']['value']:.3f}, "
                        f"pairwise {probe['pairwise_accuracy']['value']:.3f} ({clock.elapsed:.0f} s)")
    return runs


def summarise_modes(runs: list[dict], modes: dict[str, dict], differences: tuple) -> dict:
    """Per mode: mean and t-interval across seeds of each metric; each (a, b) of `differences` as a − b, paired by seed."""
    by = {(r["mode"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    per_mode = {mode: {m: mean_ci(by[(mode, s)][m]["value"] for s in seeds) for m in METRICS} for mode in modes}
    diffs = {f"{a}-{b}": {m: mean_ci([by[(a, s)][m]["value"] - by[(b, s)][m]["value"] for s in seeds], bounded=False) for m in METRICS}
             for a, b in differences}
    return {"modes": per_mode, "differences": diffs}
