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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import ArgumentParser, Clock, console, results_header, table as rich_table  # noqa: E402
from benchmarks.studies import (LENGTH_CONTROLLED, add_study_options, build_data, cached, data_folder,  # noqa: E402
                                evaluate_on, extract_store, fmt, mean_ci, probe_summary, sweep)
from probekit.io import read_json, write_json  # noqa: E402

STUDIES = ("gsm8k", "filter", "transfer", "hh")
STORES_OF_STUDY = {"gsm8k": ("gsm8k",), "filter": ("gsm8k",), "transfer": ("gsm8k", "corrupt", "both"), "hh": ("hh",)}


def build_stores(files: dict[str, Path], work: Path, args, loaded) -> dict[str, Path]:
    """Extract the stores the requested studies read (only those: a second model may run a subset)."""
    layers = {"gsm8k": args.layers, "corrupt": f"{args.layer}", "hh": f"{args.layer}", "both": f"{args.layer}"}
    wanted = {name for study in args.studies for name in STORES_OF_STUDY[study]}
    return {name: extract_store(files[name], work / "stores" / f"{name}-{args.model_tag}", "hh" if name == "hh" else "solutions",
                                layers[name], args, loaded)
            for name in layers if name in wanted}


# ---- studies -------------------------------------------------------------------------------------------
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


def add_cli_args(ap: ArgumentParser) -> None:
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
    ap.add_check(lambda args: f"unknown studies {sorted(unknown)}; choose from {', '.join(STUDIES)}"
                 if (unknown := set(args.studies.split(",")) - set(STUDIES)) else None)


def main(args) -> None:
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.studies = ["gsm8k"] + [s for s in args.studies.split(",") if s != "gsm8k"]
    if args.figure_only:
        console.print(f"wrote {write_figure(read_json(args.out), args.out, args.layer)}")
        return
    work = args.work.resolve()
    started = Clock().start()

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
        **results_header(exact_command=False, day_only=True),
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
    report["seconds"] = round(started.elapsed, 1)
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
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
