"""The model-size curve on this CPU: extraction and generation speed of random-weight models with real models' shapes.

For each shape (benchmarks/model_configs.py: SmolLM2-135M, SmolLM2-360M, Llama-3.2-1B, Qwen2.5-1.5B by default),
in one process, with the same GSM8K trajectories (the first N in file order: whole problems of 4 solutions sharing
a prompt) and the same random weights (seed 0) in both dtypes:

1. extraction  three methods, interleaved (the order reverses every repeat), several repeats, medians:
               `probekit`           probekit.extract.run.extract with its defaults (--model-dtype auto, which picks
                                    bfloat16 on this CPU where its matmuls measure faster; forward stopped after the
                                    middle layer; length buckets; shared prompts; float16 HDF5 shards written);
               `probekit_unshared`  the same with --no-share-prompts, so every token of every trajectory runs: the
                                    FLOPs it executes are exactly `forward_flops`'s, which makes its GFLOP/s the
                                    honest fraction of the matmul peak;
               `naive`              benchmarks/naive.py's loop (whole model in float32, output_hidden_states, batches
                                    of 8, right padding).
               The ratio is the median over repeats of naive seconds / probekit seconds (paired within a repeat). The
               matmul peaks (float32 and bfloat16, 2048³) are measured right after each size's repeats, in the same
               process and conditions. Memory: each run's peak resident memory above what was resident before it
               (the two models loaded), VmHWM after resetting it (/proc/self/clear_refs), beside the weights' size.
2. generation  plain `model.generate` (naive.plain_generate) against `probekit generate` storing the middle layer's
               states of every token, the model in probekit's dtype for both, same prompts and sampling settings,
               interleaved repeats, medians of tokens/s. Random weights never write the stop string, so every sample
               runs to max_new_tokens in both.
3. profile     torch.profiler over one probekit extraction at one size (default Llama-3.2-1B): the top ops by self
               CPU time, and the shares of matmuls, attention and everything else.

    .venv/bin/python benchmarks/model_size.py --data-dir ../shared/data
"""

from __future__ import annotations

import gc
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.generation_task import SAMPLING  # noqa: E402
from benchmarks.harness import (ArgumentParser, PeakMemory, add_threads_option, apply_threads, log, machine,  # noqa: E402
                                print_stdout, results_header, table, timed)
from benchmarks.model_configs import SHAPES, parameter_count, random_model  # noqa: E402
from benchmarks.naive import NAIVE_BATCH, forward_flops, matmul_peak, naive_extract, plain_generate  # noqa: E402
from benchmarks.speed_stages import EXTRACT_TARGET, input_lengths, probekit_extract, warm_up  # noqa: E402
from probekit.io import write_json  # noqa: E402

MACHINE_FIELDS = ("cpu", "cpu_count", "cpus_available", "bf16_instructions", "ram_gb", "torch", "torch_threads", "transformers",
                  "python", "load_average_at_start=load_average", "git_commit")
DEFAULT_SIZES = "smollm2-135m,smollm2-360m,llama-3.2-1b,qwen2.5-1.5b"
PEAK_TARGET = 0.60  # of the bfloat16 matmul peak, at 1B
METHODS = ("probekit", "probekit_unshared", "naive")


def add_cli_args(ap: ArgumentParser) -> None:
    ap.add_argument("--data-dir", default=None, help="folder holding gsm8k/example_model_solutions.jsonl; default ../shared/data "
                    "when present, else probekit's cache")
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"shapes from benchmarks/model_configs.py (known: {', '.join(SHAPES)})")
    ap.add_argument("--trajectories", default="16,8,4,4", help="trajectories per repeat at each size (4 = one GSM8K problem)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gen-prompts", type=int, default=4)
    ap.add_argument("--gen-samples", type=int, default=2)
    ap.add_argument("--gen-repeats", type=int, default=2)
    ap.add_argument("--profile-size", default="llama-3.2-1b", help="shape whose extraction is profiled ('' = none)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model_size.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/probekit-model-size"))
    add_threads_option(ap)
    ap.add_check(lambda a: next((f"unknown shape {s!r}" for s in a.sizes.split(",") if s not in SHAPES), None))
    ap.add_check(lambda a: None if len(a.trajectories.split(",")) == len(a.sizes.split(",")) else "one --trajectories count per size")


def extraction(pk, nv, subset: Path, work: Path, repeats: int) -> dict:
    """Interleaved repeats of the three extraction methods on `subset`; medians, the ratio, FLOP rates, memory."""
    from probekit.models import dtype_name, resolve_layers
    from probekit.store import Store

    layer = resolve_layers(None, pk.num_layers)[0]
    per_traj = input_lengths(pk, subset)
    n_in = sum(per_traj)
    warm_up(pk)
    warm_up(nv)
    runs = {
        "probekit": lambda out: probekit_extract(pk, subset, out, layer=layer),
        "probekit_unshared": lambda out: probekit_extract(pk, subset, out, layer=layer, share_prompts=False),
        "naive": lambda out: naive_extract(nv, subset, layer),
    }
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    growth: dict[str, list[float]] = {m: [] for m in METHODS}
    naive_states = None
    for r in range(repeats):
        for name in (METHODS if r % 2 == 0 else METHODS[::-1]):
            out = work / f"store-{name}-{r}"
            gc.collect()
            memory = PeakMemory(reset=True)
            value, wall, _ = timed(lambda: runs[name](out))
            growth[name].append(memory.peak_mb() - memory.before_mb)
            seconds[name].append(wall)
            if name == "naive":
                if value[1] != n_in:
                    raise RuntimeError(f"token counts differ: naive {value[1]}, probekit encoding {n_in}")
                naive_states = value[0]
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{m} {n_in / seconds[m][-1]:,.0f} tok/s" for m in METHODS))
    stored = Store(work / f"store-probekit-{repeats - 1}").load_layer(layer)
    naive_all = np.concatenate(naive_states)
    row_rel = np.linalg.norm(stored - naive_all, axis=1) / np.maximum(np.linalg.norm(naive_all, axis=1), 1e-12)
    for r in range(repeats):
        for name in ("probekit", "probekit_unshared"):
            shutil.rmtree(work / f"store-{name}-{r}", ignore_errors=True)

    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    pk_peak = peaks[dtype_name(pk.dtype)]["gflops"]
    med = {m: float(np.median(s)) for m, s in seconds.items()}
    ratios = [n / p for n, p in zip(seconds["naive"], seconds["probekit"])]
    cfg = pk.model.config
    pk_flops = forward_flops(cfg, layer, per_traj)
    nv_flops = forward_flops(cfg, cfg.num_hidden_layers, per_traj, lm_head=True)
    rate = {
        "probekit_unshared_gflops": round(pk_flops / med["probekit_unshared"] / 1e9, 1),
        "probekit_unshared_fraction_of_peak": round(pk_flops / med["probekit_unshared"] / 1e9 / pk_peak, 3),
        "probekit_equivalent_gflops": round(pk_flops / med["probekit"] / 1e9, 1),
        "probekit_equivalent_fraction_of_peak": round(pk_flops / med["probekit"] / 1e9 / pk_peak, 3),
        "naive_gflops": round(nv_flops / med["naive"] / 1e9, 1),
        "naive_fraction_of_float32_peak": round(nv_flops / med["naive"] / 1e9 / peaks["float32"]["gflops"], 3),
        "peak_dtype": dtype_name(pk.dtype),
        "matmul_peaks": list(peaks.values()),
    }
    return {
        "layer": layer, "n_trajectories": len(per_traj), "n_input_tokens": n_in,
        "seconds": {m: [round(x, 3) for x in s] for m, s in seconds.items()},
        "tokens_per_s_median": {m: round(n_in / s, 1) for m, s in med.items()},
        "speedup_vs_naive_median": round(float(np.median(ratios)), 2),
        "speedup_vs_naive_min_max": [round(min(ratios), 2), round(max(ratios), 2)],
        "unshared_speedup_vs_naive_median": round(float(np.median([n / p for n, p in zip(seconds["naive"], seconds["probekit_unshared"])])), 2),
        "target": f">= {EXTRACT_TARGET:g}x", "target_met": bool(np.median(ratios) >= EXTRACT_TARGET),
        "flop_rate": rate,
        "memory_mb": {"weights": {"probekit": round(_weights_mb(pk), 1), "naive": round(_weights_mb(nv), 1)},
                      "peak_growth_max_over_repeats": {m: round(max(g), 1) for m, g in growth.items()}},
        "agreement_row_relative_error_median": round(float(np.median(row_rel)), 4),
    }


def _weights_mb(loaded) -> float:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in loaded.model.parameters()}.values()) / 2**20


def generation(pk, layer: int, work: Path, n_prompts: int, samples: int, repeats: int) -> dict:
    """plain model.generate vs probekit generate with the layer's states captured and stored; interleaved, medians."""
    from probekit.data.synth import synth_prompts
    from probekit.generate.config import GenerateConfig
    from probekit.generate.generation import generate

    prompts = synth_prompts(n_prompts, 1, 1, shots=2, seed=0)
    cfg = GenerateConfig(samples=samples, template="raw", layers=str(layer), answer="synth", batch_size=n_prompts * samples, **SAMPLING)
    generate(prompts[:1], work / "gen-warm", cfg, loaded=pk, overwrite=True)
    rates: dict[str, list[float]] = {"plain_model_generate": [], "probekit_generate": []}
    for r in range(repeats):
        def plain():
            return plain_generate(pk, prompts, samples, seed=r)

        def probekit():
            return generate(prompts, work / f"gen-{r}", cfg, loaded=pk, overwrite=True).stats["tokens_generated"]

        for name, fn in (list(zip(rates, (plain, probekit))) if r % 2 == 0 else list(zip(rates, (plain, probekit)))[::-1]):
            n, s, _ = timed(fn)
            rates[name].append(n / s)
        log(f"  generation repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in rates.items()))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {"prompts": n_prompts, "samples": samples, "max_new_tokens": SAMPLING["max_new_tokens"], "layer_captured": layer,
            "tokens_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "probekit_over_plain": round(med["probekit_generate"] / med["plain_model_generate"], 3)}


def profile(pk, subset: Path, work: Path) -> dict:
    """Where one probekit extraction spends its time: top ops by self CPU time, and matmul / attention / other shares."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from probekit.models import resolve_layers

    layer = resolve_layers(None, pk.num_layers)[0]
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        _, wall, _ = timed(lambda: probekit_extract(pk, subset, work / "store-profile", layer=layer))
    shutil.rmtree(work / "store-profile", ignore_errors=True)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmul (mm, addmm, bmm, matmul)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::_mkldnn"),
              "attention (scaled_dot_product)": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),}
    shares = {g: sum(e.self_cpu_time_total for e in events if e.key.startswith(prefixes)) / total for g, prefixes in groups.items()}
    shares["everything else"] = 1 - sum(shares.values())
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return {"shape": pk.name, "tool": "torch.profiler (CPU activities), one probekit extraction of the size's trajectories",
            "wall_seconds_profiled": round(wall, 3), "self_cpu_seconds_total": round(total / 1e6, 3),
            "ops_fraction_of_wall": round(total / 1e6 / wall, 3),
            "shares": {k: round(v, 3) for k, v in shares.items()},
            "top_ops_by_self_cpu": [{"op": e.key[:70], "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 1),
                                     "share": round(e.self_cpu_time_total / total, 3)} for e in top]}


def measure_size(args, name: str, n_traj: int, tokenizer, trajectories: list) -> dict:
    import torch

    from probekit.data.schema import write_trajectories
    from probekit.models import default_cache_dir, dtype_name, resolve_dtype

    shape = SHAPES[name]
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    subset = work / "subset.jsonl"
    write_trajectories(subset, trajectories[:n_traj])
    dtype, choice = resolve_dtype("auto", torch.device("cpu"), shape.fields["hidden_size"], default_cache_dir())
    log(f"{name}: building random-weight models ({dtype_name(dtype)}: {choice}; and float32 for the naive loop)")
    pk = random_model(shape, tokenizer, dtype)
    nv = random_model(shape, tokenizer, torch.float32)
    out = {"shape": name, "hub_id": shape.hub_id, "config_class": shape.config_class, "parameters": parameter_count(pk),
           "num_layers": pk.num_layers, "hidden_size": pk.hidden_size, "probekit_dtype": dtype_name(dtype), "dtype_choice": choice}
    out["extraction"] = extraction(pk, nv, subset, work, args.repeats)
    del nv
    gc.collect()
    out["generation"] = generation(pk, out["extraction"]["layer"], work, args.gen_prompts, args.gen_samples, args.gen_repeats)
    if name == args.profile_size:
        log(f"  profiling one extraction of {name}")
        out["profile"] = profile(pk, subset, work)
    shutil.rmtree(work, ignore_errors=True)
    return out


def summary_rows(sizes: list[dict]) -> list[list]:
    rows = []
    for s in sizes:
        e, g = s["extraction"], s["generation"]
        rows.append([s["shape"], f"{s['parameters'] / 1e6:,.0f}M", s["probekit_dtype"], e["n_input_tokens"],
                     f"{e['tokens_per_s_median']['probekit']:,.0f}", f"{e['tokens_per_s_median']['naive']:,.0f}",
                     f"{e['speedup_vs_naive_median']:.2f}x ({e['speedup_vs_naive_min_max'][0]:.2f}-{e['speedup_vs_naive_min_max'][1]:.2f})",
                     f"{e['flop_rate']['probekit_unshared_fraction_of_peak']:.0%}",
                     f"{e['memory_mb']['peak_growth_max_over_repeats']['probekit']:,.0f} / {e['memory_mb']['peak_growth_max_over_repeats']['naive']:,.0f}",
                     f"{g['tokens_per_s_median']['probekit_generate']:.1f} / {g['tokens_per_s_median']['plain_model_generate']:.1f}"])
    return rows


def main(args) -> int:
    from probekit.data.fetch import resolve_data_dir
    from probekit.data.gsm8k import labelled_solutions
    from probekit.models import load_model

    threads = apply_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir, default=ROOT.parent / "shared" / "data", need=("gsm8k-model-solutions",))
    trajectories = labelled_solutions(data_dir / "gsm8k" / "example_model_solutions.jsonl")
    tokenizer = load_model("smollm2-135m").tokenizer
    result = {**results_header("model-size curve on this CPU: random-weight models of real shapes", machine=machine(*MACHINE_FIELDS)),
              "torch_threads": threads, "repeats": args.repeats, "naive_batch": NAIVE_BATCH,
              "tokenizer": "the bundled SmolLM2 tokenizer for every shape (49,152 ids, within every vocabulary)",
              "data": "GSM8K labelled model solutions (probekit.data.gsm8k.labelled_solutions), the first N in file order",
              "targets": {"extraction_speedup": f">= {EXTRACT_TARGET:g}x the naive float32 loop at every size",
                          "fraction_of_bf16_peak_at_1b": f">= {PEAK_TARGET:.0%}"},
              "sizes": []}
    for name, n in zip(args.sizes.split(","), (int(x) for x in args.trajectories.split(","))):
        result["sizes"].append(measure_size(args, name, n, tokenizer, trajectories))
        write_json(args.out, result)
    result["load_average_at_end"] = machine("load_average")["load_average"]
    write_json(args.out, result)
    print_stdout(table("model-size curve (medians over repeats; random weights, real shapes)",
                       ["shape", "params", "dtype", "tokens", "probekit tok/s", "naive tok/s", "ratio (min-max)",
                        "% bf16 peak (unshared)", "peak MB pk / naive", "gen tok/s capture / plain"], summary_rows(result["sizes"])))
    return 0


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
