"""bfloat16 vs float32 extraction on this CPU: speed side by side, and whether states, probes and filter decisions agree.

Same frozen model (SmolLM2-135M), same GSM8K model solutions (the first
--n-problems test problems x 4 solutions, labelled correct/incorrect), layer 15,
states stored in float32 in both stores, so only the dtype the model computes in
differs:

1. speed     extraction in float32 and in bfloat16, interleaved, --repeats times,
             in one process (both models loaded); tokens/s from each store's manifest;
2. states    relative error ||a - b|| / ||a|| of every stored row (a: float32,
             b: bfloat16): median, p99, max; for scale, the error of merely
             storing the float32 states as float16 (probekit's default storage);
3. probes    one probe fitted on each store (same seed, hence the same split):
             held-out (test groups) AUROC with group-bootstrap 95% intervals;
             and the float32 probe scored on the bfloat16 store (states only);
4. filtering `probekit filter` decisions (keep/drop per solution) of each probe on
             its own store and of the float32 probe on the bfloat16 store, with
             threshold auto and at fixed thresholds (quantiles of the float32
             per-solution min Q): share of solutions whose decision differs.

    .venv/bin/python benchmarks/bf16_agreement.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Clock, console, machine, results_header, table  # noqa: E402
from benchmarks.studies import evaluate_on  # noqa: E402
from benchmarks.subsets import first_groups  # noqa: E402
from probekit.io import iter_jsonl, write_json  # noqa: E402

DTYPES = ("float32", "bfloat16")
LAYER = 15
FIXED_QUANTILES = (0.1, 0.25, 0.5)


def relative_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a - b|| / ||a|| per row."""
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)


def spread(x: np.ndarray) -> dict:
    return {"median": float(np.median(x)), "p99": float(np.quantile(x, 0.99)), "max": float(x.max()), "n_rows": int(len(x))}


def decisions(folder: Path) -> dict[str, bool]:
    return {r["id"]: bool(r["kept"]) for _, r in iter_jsonl(folder / "decisions.jsonl")}


def machine_summary() -> str:
    """The machine in one line, with what decides bfloat16's speed: the CPU and its bfloat16 instructions, torch and its threads."""
    m = machine("cpu", "arch", "cpu_count", "bf16_instructions", "torch", "torch_threads", "python")
    return (f"{m['cpu']}, {m['arch']}, {m['cpu_count']} CPU cores (shared), bf16 flags: {m['bf16_instructions']}, "
            f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}")


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--n-problems", type=int, default=25, help="GSM8K test problems (4 solutions each)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-bf16")
    ap.add_argument("--out", default="benchmarks/results/bf16_agreement.json")


def main(args) -> int:
    from probekit.config import FitConfig
    from probekit.cpu_dtype import measure_speedup
    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store
    from probekit.models import load_model
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    everything = labelled_solutions(Path(args.data_dir) / "gsm8k" / "example_model_solutions.jsonl")
    write_trajectories(work / "all.jsonl", everything)
    traj = first_groups(work / "all.jsonl", work / "solutions.jsonl", args.n_problems)

    loaded = {d: load_model("smollm2-135m", device="cpu", dtype=d) for d in DTYPES}
    matmul = measure_speedup(loaded["float32"].hidden_size)
    console.log(f"matmul {loaded['float32'].hidden_size}: bfloat16 {matmul['speedup']:.2f}x float32")

    runs: dict[str, list[dict]] = {d: [] for d in DTYPES}
    for r in range(args.repeats):  # interleaved, so drifting load on the shared machine hits both alike
        for d in DTYPES:
            with Clock() as clock:
                res = extract(ExtractOptions(trajectories=traj, out=work / f"{d}-{r}", layers=str(LAYER), dtype="float32", overwrite=True),
                              loaded=loaded[d])
            stats = res.manifest["stats"]
            runs[d].append({"tokens": stats["n_tokens_processed"], "forward_seconds": stats["seconds"], "wall_seconds": round(clock.seconds, 2),
                            "tokens_per_second": stats["tokens_per_second"]})
        console.log(f"repeat {r}: " + ", ".join(f"{d} {v[-1]['tokens_per_second']} tok/s" for d, v in runs.items()))

    stores = {d: Store(work / f"{d}-0") for d in DTYPES}
    a, b = (stores[d].load_layer(LAYER) for d in DTYPES)
    states = {"bfloat16_vs_float32": spread(relative_errors(a, b)),
              "float16_storage_of_float32": spread(relative_errors(a, a.astype(np.float16).astype(np.float32)))}

    cfg = FitConfig().vary(layer=LAYER, seed=args.seed, valid_frac=0.2, test_frac=0.2)
    ckpts = {d: fit_probe(stores[d], work / f"probe-{d}", cfg, overwrite=True, eval_split="test") for d in DTYPES}
    probes = {}
    for d in DTYPES:
        m = ckpts[d].metrics["test"]
        probes[d] = {"auroc": m["probe"]["auroc"], "q_auroc_mean": m["probe"]["q_auroc_mean"],
                     "n_trajectories": m["n_trajectories"], "n_groups": m["n_groups"]}
    cross = evaluate_on(ckpts["float32"], stores["bfloat16"], LAYER, ckpts["float32"].split, args.seed)
    probes["float32_probe_on_bfloat16_store"] = {"auroc": cross["probe"]["auroc"], "q_auroc_mean": cross["probe"]["q_auroc_mean"]}

    outs = {d: work / f"filter-{d}" for d in DTYPES}
    outs["cross"] = work / "filter-float32-probe-on-bfloat16"
    config = FilterConfig(threshold="auto", seed=args.seed, plots=False)
    reports = {d: filter_store(ckpts["float32" if d == "cross" else d], stores["bfloat16" if d == "cross" else d], out, config, overwrite=True)
               for d, out in outs.items()}
    rec = {d: {r["id"]: r for _, r in iter_jsonl(out / "decisions.jsonl")} for d, out in outs.items()}
    ids = sorted(rec["float32"])
    kept = {d: np.array([rec[d][i]["kept"] for i in ids]) for d in outs}
    min_q = {d: np.array([np.nan if rec[d][i]["min_q"] is None else rec[d][i]["min_q"] for i in ids]) for d in outs}
    both = np.isfinite(min_q["float32"]) & np.isfinite(min_q["bfloat16"]) & np.isfinite(min_q["cross"])
    fixed = {}
    for quantile in FIXED_QUANTILES:  # one threshold for all three: what differs is only the scores
        t = float(np.quantile(min_q["float32"][both], quantile))
        drop = {d: min_q[d][both] < t for d in outs}
        fixed[f"q{int(100 * quantile)}"] = {"threshold": t, "dropped_share_float32": float(drop["float32"].mean()),
                                            "differ_own_probes": float(np.mean(drop["float32"] != drop["bfloat16"])),
                                            "differ_float32_probe": float(np.mean(drop["float32"] != drop["cross"]))}
    filters = {
        "n_solutions": len(ids), "skip_first": config.skip_first,
        "auto": {"chosen_threshold": {d: reports[d]["chosen_threshold"] for d in outs},
                 "kept_share": {d: float(kept[d].mean()) for d in outs},
                 "accuracy_filtered": {d: reports[d]["report"]["accuracy_filtered"] for d in outs},
                 "differ_own_probes": float(np.mean(kept["float32"] != kept["bfloat16"])),
                 "differ_float32_probe": float(np.mean(kept["float32"] != kept["cross"]))},
        "fixed_thresholds": fixed,
        "min_q_correlation": {"own_probes": float(np.corrcoef(min_q["float32"][both], min_q["bfloat16"][both])[0, 1]),
                              "float32_probe": float(np.corrcoef(min_q["float32"][both], min_q["cross"][both])[0, 1])},
        "note": "'cross' / 'float32_probe': the float32 store's probe applied to the bfloat16 store (only the states differ); "
                "'own probes': each store's own probe (states and training differ); fixed thresholds are quantiles of the "
                "float32 per-solution min Q (positions >= skip_first), a solution is dropped when its min Q is below",
    }

    def median_tps(d: str) -> float:
        return float(np.median([x["tokens_per_second"] for x in runs[d]]))

    result = {
        **results_header(exact_command=False, day_only=True, machine=machine_summary()),
        "model": "smollm2-135m", "layer": LAYER, "storage_dtype": "float32",
        "data": {"source": "gsm8k/example_model_solutions.jsonl", "n_problems": args.n_problems, "n_solutions": len(stores["float32"])},
        "matmul_speedup_auto_measures": matmul,
        "speed": {"runs": runs, "median_tokens_per_second": {d: median_tps(d) for d in DTYPES},
                  "bfloat16_speedup": round(median_tps("bfloat16") / median_tps("float32"), 2)},
        "state_relative_error": states,
        "probe_test_auroc": probes,
        "filter": filters,
    }
    write_json(args.out, result)
    console.print(table("Extraction speed (median over repeats)", ["dtype", "tokens/s"], [[d, median_tps(d)] for d in DTYPES]))
    console.print(table("Relative error of stored states", ["comparison", "median", "p99", "max"],
                        [[k, f"{v['median']:.2e}", f"{v['p99']:.2e}", f"{v['max']:.2e}"] for k, v in states.items()]))
    console.print(table("Held-out AUROC", ["probe", "AUROC [95%]"],
                        [[k, f"{v['auroc']['value']:.3f} [{v['auroc']['lo']:.3f}, {v['auroc']['hi']:.3f}]"] for k, v in probes.items()]))
    console.print(table("Filter decisions that differ from float32's", ["threshold", "own probes", "float32 probe"],
                        [["auto", f"{filters['auto']['differ_own_probes']:.3f}", f"{filters['auto']['differ_float32_probe']:.3f}"]]
                        + [[f"{k} ({v['threshold']:.3f})", f"{v['differ_own_probes']:.3f}", f"{v['differ_float32_probe']:.3f}"] for k, v in fixed.items()]))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    raise SystemExit(main(parser.parse_args()))
