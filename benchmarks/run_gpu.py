"""`make bench` on a CUDA GPU: extraction, fit, filter and generation against their naive baselines, plus the cost curves.

The CPU benchmarks (run_speed.py, run_generation.py, run_scale.py) measure this
project's own machine; this script runs the same measurements, with the same
functions, on a GPU and records them in one JSON with the device named
(benchmarks/results/speed-gpu.json):

1. extraction  probekit.extract (--model-dtype auto = bfloat16 on CUDA, forward
               truncated after the layer, length-bucketed batches, float16 shards)
               against the naive loop of naive.py (whole model in float32,
               output_hidden_states, batches of 8, right padding) and the same
               naive loop with the model in bfloat16 (a fairer GPU baseline),
               interleaved in chunks; achieved TFLOP/s against a measured
               bfloat16 matmul peak; peak GPU memory of each; and a torch.profiler
               table of one probekit chunk (where the time goes: kernels vs host).
1b. overlap    the writer lane before and after (benchmarks/overlap.py): probekit.extract at 135M with
               --no-overlap and --overlap, interleaved, medians, the two stores compared, and the GPU's
               busy fraction (torch.profiler kernel time / wall time) over one run of each.
2. fit         one fit (λ = 0.5) with the probe on the GPU and on the CPU, side by
               side, and the 18-fit λ sweep with the probe on the GPU.
3. filter      probekit's scorer (score_store + apply_threshold) with φ on the GPU
               and on the CPU, against naive.py's per-token loop on the GPU.
4. generation  plain `model.generate` vs probekit's decoding loop without capture vs
               `probekit generate` (states of layer 15 captured and stored).
5. curves      benchmarks/run_scale.py --device cuda at the sizes given (a child
               process; its JSON is written beside this one).
6. size        a user's 8B-class model: random-weight Llama-3.1-8B in bfloat16 against
               the plain bfloat16 forward over the same batches and the naive loops
               (benchmarks/gpu_size.py). `--tiny` runs this stage alone on a CPU with a
               4-layer shape (and the overlap stage with 8 trajectories): the smoke test that the
               script runs end to end.

Every stage is timed on its own and a failure is recorded, not fatal, so one
run on a lent machine brings back everything that worked. CUDA work is timed
with a synchronisation before each clock read.

    python benchmarks/run_gpu.py --data-dir ../shared/data --model smollm2-135m --out benchmarks/results/speed-gpu.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (Clock, cuda_peak_bytes, cuda_reset_peak, cuda_sync, machine, plain_log as log,  # noqa: E402
                                results_header, timed)
from benchmarks.naive import (NAIVE_BATCH, decode_without_capture, forward_flops, matmul_peak_cuda, naive_extract,  # noqa: E402
                              naive_filter, plain_generate)
from benchmarks.speed_stages import (LAYER, SKIP_FIRST, SWEEP_LAMS, SWEEP_SEEDS, input_lengths, probekit_extract,  # noqa: E402
                                     separated_threshold, warm_up)
from benchmarks.gpu_size import stage_size  # noqa: E402
from benchmarks.overlap_stage import measure as measure_overlap  # noqa: E402
from probekit.io import write_json  # noqa: E402

MACHINE_FIELDS = ("torch", "transformers", "python", "cpu_count", "cuda_available", "gpu_properties")


# ---- 1. extraction -----------------------------------------------------------------------


def stage_extract(args, loaded, naive32, naive16, subset: Path, work: Path) -> dict:
    from probekit.models import dtype_name

    per_traj = input_lengths(loaded, subset)
    n = len(per_traj)
    n_in = sum(per_traj)
    chunk = -(-n // args.chunks)
    chunk = -(-chunk // NAIVE_BATCH) * NAIVE_BATCH
    n_chunks = -(-n // chunk)
    store_dir = work / "store-gsm8k"
    for m in (loaded, naive32, naive16):
        warm_up(m)
    totals = {"probekit": 0.0, "naive_float32": 0.0, "naive_bfloat16": 0.0}
    peaks = {k: 0 for k in totals}
    naive_tokens = 0
    per_chunk = []
    for k in range(n_chunks):
        lo, hi = k * chunk, min(n, (k + 1) * chunk)
        runs = {
            "probekit": lambda: probekit_extract(loaded, subset, store_dir, shard_size=chunk, shard=f"{k}/{n_chunks}", model=args.model),
            "naive_float32": lambda: naive_extract(naive32, subset, LAYER, start=lo, stop=hi),
            "naive_bfloat16": lambda: naive_extract(naive16, subset, LAYER, start=lo, stop=hi),
        }
        order = list(runs) if k % 2 == 0 else list(reversed(runs))
        row = {"chunk": k, "order": order, "tokens": sum(per_traj[lo:hi])}
        for name in order:
            cuda_reset_peak()
            value, seconds, _ = timed(runs[name], sync=True, collect=False)
            peaks[name] = max(peaks[name], cuda_peak_bytes())
            totals[name] += seconds
            row[f"{name}_seconds"] = round(seconds, 3)
            if name == "naive_float32":
                naive_tokens += value[1]
        per_chunk.append(row)
        log(f"  chunk {k + 1}/{n_chunks}: " + ", ".join(f"{m} {row['tokens'] / row[m + '_seconds']:,.0f} tok/s" for m in totals))
    if naive_tokens != n_in:
        raise RuntimeError(f"token counts differ: naive {naive_tokens}, probekit encoding {n_in}")

    peak = matmul_peak_cuda("bfloat16")
    peak32 = matmul_peak_cuda("float32")
    cfg = loaded.model.config
    pk_flops = forward_flops(cfg, LAYER, per_traj)
    nv_flops = forward_flops(cfg, cfg.num_hidden_layers, per_traj, lm_head=True)
    result = {
        "data": f"GSM8K labelled model solutions, first {n} trajectories in file order",
        "n_trajectories": n, "n_input_tokens": n_in, "layer": LAYER, "chunks": n_chunks, "per_chunk": per_chunk,
        "tokens_per_s": {m: round(n_in / s, 1) for m, s in totals.items()},
        "seconds": {m: round(s, 3) for m, s in totals.items()},
        "speedup_vs_naive_float32": round(totals["naive_float32"] / totals["probekit"], 2),
        "speedup_vs_naive_bfloat16": round(totals["naive_bfloat16"] / totals["probekit"], 2),
        "peak_gpu_memory_mb": {m: round(v / 2**20, 1) for m, v in peaks.items()},
        "model_dtype": {"probekit": dtype_name(loaded.dtype), "naive_float32": "float32", "naive_bfloat16": "bfloat16"},
        "flop_rate": {
            "probekit_tflops_achieved": round(pk_flops / totals["probekit"] / 1e12, 2),
            "probekit_fraction_of_bf16_peak": round(pk_flops / totals["probekit"] / 1e12 / peak["tflops"], 4),
            "naive_float32_tflops_achieved": round(nv_flops / totals["naive_float32"] / 1e12, 2),
            "naive_float32_fraction_of_float32_peak": round(nv_flops / totals["naive_float32"] / 1e12 / peak32["tflops"], 4),
            "matmul_peaks": [peak, peak32],
            "formula": "benchmarks/naive.py forward_flops (useful matmul FLOPs; padding, norms, rotary not counted)",
        },
        "profile_of_one_probekit_chunk": profile_chunk(loaded, subset, work / "store-profile", chunk, n_chunks, args.model),
    }
    return result


def profile_chunk(loaded, subset: Path, store_dir: Path, chunk: int, n_chunks: int, model: str, layer: int = LAYER,
                  overlap: bool = False) -> dict:
    """Where one probekit extraction chunk spends its time: GPU kernel time against wall time, top ops by each."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    clock = Clock(sync=True).start()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        probekit_extract(loaded, subset, store_dir, shard_size=chunk, shard=f"0/{n_chunks}", model=model, layer=layer, overlap=overlap)
        cuda_sync()
    wall = clock.elapsed
    events = prof.key_averages()

    def top(attr: str, k: int = 12) -> list[dict]:
        rows = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:k]
        return [{"op": e.key[:80], "calls": e.count, "self_cuda_ms": round(getattr(e, "self_device_time_total", 0) / 1000, 2),
                 "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2)} for e in rows]

    kernel_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    return {"wall_seconds_profiled": round(wall, 3), "gpu_kernel_seconds": round(kernel_us / 1e6, 3),
            "gpu_busy_fraction": round(kernel_us / 1e6 / wall, 3),
            "top_by_self_cuda_time": top("self_device_time_total"), "top_by_self_cpu_time": top("self_cpu_time_total"),
            "note": "profiling adds overhead to host time; the busy fraction says how much of the wall time the GPU computes"}


# ---- 2. fit ---------------------------------------------------------------------------------


def stage_fit(args, store_dir: Path, work: Path) -> tuple[dict, dict]:
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe
    from probekit.store import Store
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    store = Store(store_dir)
    out: dict = {"n_trajectories": len(store), "n_pairs": len(store.pairs()), "n_stored_states": int(store.n_rows), "by_device": {}}
    ckpts = {}
    for device in args.probe_devices:
        cfg = FitConfig().vary(lam=0.5, layer=LAYER, device=device)
        ckpt, one, _ = timed(lambda: fit_probe(store, work / f"fit-{device}", cfg, overwrite=True), sync=True, collect=False)
        ckpts[device] = ckpt
        out["by_device"][device] = {"one_fit_seconds": round(one, 3), "train_seconds": ckpt.metrics["train"]["train_seconds"],
                                    "epochs_run": ckpt.metrics["train"]["epochs_run"],
                                    "valid_auroc": ckpt.metrics["valid"]["probe"]["auroc"]["value"]}
        log(f"  one fit on {device}: {one:.1f} s")
    # the 18-fit sweep on the probe device only (the CPU's is run_speed.py's, on the project's machine)
    sweep_cfg = SweepConfig(template=FitConfig().vary(device=args.device), lams=tuple(SWEEP_LAMS), layers=(LAYER,),
                            seeds=tuple(SWEEP_SEEDS))
    sweep, sw, _ = timed(lambda: run_sweep(store_dir, work / "sweep", sweep_cfg, overwrite=True), sync=True, collect=False)
    out["sweep"] = {"device": args.device, "fits": len(sweep["runs"]), "seconds": round(sw, 3)}
    log(f"  sweep of {len(sweep['runs'])} fits on {args.device}: {sw:.1f} s")
    return out, ckpts


# ---- 3. filter ------------------------------------------------------------------------------


def stage_filter(args, store_dir: Path, ckpts: dict) -> dict:
    import torch

    from probekit.filter.early_stop import apply_threshold, min_signal
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    store = Store(store_dir)
    meta = store.meta
    ckpt = ckpts["cpu"]
    positions = store.positions()
    first = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), LAYER)
    mins = min_signal(first.offsets, first.positions, first.q["mean"], SKIP_FIRST)
    thr, margin = separated_threshold(first.q["mean"], positions >= SKIP_FIRST, float(np.median(mins[np.isfinite(mins)])))
    res = {}
    decisions = {}
    for device in args.probe_devices:
        ckpt.model.to(device)

        def once():
            sc = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), LAYER)
            return apply_threshold(sc.offsets, sc.positions, sc.q["mean"], meta.completion_tokens, thr, SKIP_FIRST)

        once()
        times = []
        for _ in range(args.filter_repeats):
            d, s, _ = timed(once, sync=True, collect=False)
            times.append(s)
        decisions[device] = d
        res[device] = {"seconds_median": round(float(np.median(times)), 4), "q_values_per_s": round(store.n_rows / np.median(times), 1)}
    same = bool(all(np.array_equal(d.kept, decisions["cpu"].kept) for d in decisions.values()))
    ckpt.model.to(args.device)
    subset = np.arange(min(args.n_naive_filter, len(meta)))
    (kept, drop, n_q), nv, _ = timed(lambda: naive_filter(store, ckpt, subset, positions, thr, SKIP_FIRST), sync=True, collect=False)
    ckpt.model.to("cpu")
    agree = bool(np.array_equal(kept, decisions["cpu"].kept[subset]))
    whole = nv * len(meta) / len(subset)
    return {"n_stored_states": int(store.n_rows), "threshold": thr, "threshold_margin": margin, "probekit": res,
            "decisions_identical_across_devices": same,
            "naive_on_model_device": {"trajectories": int(len(subset)), "q_values": int(n_q), "seconds": round(nv, 3),
                           "q_values_per_s": round(n_q / nv, 1), "seconds_for_whole_store": round(whole, 3),
                           "decisions_agree_with_probekit": agree},
            "speedup_time_to_decide_store_best_probekit": round(whole / min(r["seconds_median"] for r in res.values()), 1),
            "torch_threads": torch.get_num_threads()}


# ---- 4. generation -------------------------------------------------------------------------


def stage_generation(args, loaded, work: Path, layer: int = LAYER) -> dict:
    from benchmarks.generation_task import SAMPLING
    from probekit.data.synth import synth_prompts
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate

    prompts = synth_prompts(args.gen_problems, 1, 1, shots=2, seed=0)
    cfg = GenerateConfig(samples=4, template="raw", layers=str(layer), answer="synth", batch_size=args.gen_batch, **SAMPLING)
    generate(prompts[:4], work / "gen-warm", cfg, loaded=loaded, overwrite=True)
    runs: dict[str, list] = {"plain_model_generate": [], "probekit_decode_without_capture": [], "probekit_generate": []}
    for r in range(2):
        n, s, _ = timed(lambda: plain_generate(loaded, prompts, 4, seed=r), sync=True, collect=False)
        runs["plain_model_generate"].append({"tokens": n, "seconds": round(s, 3)})
        n, s, _ = timed(lambda: decode_without_capture(loaded, prompts, cfg), sync=True, collect=False)
        runs["probekit_decode_without_capture"].append({"tokens": n, "seconds": round(s, 3)})
        res, s, _ = timed(lambda: generate(prompts, work / f"gen-{r}", cfg, loaded=loaded, overwrite=True), sync=True, collect=False)
        runs["probekit_generate"].append({"tokens": res.stats["tokens_generated"], "seconds": round(s, 3),
                                          "accuracy_per_sample": res.stats["accuracy_per_sample"]})
        log("  generation repeat " + str(r) + ": " + ", ".join(f"{k} {v[-1]['tokens'] / v[-1]['seconds']:.0f} tok/s" for k, v in runs.items()))
    tps = {k: float(np.median([x["tokens"] / x["seconds"] for x in v])) for k, v in runs.items()}
    return {"prompts": len(prompts), "samples": 4, "batch_size": args.gen_batch, "sampling": {**SAMPLING, "stop": "\\n\\n"},
            "runs": runs, "tokens_per_s_median": {k: round(v, 1) for k, v in tps.items()},
            "state_capture_throughput_cost": round(1 - tps["probekit_generate"] / tps["probekit_decode_without_capture"], 3),
            "throughput_cost_vs_plain_generate": round(1 - tps["probekit_generate"] / tps["plain_model_generate"], 3)}


# ---- 5. cost curves ------------------------------------------------------------------------


def stage_curves(args) -> dict:
    out = args.out.with_name(args.out.stem + "-scale.json")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_scale.py"), "--sizes", args.curve_sizes, "--device", args.device,
           "--work", str(args.work / "scale"), "--out", str(out)]
    log("  " + shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=str(ROOT), timeout=args.curve_timeout, capture_output=True, text=True)
        status = f"exit {proc.returncode}"
        tail = proc.stderr[-1500:]
    except subprocess.TimeoutExpired as exc:
        status = f"stopped after {args.curve_timeout} s"
        tail = (exc.stderr or b"").decode(errors="replace")[-1500:] if isinstance(exc.stderr, bytes) else str(exc.stderr)[-1500:]
    return {"command": shlex.join(cmd), "status": status, "json": out.name if out.exists() else None, "stderr_tail": tail}


# ---- main -----------------------------------------------------------------------------------


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", default=None, help="folder holding gsm8k/example_model_solutions.jsonl, or a `probekit data fetch` "
                    "name; default ../shared/data when present, else probekit's cache")
    ap.add_argument("--model", default="smollm2-135m", help="bundled name, model folder or .gguf file")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed-gpu.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/probekit-gpu-bench"))
    ap.add_argument("--n-extract", type=int, default=0, help="trajectories to extract (0 = all: 1,319 problems x 4 solutions)")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--filter-repeats", type=int, default=5)
    ap.add_argument("--n-naive-filter", type=int, default=100)
    ap.add_argument("--gen-problems", type=int, default=64)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--curve-sizes", default="1e5,1e6")
    ap.add_argument("--curve-timeout", type=float, default=240)
    ap.add_argument("--stages", default="extract,overlap,fit,filter,generation,curves,size")
    ap.add_argument("--overlap-trajectories", type=int, default=1024, help="trajectories the overlap stage extracts per run")
    ap.add_argument("--overlap-shard-size", type=int, default=256, help="shard size of the overlap stage (several shards)")
    ap.add_argument("--overlap-repeats", type=int, default=3)
    ap.add_argument("--size-shape", default="llama-3.1-8b", help="benchmarks/model_configs.py shape of the size stage")
    ap.add_argument("--size-trajectories", type=int, default=256, help="trajectories the size stage extracts per repeat")
    ap.add_argument("--size-repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="smoke run on a CPU: the overlap stage (8 trajectories) and the size stage "
                    "(a 4-layer shape, 8 trajectories), results under --work (not benchmarks/results)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of this script on a machine without a GPU")


def main(args) -> int:
    if args.tiny:
        args.device, args.stages, args.size_trajectories, args.size_repeats = "cpu", "overlap,size", 8, 1
        args.overlap_trajectories, args.overlap_shard_size, args.overlap_repeats = 8, 4, 1
        args.gen_problems, args.gen_batch, args.out = 2, 8, args.work / "speed-gpu-tiny.json"
    args.probe_devices = [args.device, "cpu"] if args.device != "cpu" else ["cpu"]

    import torch

    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.schema import write_trajectories
    from probekit.models import load_model

    if args.device != "cpu" and not torch.cuda.is_available():
        print("run_gpu.py: no CUDA device (this benchmark is for a GPU machine; run_speed.py is the CPU one)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    result = {**results_header("probekit on a CUDA GPU: extraction, fit, filter, generation, cost curves", machine=machine(*MACHINE_FIELDS)),
              "model": args.model, "stages": {}}

    def save() -> None:
        write_json(args.out, result)

    from probekit.data.fetch import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir, default=ROOT.parent / "shared" / "data", need=("gsm8k-model-solutions",))
    trajectories = labelled_solutions(data_dir / "gsm8k" / "example_model_solutions.jsonl")
    if args.n_extract:
        trajectories = trajectories[:args.n_extract]
    subset = args.work / "subset.jsonl"
    write_trajectories(subset, trajectories)
    with Clock() as clock:
        loaded = load_model(args.model, device=args.device, dtype="auto")
    result["model_load_seconds"] = round(clock.seconds, 2)
    stages = args.stages.split(",")
    store_dir = args.work / "store-gsm8k"
    ckpts: dict = {}
    for stage in stages:
        log(f"stage {stage}")
        clock = Clock().start()
        try:
            if stage == "extract":
                naive32 = load_model(args.model, device=args.device, dtype="float32")
                naive16 = load_model(args.model, device=args.device, dtype="bfloat16")
                value = stage_extract(args, loaded, naive32, naive16, subset, args.work)
                del naive32, naive16
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            elif stage == "overlap":
                overlap_subset = args.work / "subset-overlap.jsonl"
                write_trajectories(overlap_subset, trajectories[:args.overlap_trajectories])
                value = measure_overlap(loaded, overlap_subset, args.work, repeats=args.overlap_repeats, shard_size=args.overlap_shard_size,
                                        layer=LAYER, model=args.model, profile_chunk=profile_chunk)
            elif stage == "fit":
                value, ckpts = stage_fit(args, store_dir, args.work)
            elif stage == "filter":
                value = stage_filter(args, store_dir, ckpts)
            elif stage == "generation":
                value = stage_generation(args, loaded, args.work)
            elif stage == "curves":
                value = stage_curves(args)
            elif stage == "size":
                size_subset = args.work / "subset-size.jsonl"
                write_trajectories(size_subset, trajectories[:args.size_trajectories])
                value = stage_size(args, loaded.tokenizer, size_subset, args.work, stage_generation, profile_chunk)
            else:
                value = {"error": f"unknown stage {stage}"}
        except Exception as exc:  # a lent machine's one run must bring back every stage that worked
            value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            log(value["traceback"])
        value["stage_seconds"] = round(clock.elapsed, 2)
        result["stages"][stage] = value
        save()
        log(json.dumps({k: v for k, v in value.items() if not isinstance(v, (list, dict)) or k in ("tokens_per_s", "by_device", "probekit", "tokens_per_s_median", "gpu_busy_fraction")})[:1500])
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
