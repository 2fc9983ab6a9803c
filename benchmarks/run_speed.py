"""`make bench`: probekit's speed against naive baselines, side by side in one process.

Three measurements on the same data (GSM8K labelled model solutions), the same
frozen model (SmolLM2-135M; probekit's load and a float32 load) and the same layer (15):

1. extraction  probekit.extract.run.extract (its defaults: --model-dtype auto,
               i.e. bfloat16 on a CPU whose bfloat16 matmuls measure faster;
               truncated forward up to layer 15, length-bucketed batches,
               sharded HDF5 output) against a naive loop as a user would write
               it: the whole model loaded in float32 (transformers' default),
               output_hidden_states=True, fixed batches of 8 in data order,
               right padding, layer-15 completion states copied out as float32
               numpy. Both use probekit.extract.render.encode, so they process
               identical tokens. Beside the ratio: probekit's achieved GFLOP/s
               (matmul FLOPs of the blocks it runs, `forward_flops`) against a
               matmul peak measured in the same dtype in the same process.
               Peak memory of each is measured in a child process (VmHWM),
               and probekit's at N and 4N trajectories (small shards) to show
               that it stays flat as the data grows.
2. fit         one fit (λ = 0.5, default FitConfig) and a λ sweep
               (6 values × 3 seeds = 18 fits, probekit.sweep.run_sweep).
3. filter      Q-value scoring + threshold (probekit.probe.scoring.score_store +
               apply_threshold) against a per-trajectory, per-token Python loop
               (φ of one token, torch cosine_similarity with the goal, compare,
               break at the first drop); the keep/drop decisions must agree.
               Both run at 1 thread and at torch's default; the headline takes
               each at its fastest, the 1-thread ratio is reported beside it.

Results: benchmarks/results/speed.json (and a table on stdout). Progress on stderr.

    .venv/bin/python benchmarks/run_speed.py --data-dir ../shared/data

The stages are in benchmarks/speed_stages.py, the baselines and the FLOP model in benchmarks/naive.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Clock, PeakMemory, console, log, machine, print_stdout, results_header, ru_maxrss_mb  # noqa: E402
from benchmarks.naive import NAIVE_DTYPE, naive_extract  # noqa: E402
from benchmarks.speed_stages import (EXTRACT_TARGET, FILTER_TARGET, LAYER, MODEL, PAPER_CONTEXT, probekit_extract,  # noqa: E402
                                     replicate, stage_extract, stage_filter, stage_fit)
from probekit.errors import ProbekitError  # noqa: E402
from probekit.io import write_json  # noqa: E402

MACHINE_FIELDS = ("cpu_count", "cpus_available", "torch", "torch_threads", "transformers", "python", "platform", "processor",
                  "load_average_at_start=load_average", "git_commit")


# ---- the memory child ------------------------------------------------------------------------------------------


def child_main(args) -> None:
    """Run one extraction alone in this process and print its memory as one JSON line on stdout."""
    from probekit.models import load_model

    loaded = load_model(MODEL, dtype=NAIVE_DTYPE if args._child == "naive" else "auto")
    gc.collect()
    memory = PeakMemory(reset=True)  # the peak from here on is the extraction's, not the model loading's
    with Clock() as clock:
        if args._child == "naive":
            states, n_tokens = naive_extract(loaded, Path(args._traj), LAYER)
            held_mb = sum(s.nbytes for s in states) / 2**20
        else:
            res = probekit_extract(loaded, Path(args._traj), Path(args._work) / "store", shard_size=args._shard_size)
            n_tokens = int(res.manifest.get("stats", {}).get("n_tokens_processed", 0))
            held_mb = 0.0
    peak = memory.peak_mb()
    print(json.dumps({
        "mode": args._child,
        "rss_after_model_load_mb": round(memory.before_mb, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_growth_mb": round(peak - memory.before_mb, 1),
        "peak_reset_after_load": memory.was_reset,
        "ru_maxrss_mb": round(ru_maxrss_mb(), 1),
        "states_held_in_memory_mb": round(held_mb, 1),
        "n_tokens": n_tokens,
        "seconds": round(clock.seconds, 2),
    }))


# ---- output ----------------------------------------------------------------------------------------------------


def print_table(result: dict) -> None:
    from rich.table import Table

    ex, ft, fl = result["extraction"], result["fit"], result["filter"]
    mem = ex["memory"]
    t = Table(title=f"probekit speed ({result['date']}, {result['machine']['cpus_available']} CPUs, torch {result['machine']['torch']})")
    for col in ("stage", "probekit", "naive / context", "ratio", "target"):
        t.add_column(col)

    def yn(ok):
        if ok is None:
            return "n/a (quick)"
        return "[green]met[/green]" if ok else "[red]not met[/red]"

    t.add_row("extraction, tokens/s", f"{ex['probekit']['tokens_per_s']:,.0f}", f"{ex['naive']['tokens_per_s']:,.0f}",
              f"{ex['speedup']:.2f}x", f">= {EXTRACT_TARGET:g}x: {yn(ex['target_met'])}")
    fr = ex["flop_rate"]
    t.add_row(f"extraction, GFLOP/s ({ex['probekit']['model_dtype']} vs {ex['naive']['model_dtype']})",
              f"{fr['probekit_gflops_achieved']:,.1f} ({fr['probekit_fraction_of_peak']:.0%} of peak)",
              f"{fr['naive_gflops_achieved']:,.1f} ({fr['naive_fraction_of_peak']:.0%} of peak)", "",
              "peaks: " + ", ".join(f"{p['dtype']} {p['gflops']:,.0f}" for p in fr["matmul_peaks"]))
    pk0, pk1 = mem["probekit"]
    nv0 = mem["naive"][0]
    t.add_row(f"extraction, peak RSS growth (N={pk0['n_trajectories']})", f"{pk0['peak_growth_mb']:,.0f} MB",
              f"{nv0['peak_growth_mb']:,.0f} MB", f"{nv0['peak_growth_mb'] / max(pk0['peak_growth_mb'], 1e-9):.1f}x less", "")
    naive_4n = next((r for r in mem["naive"] if r["n_trajectories"] == pk1["n_trajectories"]), None)
    t.add_row(f"extraction, peak RSS growth (4N={pk1['n_trajectories']})", f"{pk1['peak_growth_mb']:,.0f} MB",
              f"{naive_4n['peak_growth_mb']:,.0f} MB" if naive_4n else "-",
              f"4N/N {mem['probekit_growth_ratio_4n_over_n']}", f"flat: {yn(mem['probekit_flat'])}")
    t.add_row("fit, one (λ=0.5)", f"{ft['one_fit']['seconds']:.1f} s", "-", "", "")
    t.add_row(f"fit, λ sweep ({ft['sweep']['n_fits']} fits)", f"{ft['sweep']['seconds']:.1f} s", "-", "",
              f"< 10 min: {yn(ft['sweep']['target_met'])}")
    if "sweep_fit_store" in ft:
        big = ft["sweep_fit_store"]
        t.add_row(f"fit, λ sweep on --fit-store ({big['n_fits']} fits, {big['n_trajectories']:,} traj.)", f"{big['seconds']:.1f} s",
                  "-", "", f"< 10 min: {yn(big['target_met'])}")
    t.add_row("paper (context only)", "-", PAPER_CONTEXT, "", "")
    for label, r in (("best vs best", fl["best_vs_best"]), ("1 thread both", fl["one_thread_both"])):
        pk = next(x for x in fl["by_threads"] if x["torch_threads"] == r["probekit_threads"])
        nv = next(x for x in fl["by_threads"] if x["torch_threads"] == r["naive_threads"])
        threads = f"{r['probekit_threads']} vs {r['naive_threads']} threads"
        t.add_row(f"filter, Q-values/s ({label}: {threads})", f"{pk['probekit_q_values_per_s']:,.0f}", f"{nv['naive_q_values_per_s']:,.0f}",
                  f"{r['speedup_q_values_per_s']:.1f}x", f">= {FILTER_TARGET:g}x: {yn(r['target_met_q_values_per_s'])}")
        t.add_row(f"filter, time to decide the store ({label})", f"{pk['probekit_seconds']:.3f} s", f"{nv['naive_seconds_for_whole_store']:.2f} s",
                  f"{r['speedup_time_to_decide_store']:.1f}x", f">= {FILTER_TARGET:g}x: {yn(r['target_met_time_to_decide_store'])}")
    print_stdout(t)


# ---- main ------------------------------------------------------------------------------------------------------


def add_cli_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="real data folder, or a data-set name (probekit's cache); default ../shared/data from the repo root "
                        "when present, else probekit's cache with gsm8k-model-solutions fetched (verified by sha256)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    p.add_argument("--n-extract", type=int, default=None, help="GSM8K trajectories for extraction, fit and filter (default 160; quick 48)")
    p.add_argument("--chunks", type=int, default=None, help="interleaved extraction chunks (default 4; quick 2)")
    p.add_argument("--n-mem", type=int, default=None, help="N of the memory runs (probekit at N and 4N; default n-extract/8)")
    p.add_argument("--mem-shard-size", type=int, default=None, help="shard size of the memory runs (small, so shards flush; default n-mem/2)")
    p.add_argument("--mem-repeats", type=int, default=None, help="runs of each probekit memory measurement, medians compared (default 3; quick 1)")
    p.add_argument("--naive-mem-4n", action="store_true", help="also measure the naive baseline's memory at 4N (slower)")
    p.add_argument("--n-naive-filter", type=int, default=0, help="trajectories for the naive filter loop (0 = all; the rate is extrapolated otherwise)")
    p.add_argument("--filter-repeats", type=int, default=5, help="repeats of probekit's filter scoring (median reported)")
    p.add_argument("--fit-store", type=Path, default=None,
                   help="also time the λ sweep on this existing store (e.g. make reproduce's GSM8K store), beside the benchmark's own")
    p.add_argument("--fit-layer", type=int, default=16, help="layer of --fit-store to fit on")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (stores, checkpoints)")
    p.add_argument("--_child", choices=("extract", "naive"), help=argparse.SUPPRESS)
    p.add_argument("--_traj", help=argparse.SUPPRESS)
    p.add_argument("--_work", help=argparse.SUPPRESS)
    p.add_argument("--_shard-size", type=int, default=8, help=argparse.SUPPRESS)


def main(args) -> int:
    if args._child:
        child_main(args)
        return 0
    try:
        return run(args)
    except ProbekitError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2


def run(args) -> int:
    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.schema import write_trajectories

    from probekit.data.fetch import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir, default=ROOT.parent / "shared" / "data", need=("gsm8k-model-solutions",)).resolve()
    src = data_dir / "gsm8k" / "example_model_solutions.jsonl"
    if not src.is_file():
        raise ProbekitError(f"{src}: not found. Pass --data-dir pointing at a data folder that holds "
                            f"gsm8k/example_model_solutions.jsonl, or `--data-dir gsm8k-model-solutions` to fetch it")
    args.n_extract = args.n_extract or (48 if args.quick else 160)
    args.chunks = args.chunks or (2 if args.quick else 4)
    if args.chunks < 1:
        raise ProbekitError("--chunks must be at least 1")
    n_mem = args.n_mem or max(args.n_extract // 8, 4)
    args.mem_repeats = 1 if args.quick and args.mem_repeats is None else (args.mem_repeats or 3)
    if args.mem_repeats < 1:
        raise ProbekitError("--mem-repeats must be at least 1")
    args.mem_shard_size = args.mem_shard_size or max(n_mem // 2, 1)
    if args.n_extract < 24:
        raise ProbekitError("--n-extract must be at least 24 (6 problems), so that the fit has train and validation pairs")
    if args.mem_shard_size < 1 or n_mem < 1:
        raise ProbekitError("--n-mem and --mem-shard-size must be positive")
    if args.filter_repeats < 1:
        raise ProbekitError("--filter-repeats must be at least 1")

    started = Clock().start()
    result: dict = {
        **results_header("probekit speed against naive baselines (same process, same data, model and layer)", cwd=True,
                         machine=machine(*MACHINE_FIELDS)),
        "settings": {"model": MODEL, "layer": LAYER, "n_extract": args.n_extract, "n_mem": n_mem, "mem_shard_size": args.mem_shard_size,
                     "mem_repeats": args.mem_repeats,
                     "quick": bool(args.quick), "data": str(src)},
        "notes": [
            "Ratios compare methods measured one after the other in the same process on the same inputs; absolute times "
            "depend on the machine and on other load (see load_average_at_start/end).",
        ],
    }
    log(f"data: {src}")
    trajectories = labelled_solutions(src)
    need = max(args.n_extract, n_mem)
    if len(trajectories) < need:
        raise ProbekitError(f"{src}: only {len(trajectories)} trajectories, {need} needed")

    work = Path(tempfile.mkdtemp(prefix="probekit-bench-"))
    try:
        subset = work / "gsm8k-subset.jsonl"
        write_trajectories(subset, trajectories[: args.n_extract])
        mem_small, mem_large = work / "mem-n.jsonl", work / "mem-4n.jsonl"
        write_trajectories(mem_small, trajectories[:n_mem])
        write_trajectories(mem_large, replicate(trajectories[:n_mem], 4))
        del trajectories

        from probekit.models import dtype_name, load_model

        log(f"model: {MODEL}")
        loaded = load_model(MODEL)
        naive_loaded = load_model(MODEL, dtype=NAIVE_DTYPE)
        result["machine"]["model_device"] = str(loaded.device)
        result["machine"]["model_dtype"] = {"probekit": dtype_name(loaded.dtype), "probekit_choice": loaded.dtype_choice,
                                            "naive": dtype_name(naive_loaded.dtype)}

        result["extraction"], store_dir = stage_extract(args, loaded, naive_loaded, work, subset, mem_small, mem_large, n_mem)
        del loaded, naive_loaded
        gc.collect()
        result["fit"], ckpt = stage_fit(args, work, store_dir)
        result["filter"] = stage_filter(args, store_dir, ckpt)
    finally:
        if args.keep_work:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    result["machine"].update(machine("load_average_at_end=load_average"))
    result["total_seconds"] = round(started.elapsed, 1)
    write_json(args.out, result)
    print_table(result)
    log(f"wrote {args.out} ({result['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
