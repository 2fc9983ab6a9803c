"""`make reproduce`: the paper's comparisons on real data with a frozen model.

The default model is SmolLM2-135M with every study; `make reproduce` then runs
this script again on Gemma-3-270M with `--studies gsm8k,filter` (see the Makefile).

Stages (each cached under --work, so a second run only refits what is missing):
  data      GSM8K labelled solutions, GSM8K corrupted-gold pairs, HH-RLHF pairs (subsets: first N groups)
  extract   one store per dataset (extraction resumes; complete shards are kept)
  gsm8k     λ = 0 vs λ > 0 over layers x seeds, test split, with trivial baselines
  filter    Q-value filtering in majority voting (threshold chosen on validation problems; mean vs k-means goals)
  transfer  probes fit on corrupted-gold pairs, tested on real labelled solutions
  hh        pairwise accuracy on Helpful-Harmless
Numbers: mean over seeds with a 95% t-interval across seeds; each seed's own
number also has a bootstrap interval over problems (in the per-stage JSON).
Results: benchmarks/results/reproduce.json and the README's results section.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.subsets import concatenate, first_groups  # noqa: E402
from benchmarks.report import console, table as rich_table  # noqa: E402
from probekit.io import read_json, write_json  # noqa: E402

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
    """The options every real-data study script shares (this one and ablations.py): data, cache, output, model, seeds."""
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


STUDIES = ("gsm8k", "filter", "transfer", "hh")
STORES_OF_STUDY = {"gsm8k": ("gsm8k",), "filter": ("gsm8k",), "transfer": ("gsm8k", "corrupt", "both"), "hh": ("hh",)}


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


def build_stores(files: dict[str, Path], work: Path, args, loaded) -> dict[str, Path]:
    """Extract the stores the requested studies read (only those: a second model may run a subset)."""
    layers = {"gsm8k": args.layers, "corrupt": f"{args.layer}", "hh": f"{args.layer}", "both": f"{args.layer}"}
    wanted = {name for study in args.studies for name in STORES_OF_STUDY[study]}
    return {name: extract_store(files[name], work / "stores" / f"{name}-{args.model_tag}", "hh" if name == "hh" else "solutions",
                                layers[name], args, loaded)
            for name in layers if name in wanted}


# ---- studies -------------------------------------------------------------------------------------------
def sweep(store: Path, out: Path, args, layers=None, goals=("mean",)) -> dict:
    from probekit.config import FitConfig
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    config = SweepConfig(template=FitConfig().vary(epochs=args.epochs, n_boot=args.n_boot), lams=(0.0, args.lam),
                         layers=tuple(layers) if layers else None, seeds=tuple(args.seeds), goals=tuple(goals), prototypes=4, split="test")
    return run_sweep(store, out, config, overwrite=True)


LENGTH_CONTROLLED = ("auroc_strat", "auroc_resid")  # within length strata / log length regressed out (probekit.eval.length_control)


def summarise_sweep(result: dict) -> list[dict]:
    """Per (layer, λ, goal): mean and 95% t-interval across seeds of each metric."""
    rows: dict[tuple, list[dict]] = {}
    for r in result["runs"]:
        rows.setdefault((r["layer"], r["lam"], r["goal"]), []).append(r)
    out = []
    for (layer, lam, goal), rs in sorted(rows.items()):
        out.append({"layer": layer, "lam": lam, "goal": goal, "n_seeds": len(rs),
                    **{m: mean_ci(r.get(m) for r in rs) for m in ("auroc", *LENGTH_CONTROLLED, "pairwise_acc", "q_auroc",
                                                                   *(f"q_{m}" for m in LENGTH_CONTROLLED), "err_token_auroc")},
                    "beats_baselines": f"{sum(bool(r['beats_baselines']) for r in rs)}/{len(rs)}",
                    "beats_length": f"{sum(bool(r.get('beats_length')) for r in rs)}/{len(rs)}"})
    return out


def paired_gain(result: dict, dataset: str, metric: str = "auroc") -> list[dict]:
    """Per layer: metric(λ > 0) − metric(λ = 0), paired by seed (same split), mean and 95% t-interval across seeds."""
    by: dict[tuple, float] = {(r["layer"], r["lam"], r["seed"]): r[metric] for r in result["runs"] if r["goal"] == "mean"}
    out = []
    for layer in sorted({k[0] for k in by}):
        lams = sorted({k[1] for k in by if k[0] == layer and k[1] > 0})
        for lam in lams:
            diffs = [by[(layer, lam, s)] - by[(layer, 0.0, s)] for (l, x, s) in by if l == layer and x == lam and (layer, 0.0, s) in by]
            out.append({"dataset": dataset, "layer": layer, "lam": lam, "metric": metric, "gain": mean_ci(diffs, bounded=False)})
    return out


def prefix_curves(result: dict, layer: int) -> dict:
    """Mean prefix-AUROC curves across seeds, from each run's metrics.json, for λ = 0 and λ > 0."""
    curves: dict[str, list] = {}
    for r in result["runs"]:
        if r["layer"] != layer or r["goal"] != "mean":
            continue
        m = read_json(Path(r["checkpoint"]) / "metrics.json")["test"]["probe"]["prefix"]
        curves.setdefault(f"lam={r['lam']:g} reward", []).append(m["reward_auroc"])
        curves.setdefault(f"lam={r['lam']:g} Q", []).append(m["q_auroc_mean"])
    return {"fractions": [0.1 * i for i in range(1, 11)],
            **{k: [mean_ci(col)["mean"] for col in zip(*v)] for k, v in curves.items()}}


def write_figure(report: dict, out: Path, layer: int) -> Path:
    """The paper's prefix figure for this run: mean curves across seeds, trivial baselines as lines."""
    from probekit.eval.plots import plot_prefix_curves

    pre = dict(report["gsm8k"]["prefix_auroc"])
    fractions = pre.pop("fractions")
    refs = {f"{b['baseline']} (full completion)": b["auroc_mean"] for b in report["gsm8k"]["baselines"]
            if b["layer"] == layer and b["baseline"] != "random" and b["auroc_mean"] is not None}
    title = f"GSM8K test problems, {report['model']} layer {layer}, mean of {len(report['seeds'])} seeds"
    return plot_prefix_curves(fractions, pre, out.with_name(f"{out.stem}-prefix.png"), title, refs)


def filter_study(result: dict, store: Path, out: Path, layer: int) -> list[dict]:
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    st = Store(store)
    rows: dict[tuple, list[dict]] = {}
    for r in result["runs"]:
        if r["layer"] != layer or r["goal"] != "mean":
            continue
        ckpt = load_checkpoint(r["checkpoint"])
        for goal in ("mean", "kmeans"):
            m = filter_store(ckpt, st, out / f"lam{r['lam']:g}_{goal}_s{r['seed']}",
                             FilterConfig(threshold="auto", goal=goal, seed=r["seed"], plots=r["seed"] == 0))
            rows.setdefault((r["lam"], goal), []).append(m["report"])
    out = []
    for (lam, goal), reps in sorted(rows.items()):
        out.append({"lam": lam, "goal": goal, "n_seeds": len(reps),
                    "accuracy_majority": mean_ci(x["accuracy_majority"] for x in reps),
                    "accuracy_filtered": mean_ci(x["accuracy_filtered"] for x in reps),
                    "tokens_saved": mean_ci(x["tokens_saved_share"] for x in reps),
                    "tokens_saved_effective": mean_ci(x["tokens_saved_share_effective"] for x in reps),
                    "dropped": mean_ci(x["dropped_share"] for x in reps),
                    "random_at_budget": mean_ci(x["baselines"]["random"]["accuracy"] for x in reps),
                    "length_at_budget": mean_ci(x["baselines"]["length"]["accuracy"] for x in reps),
                    "best_of_n": mean_ci(x.get("best_of_n_accuracy") for x in reps)})
    return out


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


def evaluate_on(ckpt, store, layer: int, split: dict, seed: int) -> dict:
    """A checkpoint's probe on the test split of `split` in `store` (no baselines: the studies report them once)."""
    from probekit.eval.evaluate import evaluate
    from probekit.eval.context import make_context
    from probekit.probe.data import open_rows
    from probekit.probe.scoring import Scorer

    ctx = make_context(store, split, "test", n_boot=200, seed=seed)
    return evaluate(Scorer.from_checkpoint(ckpt), ctx, open_rows(store, layer, 2048), layer=layer, baselines=False)


def transfer_study(corrupt_result: dict, gsm8k_result: dict, gsm8k_store: Path, layer: int) -> list[dict]:
    """Probes fit on corrupted-gold pairs, evaluated on the same real test problems as the in-domain probes."""
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    st = Store(gsm8k_store)
    split_of = {r["seed"]: load_checkpoint(r["checkpoint"]).split for r in gsm8k_result["runs"] if r["layer"] == layer and r["lam"] == 0}
    rows: dict[float, list[dict]] = {}
    for r in corrupt_result["runs"]:
        if r["goal"] != "mean":
            continue
        ckpt = load_checkpoint(r["checkpoint"])
        m = evaluate_on(ckpt, st, layer, split_of[r["seed"]], r["seed"])
        rows.setdefault(r["lam"], []).append(m["probe"])
    return [{"lam": lam, "trained_on": "corrupted gold pairs", **probe_summary(ps)} for lam, ps in sorted(rows.items())]


def both_study(gsm8k_result: dict, both_store: Path, out: Path, args) -> list[dict]:
    """Probes fit on corrupted-gold pairs plus each seed's real training problems, tested on that seed's real test problems.

    The split of each seed is the one of the in-domain λ = 0 run at `args.layer`, with every
    corrupted-gold group added to its training part, so the three arms (real only,
    corrupted only, both) are tested on exactly the same problems.
    """
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe
    from probekit.probe.checkpoint import load_checkpoint
    from probekit.store import Store

    st = Store(both_store)
    synthetic = sorted({g for g in st.meta.group if g.startswith("gsm8k-train-")})
    rows: dict[float, list[dict]] = {}
    for r in gsm8k_result["runs"]:
        if r["layer"] != args.layer or r["lam"] != 0 or r["goal"] != "mean":
            continue
        split = load_checkpoint(r["checkpoint"]).split
        split = {**split, "train": sorted(set(split["train"]) | set(synthetic))}
        split_file = out / f"split_s{r['seed']}.json"
        write_json(split_file, split)
        for lam in (0.0, args.lam):
            cfg = FitConfig().vary(layer=args.layer, lam=lam, seed=r["seed"], split_file=split_file, epochs=args.epochs, n_boot=args.n_boot)
            ckpt = fit_probe(st, out / f"lam{lam:g}_s{r['seed']}", cfg)
            m = evaluate_on(ckpt, st, args.layer, split, r["seed"])
            rows.setdefault(lam, []).append(m["probe"])
    return [{"lam": lam, "trained_on": "corrupted gold + real pairs", **probe_summary(ps)} for lam, ps in sorted(rows.items())]


def real_only(gsm8k_result: dict, layer: int) -> list[dict]:
    """The in-domain arm at the transfer layer, in the transfer table's shape."""
    return [{"lam": x["lam"], "trained_on": "real labelled pairs", "n_seeds": x["n_seeds"], "auroc": x["auroc"],
             **{m: x[m] for m in LENGTH_CONTROLLED}, "beats_length": x["beats_length"], "pairwise_acc": x["pairwise_acc"], "q_auroc": x["q_auroc"]}
            for x in summarise_sweep(gsm8k_result) if x["layer"] == layer and x["goal"] == "mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_options(ap, "reproduce", "float32",
                      "dtype the model computes in (the recorded results and their cached stores are float32; auto may pick bfloat16 on a CPU)")
    ap.add_argument("--layers", default="4,8,12,16,20", help="layers of the GSM8K layer sweep")
    ap.add_argument("--layer", type=int, default=16, help="layer of the filter, transfer and HH studies (fixed in advance)")
    ap.add_argument("--lam", type=float, default=0.5, help="λ of the goal-conditioned probe")
    ap.add_argument("--gsm8k-problems", type=int, default=700)
    ap.add_argument("--corrupt-problems", type=int, default=400)
    ap.add_argument("--hh-dialogues", type=int, default=400)
    ap.add_argument("--studies", default=",".join(STUDIES),
                    help="which studies to run (comma list of gsm8k, filter, transfer, hh; the GSM8K layer sweep always runs: the others build on it)")
    ap.add_argument("--figure-only", action="store_true",
                    help="only redraw the prefix-AUROC figure from the JSON at --out (same --layer as the run)")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.studies = ["gsm8k"] + [s for s in args.studies.split(",") if s != "gsm8k"]
    if unknown := set(args.studies) - set(STUDIES):
        ap.error(f"unknown studies {sorted(unknown)}; choose from {', '.join(STUDIES)}")
    if args.figure_only:
        console.print(f"wrote {write_figure(read_json(args.out), args.out, args.layer)}")
        return
    work = args.work.resolve()
    t0 = time.time()

    from probekit.models import load_model

    files = build_data(data_folder(args.data_dir), work, args)
    loaded = load_model(args.model, dtype=args.model_dtype)
    stores = build_stores(files, work, args, loaded)
    import torch

    # Probe fits are many tiny matmuls: extra threads buy nothing and, on a shared
    # machine, OpenMP spin-waiting made them ~10x slower. Extraction above used all cores.
    torch.set_num_threads(args.fit_threads)
    tag = f"{args.model_tag}-s{'_'.join(map(str, args.seeds))}-e{args.epochs}"
    res = work / "results" / tag
    g = cached(res / "gsm8k_sweep.json", lambda: sweep(stores["gsm8k"], work / "sweeps" / f"gsm8k-{tag}", args, goals=("mean", "kmeans")))
    report = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "model": args.model,
        "seeds": args.seeds,
        "data": {k: str(v) for k, v in files.items()},
        "gsm8k": {"table": summarise_sweep(g), "gain": paired_gain(g, "gsm8k") + paired_gain(g, "gsm8k", "pairwise_acc"), "baselines": g["baselines"], "prefix_auroc": prefix_curves(g, args.layer)},
    }
    if "filter" in args.studies:
        report["filter"] = cached(res / "filter.json", lambda: filter_study(g, stores["gsm8k"], work / "filter" / tag, args.layer))
    if "transfer" in args.studies:
        c = cached(res / "corrupt_sweep.json", lambda: sweep(stores["corrupt"], work / "sweeps" / f"corrupt-{tag}", args))
        report["transfer"] = real_only(g, args.layer) + cached(res / "transfer.json", lambda: transfer_study(c, g, stores["gsm8k"], args.layer))
        report["transfer"] += cached(res / "both.json", lambda: both_study(g, stores["both"], work / "sweeps" / f"both-{tag}", args))
    if "hh" in args.studies:
        h = cached(res / "hh_sweep.json", lambda: sweep(stores["hh"], work / "sweeps" / f"hh-{tag}", args))
        report["hh"] = {"table": summarise_sweep(h), "gain": paired_gain(h, "hh", "pairwise_acc"), "baselines": h["baselines"]}
    report["seconds"] = round(time.time() - t0, 1)
    write_json(args.out, report)
    write_figure(report, args.out, args.layer)
    print_report(report)


def fmt_length(r: dict, prefix: str = "") -> str:
    """'strat / resid' of a row's length-controlled AUROCs (means across seeds)."""
    means = [(r.get(f"{prefix}{m}") or {}).get("mean") for m in LENGTH_CONTROLLED]
    return "-" if all(m is None for m in means) else " / ".join("-" if m is None else f"{m:.3f}" for m in means)


def print_report(report: dict) -> None:
    rows = [[r["layer"], f"{r['lam']:g}", r["goal"], fmt(r["auroc"]), fmt_length(r), fmt(r["pairwise_acc"]), fmt(r["q_auroc"]),
             fmt_length(r, "q_"), f"{r['beats_baselines']} ; {r.get('beats_length', '-')}"]
            for r in report["gsm8k"]["table"]]
    console.print(rich_table("GSM8K labelled solutions, test problems (mean [95% CI over seeds]; length-controlled: "
                             "within length strata / log length regressed out)",
                             ["layer", "λ", "goal", "reward AUROC", "length-controlled", "pairwise acc", "Q AUROC", "Q length-controlled",
                              "beats baselines ; length"], rows))
    gains = report["gsm8k"]["gain"] + report.get("hh", {}).get("gain", [])
    rows = [[r["dataset"], r["layer"], f"{r['lam']:g}", r["metric"], fmt(r["gain"])] for r in gains]
    console.print(rich_table("Gain of the goal-conditioned probe over λ = 0, paired by seed",
                             ["data", "layer", "λ", "metric", "gain [95% CI]"], rows))
    rows = [[b["layer"], b["baseline"], "-" if b["auroc_mean"] is None else f"{b['auroc_mean']:.3f}",
             " / ".join("-" if b.get(f"{m}_mean") is None else f"{b[f'{m}_mean']:.3f}" for m in LENGTH_CONTROLLED),
             "-" if b["pairwise_acc_mean"] is None else f"{b['pairwise_acc_mean']:.3f}", b.get("direction") or ""]
            for b in report["gsm8k"]["baselines"]]
    console.print(rich_table("GSM8K trivial baselines (mean over seeds; length-controlled AUROC of length itself should be ≈ 0.5)",
                             ["layer", "baseline", "AUROC", "length-controlled", "pairwise acc", "note"], rows))
    if "filter" in report:
        print_filter(report)
    if "transfer" in report:
        print_transfer(report)
    if "hh" in report:
        print_hh(report)


def print_filter(report: dict) -> None:
    rows = [[f"{r['lam']:g}", r["goal"], fmt(r["accuracy_majority"], True), fmt(r["accuracy_filtered"], True), fmt(r["tokens_saved"], True),
             fmt(r["tokens_saved_effective"], True), fmt(r["random_at_budget"], True), fmt(r["length_at_budget"], True)] for r in report["filter"]]
    console.print(rich_table("Majority voting over 4 solutions, test problems", ["λ", "goal", "no filter", "Q filter", "tokens saved",
                                                                                 "effective saved", "random drop", "length drop"], rows))


def print_transfer(report: dict) -> None:
    rows = [[r["trained_on"], f"{r['lam']:g}", fmt(r["auroc"]), fmt_length(r), fmt(r["pairwise_acc"]), fmt(r["q_auroc"])] for r in report["transfer"]]
    console.print(rich_table("Training data vs real test solutions (same test problems)",
                             ["trained on", "λ", "reward AUROC", "length-controlled (strat / resid)", "pairwise acc", "Q AUROC"], rows))


def print_hh(report: dict) -> None:
    rows = [[r["layer"], f"{r['lam']:g}", fmt(r["pairwise_acc"]), r["beats_baselines"]] for r in report["hh"]["table"]]
    console.print(rich_table("Helpful-Harmless (harmless-base), test dialogues", ["layer", "λ", "pairwise acc", "beats baselines"], rows))


if __name__ == "__main__":
    main()
