"""run_gpu.py's `size` stage: a user's 8B-class model on the GPU, as a random-weight Llama-3.1-8B (model_configs.py).

On the same trajectories, interleaved over repeats (medians):
* `probekit`          probekit.extract (bfloat16, forward stopped after the middle layer, length buckets, shared
                      prompts, float16 shards written);
* `plain_forward`     the floor: the same truncated bfloat16 forward (`forward_layers`) over the same length-bucketed
                      batches, tokenised, padded and on the GPU before the clock starts, nothing copied back or
                      written: what probekit adds above it is its overhead (target: within 1.2x);
* `naive_bfloat16`, `naive_float32`  benchmarks/naive.py's loop with the model in each dtype;
with achieved TFLOP/s against the measured bfloat16 matmul peak (target: >= 40 %), the GPU's busy fraction over one
probekit run (torch.profiler kernel time / wall time), peak GPU memory of each method; then generation with capture
against plain `model.generate` (run_gpu.stage_generation). `--tiny` runs the whole stage on a CPU with a 4-layer shape
in seconds, so the script is known to run end to end before a GPU is lent.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np

from benchmarks.harness import cuda_peak_bytes, cuda_reset_peak, cuda_sync, plain_log as log, timed
from benchmarks.model_configs import SHAPES, parameter_count, random_model
from benchmarks.naive import forward_flops, matmul_peak_cuda, naive_extract
from benchmarks.speed_stages import input_lengths, probekit_extract, warm_up

PLAIN_TARGET = 1.2  # probekit's time / the plain forward's
PEAK_TARGET = 0.40  # of the bfloat16 matmul peak


def prebuilt_batches(loaded, subset: Path) -> list[tuple]:
    """probekit's length-bucketed batches of `subset` (right padding), as device tensors: the plain forward's input."""
    from probekit.data.schema import read_trajectories
    from probekit.extract.plan import batch_token_budget, length_buckets
    from probekit.extract.render import encode, resolve_template
    from probekit.extract.run import pad_batch

    trajectories, _ = read_trajectories(subset)
    template = resolve_template("auto", loaded.tokenizer)
    ids = [encode(t, loaded.tokenizer, template, 1024).input_ids for t in trajectories]
    out = []
    for batch in length_buckets([len(x) for x in ids], batch_token_budget(None, loaded.device.type)):
        inp, mask, _ = pad_batch([ids[i] for i in batch], 0, left=False)
        out.append((inp.to(loaded.device), mask.to(loaded.device)))
    return out


def stage_size(args, tokenizer, subset: Path, work: Path, stage_generation, profile_chunk) -> dict:
    import torch

    from probekit.extract.forward import forward_layers
    from probekit.models import resolve_layers

    shape = SHAPES["tiny-llama" if args.tiny else args.size_shape]
    log(f"  building {shape.name} with random weights in bfloat16 on {args.device}")
    pk = random_model(shape, tokenizer, torch.bfloat16, device=args.device)
    layer = resolve_layers(None, pk.num_layers)[0]
    per_traj = input_lengths(pk, subset)
    n_in = sum(per_traj)
    batches = prebuilt_batches(pk, subset)
    warm_up(pk)

    def plain():
        for inp, mask in batches:
            forward_layers(pk.model, inp, mask, [layer])
        cuda_sync()

    runs = {"probekit": lambda r: probekit_extract(pk, subset, work / f"size-store-{r}", layer=layer),
            "plain_forward": lambda r: plain(),
            "naive_bfloat16": lambda r: naive_extract(pk, subset, layer)}
    seconds: dict[str, list[float]] = {m: [] for m in (*runs, "naive_float32")}
    peaks = {m: 0 for m in seconds}
    for r in range(args.size_repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            cuda_reset_peak()
            _, s, _ = timed(lambda: runs[name](r), sync=True, collect=False)
            seconds[name].append(s)
            peaks[name] = max(peaks[name], cuda_peak_bytes())
        shutil.rmtree(work / f"size-store-{r}", ignore_errors=True)
        log(f"  size repeat {r + 1}/{args.size_repeats}: " + ", ".join(f"{m} {n_in / v[-1]:,.0f} tok/s" for m, v in seconds.items() if v))
    busy = profile_chunk(pk, subset, work / "size-profile", len(per_traj), 1, pk.name, layer=layer)
    gen = stage_generation(args, pk, work, layer=layer)
    # the float32 naive loop last, alone: its model takes twice the bfloat16 one's memory
    nv = random_model(shape, tokenizer, torch.float32, device=args.device)
    for r in range(args.size_repeats):
        cuda_reset_peak()
        _, s, _ = timed(lambda: naive_extract(nv, subset, layer), sync=True, collect=False)
        seconds["naive_float32"].append(s)
        peaks["naive_float32"] = max(peaks["naive_float32"], cuda_peak_bytes())
    nv = None  # its memory back before the next stage
    gc.collect()

    med = {m: float(np.median(v)) for m, v in seconds.items()}
    peak = matmul_peak_cuda("bfloat16")
    flops = forward_flops(pk.model.config, layer, per_traj)
    fraction = flops / med["probekit"] / 1e12 / peak["tflops"]
    over_plain = med["probekit"] / med["plain_forward"]
    return {"shape": shape.name, "hub_id": shape.hub_id, "parameters": parameter_count(pk), "layer": layer, "dtype": "bfloat16",
            "n_trajectories": len(per_traj), "n_input_tokens": n_in, "plain_forward_batches": len(batches),
            "seconds": {m: [round(x, 4) for x in v] for m, v in seconds.items()},
            "tokens_per_s_median": {m: round(n_in / s, 1) for m, s in med.items()},
            "probekit_over_plain_forward": round(over_plain, 3), "plain_target": f"<= {PLAIN_TARGET}x",
            "plain_target_met": bool(over_plain <= PLAIN_TARGET),
            "speedup_vs_naive_float32": round(med["naive_float32"] / med["probekit"], 2),
            "speedup_vs_naive_bfloat16": round(med["naive_bfloat16"] / med["probekit"], 2),
            "probekit_tflops": round(flops / med["probekit"] / 1e12, 2), "bf16_matmul_peak": peak,
            "probekit_fraction_of_bf16_peak": round(fraction, 4), "peak_target": f">= {PEAK_TARGET:.0%}",
            "peak_target_met": bool(fraction >= PEAK_TARGET),
            "peak_gpu_memory_mb": {m: round(v / 2**20, 1) for m, v in peaks.items()},
            "gpu_busy_over_one_probekit_run": busy, "generation": gen,
            "note": "FLOPs of every token (forward_flops); with shared prompts probekit runs fewer, so the fraction is an "
                    "upper bound where trajectories share prompts"}
