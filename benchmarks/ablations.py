"""`make ablations`: does any ablation of the method learn something beyond completion length?

Every ablation axis of `fit` (features single/concat/mix, pooling last/mean/attention,
contrastive official/infonce/token, pairs group/cross) is run against the default
configuration, one axis at a time (`SweepConfig(one_at_a_time=True)`), over >= 5 seeds:
features, pooling and pairs at λ = 0, the contrastive variants at the λ of `make
reproduce` (0.5), where the default also runs (its gain over λ = 0 is the contrastive
term's), on four arms:

  gsm8k   GSM8K labelled model solutions (first N test problems x 4), split by problem
  both    the same test problems; training adds the corrupted-gold pairs of N train problems
  hh      Helpful-Harmless harmless-base, every test dialogue
  synth   `probekit data synth` problems, whose wrong solutions have a known first error

One store per data set and model (GSM8K solutions and corrupted gold share one: each
arm's split file picks its groups), holding the --feature-layers; every configuration
and seed reads it. Each seed of the gsm8k and both arms tests the same problems (the
split `make reproduce` gives that seed).

Reported per (model, arm, λ, configuration): reward AUROC raw, within length strata and
with log length regressed out (`probekit.eval.length_control`; mean and 95% t-interval
across seeds), pairwise accuracy, Q AUROC; the paired gain of each variant over the
default at the same λ and seed; the completion-length baseline beside them. A
configuration "beats length" when the across-seed 95% lower bounds of both
length-controlled AUROCs are above 0.5. The token-level contrastive variant is
identical to the official loss where no rejected completion has a known first error
(gsm8k, hh): it is run only where it differs (both, synth), and the JSON says so.

Results: benchmarks/results/ablations.json and the README's ablation section.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import ArgumentParser, Clock, console, machine, results_header, table as rich_table  # noqa: E402
from benchmarks.studies import (LENGTH_CONTROLLED, add_study_options, build_data, cached, data_folder,  # noqa: E402
                                extract_store, fmt, mean_ci)
from probekit.io import read_json, write_json  # noqa: E402

ARMS = ("gsm8k", "both", "hh", "synth")
STORE_OF_ARM = {"gsm8k": "gsm8k", "both": "gsm8k", "hh": "hh", "synth": "synth"}
VARIANTS = {"features": ("single", "concat", "mix"), "pooling": ("last", "mean", "attention"),
            "contrastive": ("official", "infonce", "token"), "pairs": ("group", "cross")}  # default first
METRICS = ("auroc", *LENGTH_CONTROLLED, "pairwise_acc", "q_auroc")
GAINS = ("auroc", *LENGTH_CONTROLLED, "pairwise_acc")
MACHINE_FIELDS = ("cpu", "cores=cpu_count", "gpu", "platform", "torch", "load_average_at_start=load_average_unrounded")


# ---- data and stores --------------------------------------------------------------------------------------
def build_synth(work: Path, n_problems: int) -> Path:
    """`probekit data synth`'s problems (seed 0, 4 solutions, half of them with one wrong step carried forward)."""
    from probekit.data.schema import derive_pairs, write_pairs, write_trajectories
    from probekit.data.synth import synth_problems

    path = work / f"synth-{n_problems}" / "trajectories.jsonl"
    if not path.exists():
        trajs = synth_problems(n_problems, 4, 0.5, 2, 4, seed=0)
        write_trajectories(path, trajs)
        write_pairs(path.with_name("pairs.jsonl"), derive_pairs(trajs))
    return path


def build_stores(files: dict[str, Path], work: Path, args, loaded) -> dict[str, Path]:
    """GSM8K solutions + corrupted gold in one store, HH and synth in their own; each holds every --feature-layers layer."""
    sources = {"gsm8k": (files["both"], "solutions"), "hh": (files["hh"], "hh"), "synth": (files["synth"], "solutions")}
    wanted = {STORE_OF_ARM[a] for a in args.arms}
    stores = {}
    for name, (path, kind) in sources.items():
        if name in wanted:
            out = work / "stores" / f"ablate-{name}-{args.model_tag}"
            extract_store(path, out, kind, args.feature_layers, args, loaded)
            # Another process may hold some shards (extraction split across processes): wait until it has written them.
            while read_json(out / "manifest.json")["status"] != "complete":
                console.print(f"{out}: shards in progress elsewhere; waiting")
                time.sleep(30)
                extract_store(path, out, kind, args.feature_layers, args, loaded)
            stores[name] = out
    return stores


def split_file(store, arm: str, seed: int, out: Path) -> Path | None:
    """The split of a GSM8K arm at `seed`: `make reproduce`'s split of the real test problems; `both` adds every corrupted-gold
    problem to training. Other arms split at random by seed (None)."""
    from probekit.probe.data import make_split

    if arm not in ("gsm8k", "both"):
        return None
    groups = sorted(set(store.meta.group.astype(str)))
    split = make_split(np.array([g for g in groups if g.startswith("gsm8k-test-")]), 0.2, 0.2, seed)
    if arm == "both":
        split["train"] = sorted(split["train"] + [g for g in groups if g.startswith("gsm8k-train-")])
    path = out / f"split-{arm}-s{seed}.json"
    write_json(path, split)
    return path


def axes_for(store, split: Path | None) -> tuple[dict, list[str]]:
    """The axes an arm runs, and why any variant is left out: without a known first error among its training
    completions, the token variant's extra term is empty and its loss is the official one."""
    from probekit.metrics import split_mask
    from probekit.probe.data import read_split

    axes = dict(VARIANTS)
    train = split_mask(store, read_split(split, store.meta.group)["train"]) if split else np.ones(len(store), bool)
    if not (store.meta.error_token[train] >= 0).any():
        axes["contrastive"] = ("official", "infonce")
        return axes, ["contrastive token not run: no training completion of this arm has a known first error, so the token "
                      "term is empty and the loss is the official one"]
    return axes, []


# ---- runs ----------------------------------------------------------------------------------------------------
def arm_sweeps(arm: str, store_path: Path, out: Path, args) -> tuple[list[dict], list[str]]:
    """Every configuration x seed of one arm through `run_sweep` (one call per seed where a split file fixes the split).

    The features, pooling and pairs variants run at λ = 0; the contrastive variants, which only exist with a
    contrastive term, at --lam beside the default there (see `--cut` in the recorded JSON for why not every
    variant at both λ). A run already in `out` (same options, same store) is read back, not fitted again, so
    processes that split the seeds share one folder.
    """
    from probekit.config import FitConfig
    from probekit.store import Store
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    store = Store(store_path)
    per_seed = arm in ("gsm8k", "both")
    rows: dict[str, dict] = {}
    for seeds in ([[s] for s in args.seeds] if per_seed else [args.seeds]):
        split = split_file(store, arm, seeds[0], out) if per_seed else None
        axes, notes = axes_for(store, split)
        template = FitConfig().vary(epochs=args.epochs, n_boot=args.n_boot, max_pairs=args.max_pairs, split_file=split)
        # λ first (the default at both λ, the contrastive variants), then the λ = 0 variants, the costlier fits
        for lams, names in (((args.lam,), ("contrastive",)), ((0.0,), ("features", "pooling", "pairs"))):
            names = tuple(n for n in names if n in args.axes)
            config = SweepConfig(template=template, lams=lams, layers=(args.layer,), seeds=tuple(seeds), goals=("mean",), split="test",
                                 axes={name: axes[name] for name in names}, one_at_a_time=True)
            console.print(f"[bold]sweep[/] {arm} seeds {seeds} λ {lams[0]:g} {', '.join(names)}")
            rows.update({r["checkpoint"]: r for r in run_sweep(store_path, out, config, overwrite=True)["runs"]})  # λ = 0 default twice
    left_out = [name for name in VARIANTS if name not in args.axes]
    return list(rows.values()), notes + ([f"axes not run on this arm: {', '.join(left_out)}"] if left_out else [])


def variant(row: dict) -> str:
    """'default' or the one changed axis as 'axis=value'."""
    changed = [f"{axis}={row[axis]}" for axis, values in VARIANTS.items() if row[axis] not in (None, values[0])]
    return changed[0] if changed else "default"


def length_baseline(row: dict) -> dict:
    """The completion-length baseline of a run's test split: AUROC raw and length-controlled (from its metrics.json)."""
    b = read_json(Path(row["checkpoint"]) / "metrics.json")["test"]["baselines"]["length"]
    lc = b["auroc"].get("length_controlled") or {}
    return {"auroc": b["auroc"]["value"], "auroc_strat": (lc.get("stratified") or {}).get("value"),
            "auroc_resid": (lc.get("residualised") or {}).get("value"), "pairwise_acc": (b.get("pairwise_accuracy") or {}).get("value")}


def summarise(model: str, arm: str, rows: list[dict]) -> dict:
    """Per (λ, configuration): metrics across seeds, paired gains over the default, the "beats length" verdict."""
    by: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        by.setdefault((r["lam"], variant(r)), {})[r["seed"]] = r
    table = []
    for (lam, name), seeds in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] != "default", kv[0][1])):
        default = by.get((lam, "default"), {})
        item = {"model": model, "arm": arm, "lam": lam, "configuration": name, "n_seeds": len(seeds),
                **{m: mean_ci(r.get(m) for r in seeds.values()) for m in METRICS},
                "runs_beating_length": f"{sum(bool(r.get('beats_length')) for r in seeds.values())}/{len(seeds)}"}
        item["beats_length"] = all((item[m]["lo"] or 0.0) > 0.5 for m in LENGTH_CONTROLLED)
        # a variant against the default at its λ; the default at λ > 0 against λ = 0 (the contrastive term's gain)
        ref = by.get((0.0, "default"), {}) if name == "default" and lam > 0 else default if name != "default" else None
        if ref is not None:
            item["gain_over"] = "default, λ = 0" if name == "default" else f"default, λ = {lam:g}"
            item["gain"] = {m: mean_ci([r[m] - ref[s][m] for s, r in seeds.items() if s in ref and r.get(m) is not None
                                        and ref[s].get(m) is not None], bounded=False) for m in GAINS}
        table.append(item)
    base = [length_baseline(r) for r in by.get((0.0, "default"), {}).values()]
    length = {"model": model, "arm": arm, **{m: mean_ci(b[m] for b in base) for m in ("auroc", *LENGTH_CONTROLLED, "pairwise_acc")}}
    compact = [{k: r[k] for k in ("lam", "seed", *VARIANTS, "auroc", "auroc_lo", "auroc_hi", "auroc_strat", "auroc_strat_lo",
                                  "auroc_strat_hi", "auroc_resid", "auroc_resid_lo", "auroc_resid_hi", "pairwise_acc", "q_auroc",
                                  "beats_length", "seconds")} for r in rows]
    return {"table": table, "length_baseline": length, "runs": compact}


# ---- report ----------------------------------------------------------------------------------------------------
def verdict(results: list[dict]) -> dict:
    """Which configurations beat length by the length-controlled numbers, stated as a sentence."""
    winners = [f"{t['model']} {t['arm']} λ={t['lam']:g} {t['configuration']}" for res in results for t in res["table"] if t["beats_length"]]
    n = sum(len(res["table"]) for res in results)
    text = (f"{len(winners)} of {n} configurations beat length (both length-controlled AUROCs' 95% lower bounds across seeds above 0.5): "
            + ("; ".join(winners) if winners else "none"))
    return {"configurations_beating_length": winners, "n_configurations": n, "text": text}


def print_report(report: dict) -> None:
    for res in report["results"]:
        lb = res["length_baseline"]
        rows = [[f"{t['lam']:g}", t["configuration"], fmt(t["auroc"]), fmt(t["auroc_strat"]), fmt(t["auroc_resid"]), fmt(t["pairwise_acc"]),
                 fmt((t.get("gain") or {}).get("auroc")), fmt((t.get("gain") or {}).get("auroc_resid")),
                 f"{t['runs_beating_length']} ; {'yes' if t['beats_length'] else 'no'}"] for t in res["table"]]
        rows.append(["", "completion length", fmt(lb["auroc"]), fmt(lb["auroc_strat"]), fmt(lb["auroc_resid"]), fmt(lb["pairwise_acc"]), "", "", ""])
        console.print(rich_table(f"{res['model']} · {res['arm']} · test split (mean [95% CI over seeds])",
                                 ["λ", "configuration", "AUROC", "within length strata", "log length regressed out", "pairwise acc",
                                  "Δ AUROC (vs default; λ > 0 default: vs λ = 0)", "Δ regressed-out", "runs beating length ; verdict"], rows))
    console.print(report["verdict"]["text"], highlight=False, soft_wrap=True)


def add_cli_args(ap: ArgumentParser) -> None:
    add_study_options(ap, "ablations", "auto", "dtype the model computes in (auto: bfloat16 where this CPU runs it faster)")
    ap.add_argument("--layer", type=int, default=12, help="layer of the single-layer configurations")
    ap.add_argument("--feature-layers", default="4,8,12", help="layers of the stores, read together by features concat and mix "
                                                                "(the forward pass stops at the deepest)")
    ap.add_argument("--lam", type=float, default=0.5, help="λ of the goal-conditioned configurations (make reproduce's)")
    ap.add_argument("--max-pairs", type=int, default=5000,
                    help="training pairs of the pairs=cross variant (a seeded subsample of every label-1 x label-0 pair; fit's default "
                         "20000 made each such fit take minutes on a shared 2-core CPU)")
    ap.add_argument("--gsm8k-problems", type=int, default=300, help="first N GSM8K test problems (x 4 labelled solutions)")
    ap.add_argument("--corrupt-problems", type=int, default=300, help="first N GSM8K train problems (gold + corrupted copy)")
    ap.add_argument("--hh-dialogues", type=int, default=100000, help="first N harmless-base test dialogues (default: all)")
    ap.add_argument("--synth-problems", type=int, default=300, help="synthetic problems (x 4 solutions)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    ap.add_argument("--axes", default=",".join(VARIANTS), help=f"ablation axes to run (comma list of {', '.join(VARIANTS)}); "
                                                                 "an arm's result is cached with the axes it ran")
    ap.add_argument("--stores-only", action="store_true", help="extract the stores and stop (they are cached for the study)")
    ap.add_argument("--cut", action="append", default=[], help="what this run leaves out of the full study and why (recorded in the JSON)")
    ap.add_check(lambda args: f"unknown axes {sorted(unknown)}; choose from {', '.join(VARIANTS)}"
                 if (unknown := {a for a in args.axes.split(",") if a} - set(VARIANTS)) else None)
    ap.add_check(lambda args: f"unknown arms {sorted(unknown)}; choose from {', '.join(ARMS)}"
                 if (unknown := {a for a in args.arms.split(",") if a} - set(ARMS)) else None)
    ap.add_check(lambda args: f"--layer {args.layer} must be one of --feature-layers {args.feature_layers}"
                 if str(args.layer) not in args.feature_layers.split(",") else None)


def main(args) -> None:
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.arms = [a for a in args.arms.split(",") if a]
    args.axes = [a for a in args.axes.split(",") if a]
    work = args.work.resolve()
    started = Clock().start()
    start = machine(*MACHINE_FIELDS)

    from probekit.models import load_model
    from probekit.store import Store

    files = build_data(data_folder(args.data_dir), work, args)
    files["synth"] = build_synth(work, args.synth_problems)
    loaded = load_model(args.model, dtype=args.model_dtype)
    stores = build_stores(files, work, args, loaded)
    extracted = started.elapsed
    if args.stores_only:
        return
    import torch

    torch.set_num_threads(args.fit_threads)  # tiny matmuls: more threads only spin on a shared CPU
    tag = f"{args.model_tag}-e{args.epochs}-lam{args.lam:g}-mp{args.max_pairs}"  # seeds apart: processes may split them
    results, notes = [], {}
    for arm in args.arms:
        def run(arm=arm):
            clock = Clock().start()
            rows, why = arm_sweeps(arm, stores[STORE_OF_ARM[arm]], work / "sweeps" / f"{arm}-{tag}", args)
            return {**summarise(args.model_tag, arm, rows), "notes": why, "fit_seconds": round(clock.elapsed, 1)}
        res = {"model": args.model_tag, "arm": arm, **cached(work / "results" / f"{tag}-s{'_'.join(map(str, args.seeds))}" / f"{arm}.json", run)}
        notes[arm] = res.pop("notes")
        results.append(res)
    report = {
        **results_header(exact_command=False, day_only=True, machine={**start, "fit_torch_threads": args.fit_threads}),
        "settings": {"model": args.model, "model_tag": args.model_tag, "model_dtype": str(loaded.dtype).replace("torch.", ""),
                     "store_dtype": args.store_dtype, "layer": args.layer, "feature_layers": args.feature_layers, "lam": args.lam,
                     "seeds": args.seeds, "epochs": args.epochs, "n_boot": args.n_boot, "max_pairs": args.max_pairs,
                     "split": "test (60/20/20 by group)",
                     "arms": args.arms, "variants": VARIANTS,
                     "data": {"gsm8k_problems": args.gsm8k_problems, "corrupt_problems": args.corrupt_problems,
                              "hh_dialogues": args.hh_dialogues, "synth_problems": args.synth_problems}},
        "stores": {name: store_summary(Store(path)) for name, path in stores.items()},
        "notes": notes,
        "cut": args.cut,
        "results": results,
        "verdict": verdict(results),
        "seconds": {"this_invocation": round(started.elapsed, 1), "of_which_extraction": round(extracted, 1),
                    "fits_per_arm": {r["arm"]: r["fit_seconds"] for r in results},
                    "extraction_per_store": {name: (Store(path).manifest.get("stats") or {}).get("seconds") for name, path in stores.items()}},
    }
    write_json(args.out, report)
    print_report(report)


def store_summary(store) -> dict:
    """Size and provenance of a store (what the study read)."""
    m = store.manifest
    return {"path": str(store.path), "trajectories": len(store), "groups": len(set(store.meta.group)), "pairs": int(len(store.pairs())),
            "with_known_first_error": int((store.meta.error_token >= 0).sum()), "layers": list(store.layers),
            "model_dtype": (m.get("model") or {}).get("dtype"), "stats": m.get("stats")}


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
