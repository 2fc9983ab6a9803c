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
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from probekit.extract.plan import batch_token_budget  # noqa: E402
from probekit.errors import ProbekitError  # noqa: E402
from probekit.io import write_json  # noqa: E402
from probekit.models import dtype_name  # noqa: E402

MODEL = "smollm2-135m"
LAYER = 15
NAIVE_BATCH = 8
SWEEP_LAMS = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]
SWEEP_SEEDS = [0, 1, 2]
SKIP_FIRST = 5
EXTRACT_TARGET = 6.0
NAIVE_DTYPE = "float32"  # what from_pretrained gives a user who does not ask: the naive loop stays in it
FILTER_TARGET = 20.0
SWEEP_TARGET_S = 600.0
PAPER_CONTEXT = "full fine-tuning of a 7B model on GPUs (per the paper); not measured here"


def log(msg: str) -> None:
    from benchmarks.report import console

    console.log(msg)


# ---- memory helpers ----------------------------------------------------------------


def ru_maxrss_mb() -> float:
    """getrusage's peak RSS (Linux: KiB). Caveat: Linux carries it over fork and exec, so in a
    child it starts at the parent's RSS at spawn time; `proc_status_mb("VmHWM")` does not."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def proc_status_mb(field: str) -> float:
    """VmRSS (current) or VmHWM (peak of this process image) from /proc/self/status, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---- extraction: the naive baseline ----------------------------------------------------


def naive_extract(loaded, trajectories_path: Path, layer: int, batch_size: int = NAIVE_BATCH, start: int = 0,
                  stop: int | None = None) -> tuple[list[np.ndarray], int]:
    """The plain way: whole model, output_hidden_states=True, fixed batches in data order, right padding.

    Returns the layer's completion states per trajectory (float32, kept in memory, as
    a naive script would before saving them) and the number of tokens processed.
    Tokenisation is probekit's own `encode`, so the tokens are exactly probekit's.
    `start:stop` selects a slice of the file's trajectories.
    """
    import torch

    from probekit.data.schema import read_trajectories
    from probekit.extract.render import encode, resolve_template

    trajectories, _ = read_trajectories(trajectories_path)
    template = resolve_template("auto", loaded.tokenizer)
    encoded = [encode(t, loaded.tokenizer, template, 1024) for t in trajectories[start:stop]]
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    out: list[np.ndarray] = []
    n_tokens = 0
    with torch.inference_mode():
        for b in range(0, len(encoded), batch_size):
            chunk = encoded[b : b + batch_size]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, e in enumerate(chunk):
                ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
                mask[row, : len(e.input_ids)] = 1
                n_tokens += len(e.input_ids)
            res = loaded.model(input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                               output_hidden_states=True, use_cache=False)
            hs = res.hidden_states[layer]
            for row, e in enumerate(chunk):
                kept = e.completion_tokens - e.completion_cut
                out.append(hs[row, e.completion_start : e.completion_start + kept].float().cpu().numpy().copy())
    return out, n_tokens


def probekit_extract(loaded, trajectories_path: Path, out: Path, shard_size: int = 512, positions: str = "all",
                     shard: str | None = None, model: str = MODEL):
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract

    opts = ExtractOptions(trajectories=trajectories_path, out=out, model=model, layers=str(LAYER), positions=positions,
                          shard_size=shard_size, shard=shard)
    return extract(opts, loaded=loaded)


def count_tokens(loaded, trajectories_path: Path) -> tuple[int, int]:
    """(input tokens, completion tokens kept) under probekit's encoding."""
    from probekit.data.schema import read_trajectories
    from probekit.extract.render import encode, resolve_template

    trajectories, _ = read_trajectories(trajectories_path)
    template = resolve_template("auto", loaded.tokenizer)
    enc = [encode(t, loaded.tokenizer, template, 1024) for t in trajectories]
    return sum(len(e.input_ids) for e in enc), sum(e.completion_tokens - e.completion_cut for e in enc)


def input_lengths(loaded, trajectories_path: Path) -> list[int]:
    """Input tokens of each trajectory under probekit's encoding."""
    from probekit.data.schema import read_trajectories
    from probekit.extract.render import encode, resolve_template

    trajectories, _ = read_trajectories(trajectories_path)
    template = resolve_template("auto", loaded.tokenizer)
    return [len(encode(t, loaded.tokenizer, template, 1024).input_ids) for t in trajectories]


# ---- achieved FLOP rate ------------------------------------------------------------------


def forward_flops(config, n_blocks: int, lengths: list[int], lm_head: bool = False) -> int:
    """Matmul FLOPs (2 per multiply-add) of `n_blocks` decoder blocks over sequences of these lengths.

    Per token and block, with hidden size h, MLP width m, q heads a, kv heads g, head size d:

        projections   2·h·a·d (q) + 2·2·h·g·d (k, v) + 2·a·d·h (o)
        MLP (gated)   3·2·h·m                 (gate, up, down)
        attention     2·2·a·d·(p + 1)          (q·kᵀ and weights·v over the p + 1 causal positions of token p)

    so a sequence of n tokens costs n_blocks·(n·(projections + MLP) + 4·a·d·n(n+1)/2),
    plus 2·h·V per token for the LM head (vocabulary V) when `lm_head`. Padding,
    norms, rotary embeddings and activations are not counted: this is the useful
    work, so padding waste and non-matmul time show up as a lower achieved rate.
    """
    h, m = config.hidden_size, config.intermediate_size
    a = config.num_attention_heads
    g = getattr(config, "num_key_value_heads", None) or a
    d = getattr(config, "head_dim", None) or h // a
    per_token = 2 * h * a * d + 4 * h * g * d + 2 * a * d * h + 6 * h * m
    total = 0
    for n in lengths:
        total += n_blocks * (n * per_token + 4 * a * d * n * (n + 1) // 2)
        if lm_head:
            total += 2 * h * config.vocab_size * n
    return total


def matmul_peak(dtype_name: str, size: int = 2048, repeats: int = 5) -> dict:
    """GFLOP/s of a size x size @ size x size torch matmul in `dtype_name`, best of `repeats` (after one warm-up),
    at torch's current thread count: the ceiling a forward in that dtype could approach on this machine."""
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    best = float("inf")
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        torch.mm(a, b)
        if k:
            best = min(best, time.perf_counter() - t0)
    return {"dtype": dtype_name, "shape": f"{size}x{size} @ {size}x{size}", "best_seconds": round(best, 5),
            "gflops": round(2 * size**3 / best / 1e9, 1), "torch_threads": torch.get_num_threads(), "repeats": repeats}


def warm_up(loaded) -> None:
    """One short forward through the whole model, so neither timed method pays first-call costs."""
    import torch

    ids = torch.tensor([loaded.tokenizer("warm up the kernels", add_special_tokens=False)["input_ids"]] * 2, device=loaded.device)
    with torch.inference_mode():
        loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def timed(fn):
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


# ---- child processes (peak memory) ------------------------------------------------------


def child_main(args) -> None:
    """Run one extraction alone in this process and print its memory as one JSON line on stdout."""
    from probekit.models import load_model

    loaded = load_model(MODEL, dtype=NAIVE_DTYPE if args._child == "naive" else "auto")
    gc.collect()
    hwm_reset = reset_peak_rss()  # the peak from here on is the extraction's, not the model loading's
    after_load = proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    if args._child == "naive":
        states, n_tokens = naive_extract(loaded, Path(args._traj), LAYER)
        held_mb = sum(s.nbytes for s in states) / 2**20
    else:
        res = probekit_extract(loaded, Path(args._traj), Path(args._work) / "store", shard_size=args._shard_size)
        n_tokens = int(res.manifest.get("stats", {}).get("n_tokens_processed", 0))
        held_mb = 0.0
    seconds = time.perf_counter() - t0
    peak = proc_status_mb("VmHWM")
    print(json.dumps({
        "mode": args._child,
        "rss_after_model_load_mb": round(after_load, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_growth_mb": round(peak - after_load, 1),
        "peak_reset_after_load": hwm_reset,
        "ru_maxrss_mb": round(ru_maxrss_mb(), 1),
        "states_held_in_memory_mb": round(held_mb, 1),
        "n_tokens": n_tokens,
        "seconds": round(seconds, 2),
    }))


def run_child(mode: str, traj: Path, work: Path, shard_size: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", mode, "--_traj", str(traj), "--_work", str(work),
           "--_shard-size", str(shard_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"memory child '{mode}' failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"memory child '{mode}' printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


# ---- filter: the naive baseline ------------------------------------------------------------


def naive_filter(store, ckpt, trajectories: np.ndarray, positions: np.ndarray, threshold: float, skip_first: int):
    """The shape of the official evaluation script: per trajectory, per token, φ of ONE token,
    torch cosine_similarity with the goal, compare with the threshold, stop at the first drop."""
    import torch
    import torch.nn.functional as F

    model = ckpt.model
    model.eval()
    device = next(model.parameters()).device  # the probe's device (run_gpu.py times the loop on a GPU)
    layer = int(ckpt.config["layer"])
    goal = torch.from_numpy(np.asarray(ckpt.goals["mean"], dtype=np.float32)).reshape(1, -1).to(device)
    meta = store.meta
    kept = np.ones(len(trajectories), bool)
    drop = np.full(len(trajectories), -1, np.int64)
    n_q = 0
    with torch.inference_mode():
        for j, i in enumerate(trajectories):
            states = store.trajectory_states(int(i), layer)
            pos = positions[meta.row_start[i] : meta.row_end[i]]
            for t in range(len(states)):
                if pos[t] < skip_first:
                    continue
                z = model.encode(torch.from_numpy(states[t]).unsqueeze(0).to(device))
                q = F.cosine_similarity(z, goal, dim=-1).item()
                n_q += 1
                if q < threshold:
                    kept[j], drop[j] = False, int(pos[t])
                    break
    return kept, drop, n_q


def separated_threshold(q: np.ndarray, eligible: np.ndarray, target: float) -> tuple[float, float]:
    """A threshold near `target` halfway between two neighbouring Q-values (so float rounding
    differences between faiss and torch cannot flip a decision); returns (threshold, margin)."""
    vals = np.unique(q[eligible].astype(np.float64))
    k = int(np.clip(np.searchsorted(vals, target), 1, len(vals) - 1))
    # the widest gap among a few neighbours of the target
    lo_k = max(1, k - 5)
    hi_k = min(len(vals) - 1, k + 5)
    gaps = vals[lo_k : hi_k + 1] - vals[lo_k - 1 : hi_k]
    best = lo_k + int(np.argmax(gaps))
    thr = float((vals[best - 1] + vals[best]) / 2)
    return thr, float((vals[best] - vals[best - 1]) / 2)


def replicate(trajectories: list, copies: int) -> list:
    """`copies` copies of the list, each with its own ids and groups (so pairs stay within a copy)."""
    from dataclasses import replace

    return [replace(t, id=f"{t.id}-copy{k}", group=f"{t.group}-copy{k}") for k in range(copies) for t in trajectories]


# ---- stages ----------------------------------------------------------------------------


def stage_extract(args, loaded, naive_loaded, work: Path, subset: Path, mem_small: Path, mem_large: Path, n_mem: int) -> dict:
    """`loaded`: the model as probekit loads it (--model-dtype auto); `naive_loaded`: the same model in float32."""
    n_in, n_comp = count_tokens(loaded, subset)
    warm_up(loaded)
    warm_up(naive_loaded)
    store_dir = work / "store-gsm8k"
    # Interleaved in chunks (probekit first on even chunks, naive first on odd ones), so that a change in the
    # machine's other load during the run falls on both methods alike. A chunk is one probekit shard
    # (extract --shard k/K, which also re-reads and hashes the input: counted against probekit) and a whole
    # number of naive batches.
    chunk = -(-args.n_extract // args.chunks)
    chunk = -(-chunk // NAIVE_BATCH) * NAIVE_BATCH
    n_chunks = -(-args.n_extract // chunk)
    per_traj = input_lengths(loaded, subset)
    lengths = [sum(per_traj[i : i + chunk]) for i in range(0, len(per_traj), chunk)]
    log(f"extraction: {args.n_extract} trajectories ({n_in:,} tokens) in {n_chunks} interleaved chunks of {chunk}; "
        f"probekit vs naive (whole model, output_hidden_states, batches of {NAIVE_BATCH})")
    pk_wall = pk_cpu = nv_wall = nv_cpu = 0.0
    naive_states: list[np.ndarray] = []
    naive_tokens = 0
    per_chunk = []
    for k in range(n_chunks):
        def run_pk():
            return timed(lambda: probekit_extract(loaded, subset, store_dir, shard_size=chunk, shard=f"{k}/{n_chunks}"))

        def run_nv():
            return timed(lambda: naive_extract(naive_loaded, subset, LAYER, start=k * chunk, stop=(k + 1) * chunk))

        if k % 2 == 0:
            (_, pw, pc), ((st, nt), nw, nc) = run_pk(), run_nv()
        else:
            ((st, nt), nw, nc), (_, pw, pc) = run_nv(), run_pk()
        naive_states += st
        naive_tokens += nt
        pk_wall, pk_cpu, nv_wall, nv_cpu = pk_wall + pw, pk_cpu + pc, nv_wall + nw, nv_cpu + nc
        per_chunk.append({"chunk": k, "first": "probekit" if k % 2 == 0 else "naive", "tokens": lengths[k],
                          "probekit_seconds": round(pw, 3), "naive_seconds": round(nw, 3), "speedup": round(nw / pw, 2)})
        log(f"  chunk {k + 1}/{n_chunks}: probekit {lengths[k] / pw:,.0f} tok/s, naive {nt / nw:,.0f} tok/s ({nw / pw:.2f}x)")
    log(f"  probekit {pk_wall:.1f}s = {n_in / pk_wall:,.0f} tok/s; naive {nv_wall:.1f}s = {naive_tokens / nv_wall:,.0f} tok/s")
    if naive_tokens != n_in:
        raise RuntimeError(f"token counts differ: naive {naive_tokens}, probekit encoding {n_in}")

    # Same work? compare the naive float32 states with the stored ones (float16 storage of the auto dtype's states).
    from probekit.store import Store

    store = Store(store_dir)
    stored = store.load_layer(LAYER)
    naive_all = np.concatenate(naive_states)
    if stored.shape != naive_all.shape:
        raise RuntimeError(f"state shapes differ: probekit {stored.shape}, naive {naive_all.shape}")
    row_rel = np.linalg.norm(stored - naive_all, axis=1) / np.maximum(np.linalg.norm(naive_all, axis=1), 1e-12)
    agreement = {
        "rows_compared": int(len(stored)),
        "row_relative_error_median": float(np.median(row_rel)),
        "row_relative_error_p99": float(np.percentile(row_rel, 99)),
        "row_relative_error_max": float(row_rel.max()),
        "max_abs_value": float(np.abs(naive_all).max()),
        "note": f"||probekit - naive|| / ||naive|| per stored row; probekit computes in {dtype_name(loaded.dtype)} and stores "
                f"float16, the naive states are float32 (bfloat16 alone: ~1% median, benchmarks/results/bf16_agreement.json)",
    }
    del naive_states, naive_all, stored, row_rel
    if agreement["row_relative_error_median"] > 0.05:
        raise RuntimeError(f"probekit and naive states disagree: {agreement}")

    # How close to the machine does probekit's forward run? Useful matmul FLOPs / time, against a measured peak.
    cfg = loaded.model.config
    pk_flops = forward_flops(cfg, LAYER, per_traj)
    nv_flops = forward_flops(cfg, cfg.num_hidden_layers, per_traj, lm_head=True)
    peaks = {d: matmul_peak(d) for d in dict.fromkeys([dtype_name(loaded.dtype), NAIVE_DTYPE])}
    pk_peak, nv_peak = peaks[dtype_name(loaded.dtype)], peaks[NAIVE_DTYPE]
    flop_rate = {
        "formula": "benchmarks/run_speed.py forward_flops: per token and block 2·h·a·d + 4·h·g·d + 2·a·d·h + 6·h·m, plus "
                   "4·a·d·n(n+1)/2 per sequence of n tokens for attention scores and values (causal); naive adds 2·h·V per "
                   "token for the LM head; padding, norms, rotary and activations not counted",
        "probekit_gflop": round(pk_flops / 1e9, 1),
        "probekit_gflops_achieved": round(pk_flops / pk_wall / 1e9, 1),
        "probekit_fraction_of_peak": round(pk_flops / pk_wall / 1e9 / pk_peak["gflops"], 3),
        "naive_gflop": round(nv_flops / 1e9, 1),
        "naive_gflops_achieved": round(nv_flops / nv_wall / 1e9, 1),
        "naive_fraction_of_peak": round(nv_flops / nv_wall / 1e9 / nv_peak["gflops"], 3),
        "matmul_peaks": list(peaks.values()),
        "note": "achieved = useful matmul FLOPs / wall time of the whole extraction (reading, tokenising, writing included); "
                "peak = the best large square matmul in the same dtype, measured in this process after the extraction",
    }
    log(f"  probekit {flop_rate['probekit_gflops_achieved']} GFLOP/s = {flop_rate['probekit_fraction_of_peak']:.0%} of "
        f"{pk_peak['gflops']} ({pk_peak['dtype']} peak); naive {flop_rate['naive_gflops_achieved']} GFLOP/s = "
        f"{flop_rate['naive_fraction_of_peak']:.0%} of {nv_peak['gflops']} ({NAIVE_DTYPE} peak)")

    speedup = (n_in / pk_wall) / (naive_tokens / nv_wall)
    result = {
        "data": f"GSM8K labelled model solutions (probekit.data.gsm8k.labelled_solutions), first {args.n_extract} trajectories in file order",
        "model": MODEL,
        "layer": LAYER,
        "n_trajectories": args.n_extract,
        "n_input_tokens": n_in,
        "n_completion_states": n_comp,
        "probekit": {
            "what": f"probekit.extract.run.extract with its defaults: model in {dtype_name(loaded.dtype)} (--model-dtype auto: "
                    f"{loaded.dtype_choice}), forward stops after block 15 (hooks), length-bucketed batches "
                    f"(max_batch_tokens {batch_token_budget(None, loaded.device)}, the device's default) within each shard, "
                    "a prompt shared by several solutions run once (--share-prompts), positions all, float16 HDF5 shards written to disk; reads the JSONL, "
                    "hashes it, tokenises, runs, writes",
            "model_dtype": dtype_name(loaded.dtype),
            "seconds": round(pk_wall, 3),
            "cpu_seconds": round(pk_cpu, 3),
            "tokens_per_s": round(n_in / pk_wall, 1),
        },
        "naive": {
            "what": f"as a user would write it: whole model (30 blocks + LM head) loaded in {NAIVE_DTYPE} (transformers' default), "
                    f"output_hidden_states=True, use_cache=False, batches of {NAIVE_BATCH} "
                    "in data order, right padding, layer-15 completion states copied out as float32 numpy (kept in memory); "
                    "reads the JSONL and tokenises with probekit's encode",
            "model_dtype": NAIVE_DTYPE,
            "seconds": round(nv_wall, 3),
            "cpu_seconds": round(nv_cpu, 3),
            "tokens_per_s": round(naive_tokens / nv_wall, 1),
        },
        "speedup": round(speedup, 2),
        "flop_rate": flop_rate,
        "speedup_per_chunk_min_max": [min(c["speedup"] for c in per_chunk), max(c["speedup"] for c in per_chunk)],
        "interleaving": f"{n_chunks} chunks of {chunk} trajectories; each chunk is one probekit shard (extract with "
                        f"--shard k/{n_chunks}, shard size {chunk}) and {chunk // NAIVE_BATCH} naive batches; the order alternates "
                        "per chunk; totals are summed over chunks",
        "per_chunk": per_chunk,
        "target": f">= {EXTRACT_TARGET:g}x",
        "target_met": bool(speedup >= EXTRACT_TARGET),
        "agreement": agreement,
    }

    log(f"memory: child processes (naive at N={n_mem}, probekit at N={n_mem} and 4N={4 * n_mem}, shard size {args.mem_shard_size})")
    mem = {
        "method": "each run alone in a fresh child process (this script with --_child): load the model, reset the peak "
                  "(/proc/self/clear_refs), extract; peak = VmHWM of /proc/self/status at the end, growth = peak - VmRSS "
                  "right after the model was loaded. ru_maxrss is recorded too but is NOT used: Linux carries it over "
                  "fork+exec, so in a child it starts at the parent's RSS at spawn time (this benchmark's parent holds GBs)",
        "shard_size": args.mem_shard_size,
        "data": f"N = the first {n_mem} trajectories; 4N = those N repeated 4 times (new ids and groups), so every 4N shard "
                "holds the same texts as an N shard: any extra peak at 4N comes from the data size, not from longer texts",
        "naive": [],
        "probekit": [],
    }
    # Peak RSS of one run moves by up to ~±80 MB between identical runs (allocator state), more than the
    # float32 states the 4N data adds (~16 MB at N = 20): repeat, interleaved, and compare medians.
    samples: dict[int, list[dict]] = {n_mem: [], 4 * n_mem: []}
    for k in range(args.mem_repeats):
        for n, path in ((n_mem, mem_small), (4 * n_mem, mem_large)):
            r = run_child("extract", path, work / f"mem-pk-{n}-{k}", args.mem_shard_size)
            samples[n].append(r)
            log(f"  probekit N={n} (run {k + 1}/{args.mem_repeats}): peak {r['peak_rss_mb']:.0f} MB, growth {r['peak_growth_mb']:.0f} MB")
    for n, runs in samples.items():
        growths = [r["peak_growth_mb"] for r in runs]
        median_run = sorted(runs, key=lambda r: r["peak_growth_mb"])[len(runs) // 2]
        mem["probekit"].append({**median_run, "n_trajectories": n, "peak_growth_mb": round(statistics.median(growths), 1),
                                "peak_growth_mb_samples": growths})
    naive_ns = [n_mem] if args.quick or not args.naive_mem_4n else [n_mem, 4 * n_mem]
    for n in naive_ns:
        r = run_child("naive", mem_small if n == n_mem else mem_large, work / f"mem-naive-{n}", args.mem_shard_size)
        r["n_trajectories"] = n
        mem["naive"].append(r)
        log(f"  naive N={n}: peak {r['peak_rss_mb']:.0f} MB, growth {r['peak_growth_mb']:.0f} MB")
    g_small, g_large = mem["probekit"][0]["peak_growth_mb"], mem["probekit"][1]["peak_growth_mb"]
    mem["probekit_growth_ratio_4n_over_n"] = round(g_large / g_small, 3) if g_small > 0 else None
    mem["flat_criterion"] = (f"median over {args.mem_repeats} runs of probekit's peak growth at 4N is at most 1.25x the median "
                             f"at N (or within 32 MB of it)")
    mem["probekit_flat"] = bool(g_large <= 1.25 * g_small or g_large - g_small <= 32)
    mem["naive_over_probekit_peak_growth_at_n"] = (round(mem["naive"][0]["peak_growth_mb"] / g_small, 2) if g_small > 0 else None)
    result["memory"] = mem
    return result, store_dir


def time_sweep(args, store_dir: Path, layer: int, out: Path, lams: list, seeds: list, base: dict) -> dict:
    """Seconds for a λ × seed sweep with `run_sweep` (every fit, its evaluation and checkpoint)."""
    from probekit.config import FitConfig
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    log(f"fit: λ sweep, {len(lams)} values x {len(seeds)} seeds = {len(lams) * len(seeds)} fits")
    sweep_cfg = SweepConfig(template=FitConfig().vary(**base), lams=tuple(lams), layers=(layer,), seeds=tuple(seeds))
    sweep, sw_wall, sw_cpu = timed(lambda: run_sweep(store_dir, out, sweep_cfg))
    n_fits = len(sweep["runs"])
    log(f"  sweep {sw_wall:.1f}s for {n_fits} fits")
    return {
        "what": f"probekit.sweep.run_sweep: λ in {lams} x seeds {seeds}, K 8, layer {layer}, default fit options",
        "n_fits": n_fits,
        "seconds": round(sw_wall, 3),
        "cpu_seconds": round(sw_cpu, 3),
        "seconds_per_fit": round(sw_wall / max(n_fits, 1), 3),
        "target": f"< {SWEEP_TARGET_S / 60:g} minutes on 2 cores",
        "target_met": None if args.quick else bool(sw_wall < SWEEP_TARGET_S and n_fits == 18),
    }


def stage_fit(args, work: Path, store_dir: Path) -> tuple[dict, object]:
    from probekit.config import FitConfig
    from probekit.pipeline import fit_probe
    from probekit.store import Store

    store = Store(store_dir)
    n_pairs = len(store.pairs())
    base = {"epochs": 3, "n_boot": 100} if args.quick else {}
    log(f"fit: one fit, λ = 0.5, default options ({len(store)} trajectories, {n_pairs} pairs, {store.n_rows:,} stored states)")
    cfg = FitConfig().vary(lam=0.5, layer=LAYER, **base)
    ckpt, fit_wall, fit_cpu = timed(lambda: fit_probe(store, work / "fit-lam0.5", cfg, overwrite=True))
    log(f"  one fit {fit_wall:.1f}s")
    lams = [0.0, 0.5] if args.quick else SWEEP_LAMS
    seeds = [0] if args.quick else SWEEP_SEEDS
    m = ckpt.metrics["train"]
    result = {
        "store": {"n_trajectories": len(store), "n_pairs": n_pairs, "n_train_pairs": m["n_train_pairs"], "n_valid_pairs": m["n_valid_pairs"],
                  "n_stored_states": int(store.n_rows), "layer": LAYER, "positions": "all"},
        "one_fit": {
            "what": "probekit.pipeline.fit_probe, λ = 0.5, default FitConfig" + (" (quick: epochs 3, n_boot 100)" if args.quick else "")
                    + "; includes training with early stopping, goal prototypes, validation evaluation with bootstrap CIs and "
                      "trivial baselines, checkpoint writing",
            "seconds": round(fit_wall, 3),
            "cpu_seconds": round(fit_cpu, 3),
            "train_seconds": m["train_seconds"],
            "epochs_run": m["epochs_run"],
        },
        "sweep": time_sweep(args, store_dir, LAYER, work / "sweep", lams, seeds, base),
        "paper_context": {"what": PAPER_CONTEXT, "measured": False},
    }
    if args.fit_store is not None:
        big = Store(args.fit_store)
        log(f"fit: the same sweep on {args.fit_store} ({len(big)} trajectories, {len(big.pairs())} pairs, {big.n_rows:,} stored "
            f"states, layer {args.fit_layer})")
        result["sweep_fit_store"] = {"store": str(args.fit_store), "n_trajectories": len(big), "n_pairs": len(big.pairs()),
                                     "n_stored_states": int(big.n_rows), "layer": args.fit_layer,
                                     **time_sweep(args, args.fit_store, args.fit_layer, work / "sweep-fit-store", lams, seeds, base)}
    return result, ckpt


def stage_filter(args, store_dir: Path, ckpt) -> dict:
    """Both methods at 1 thread and at torch's default thread count; decisions must agree.

    Headline: each method at the thread setting where it measured fastest (a tuned
    baseline against a tuned probekit). The ratio with both on 1 thread is reported
    beside it, with its own target verdict, so neither choice hides the other.
    """
    import torch

    from probekit.filter.early_stop import apply_threshold, min_signal
    from probekit.probe.scoring import Scorer, score_store
    from probekit.store import Store

    store = Store(store_dir)
    meta = store.meta
    scorer = Scorer.from_checkpoint(ckpt, kinds=["mean"])
    scores = score_store(store, scorer, ckpt.layer)  # warm-up run; also gives the Q-values to place the threshold
    positions = store.positions()
    eligible = positions >= SKIP_FIRST
    mins = min_signal(scores.offsets, scores.positions, scores.q["mean"], SKIP_FIRST)
    thr, margin = separated_threshold(scores.q["mean"], eligible, float(np.median(mins[np.isfinite(mins)])))
    n_rows = int(store.n_rows)
    n_naive = len(meta) if args.n_naive_filter <= 0 else min(args.n_naive_filter, len(meta))
    default_threads = torch.get_num_threads()
    settings = sorted({1, default_threads})

    def check(kept, drop, res, idx):
        if not np.array_equal(kept, res.kept[idx]) or not np.array_equal(drop, res.first_drop_position[idx]):
            bad = np.flatnonzero((kept != res.kept[idx]) | (drop != res.first_drop_position[idx]))
            raise AssertionError(f"naive and probekit filter decisions differ on {len(bad)} trajectories (first: {meta.id[idx[bad[0]]]})")

    def probekit_once():
        sc = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), ckpt.layer)
        return apply_threshold(sc.offsets, sc.positions, sc.q["mean"], meta.completion_tokens, thr, SKIP_FIRST)

    runs: dict[int, dict] = {}
    try:
        for threads in settings:
            torch.set_num_threads(threads)
            pk = [timed(probekit_once) for _ in range(args.filter_repeats)]
            res, pk_wall = pk[-1][0], statistics.median(r[1] for r in pk)
            # the naive loop at more than one thread is slow (thread barriers on one-row ops): time it on fewer trajectories
            subset = np.arange(n_naive if threads == 1 else min(10, n_naive))
            (kept, drop, n_q), nv_wall, _ = timed(lambda: naive_filter(store, ckpt, subset, positions, thr, SKIP_FIRST))
            check(kept, drop, res, subset)
            runs[threads] = {"torch_threads": threads, "probekit_seconds": round(pk_wall, 4),
                             "probekit_q_values_per_s": round(n_rows / pk_wall, 1),
                             "naive_trajectories": int(len(subset)), "naive_q_values": int(n_q), "naive_seconds": round(nv_wall, 3),
                             "naive_q_values_per_s": round(n_q / nv_wall, 1),
                             "naive_seconds_for_whole_store": round(nv_wall * len(meta) / len(subset), 3),
                             "dropped_share": float(res.dropped.mean())}
            log(f"filter ({threads} thread{'s' if threads > 1 else ''}): probekit {n_rows / pk_wall:,.0f} Q/s "
                f"({pk_wall * 1000:.0f} ms, median of {args.filter_repeats}); naive {n_q / nv_wall:,.0f} Q/s on {len(subset)} "
                f"trajectories; decisions identical")
        torch.set_num_threads(1)
        _, read_wall, _ = timed(lambda: [store.trajectory_states(int(i), LAYER) for i in range(n_naive)])
    finally:
        torch.set_num_threads(default_threads)

    best_pk = max(runs.values(), key=lambda r: r["probekit_q_values_per_s"])
    best_nv = max(runs.values(), key=lambda r: r["naive_q_values_per_s"])
    one = runs[1]

    def ratios(pk: dict, nv: dict) -> dict:
        q = pk["probekit_q_values_per_s"] / nv["naive_q_values_per_s"]
        t = nv["naive_seconds_for_whole_store"] / pk["probekit_seconds"]
        return {"probekit_threads": pk["torch_threads"], "naive_threads": nv["torch_threads"],
                "speedup_q_values_per_s": round(q, 1), "speedup_time_to_decide_store": round(t, 1),
                "target_met_q_values_per_s": bool(q >= FILTER_TARGET), "target_met_time_to_decide_store": bool(t >= FILTER_TARGET)}

    return {
        "store": {"n_trajectories": len(meta), "n_stored_states": n_rows, "layer": LAYER},
        "checkpoint": "the λ = 0.5 fit of the fit stage (mean goal)",
        "threshold": thr,
        "threshold_note": f"median of the per-trajectory minimum Q, moved to the middle of the gap between neighbouring Q-values "
                          f"(margin {margin:.2e}) so that faiss-vs-torch rounding cannot flip a decision",
        "skip_first": SKIP_FIRST,
        "dropped_share": one["dropped_share"],
        "probekit_what": "probekit.probe.scoring.score_store (streams shards in their stored float16, converts 2048-row batches, "
                         "φ with the input standardisation folded into its first layer, faiss inner product with the normalised "
                         "goal; also scores the reward head) + apply_threshold (vectorised first drop); Q of every stored token; "
                         f"median of {args.filter_repeats} repeats",
        "naive_what": "per trajectory: read its states from the store; per token at position >= skip_first: φ of that one token "
                      "(torch), torch.nn.functional.cosine_similarity with the goal, compare, break at the first drop "
                      "(positions are given to it pre-loaded, untimed)",
        "naive_seconds_reading_states": round(read_wall, 3),
        "naive_seconds_reading_states_note": "the per-trajectory reads of the naive loop timed alone (all reads, not only up "
                                             "to the first drop): an upper bound of the reading share of its time",
        "by_threads": [runs[t] for t in settings],
        "best_vs_best": ratios(best_pk, best_nv),
        "one_thread_both": ratios(one, one),
        "decisions_identical": True,
        "speedup_note": "Q-values/s: probekit scores every stored token (usable for any threshold); the naive loop stops at "
                        "the first drop, so it computes fewer Q-values; time to decide the store compares the same keep/drop "
                        "decisions end to end. Headline: best_vs_best (each method at its fastest measured thread count).",
        "target": f">= {FILTER_TARGET:g}x",
    }


# ---- output ---------------------------------------------------------------------------


def machine_info() -> dict:
    import torch
    import transformers

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=str(ROOT)).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit,
    }


def print_table(result: dict) -> None:
    from rich.console import Console
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
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    console.print(t)


# ---- main ------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(args)
        return 0
    from benchmarks.report import console

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

    started = time.perf_counter()
    result: dict = {
        "benchmark": "probekit speed against naive baselines (same process, same data, model and layer)",
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
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

        from probekit.models import load_model

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

    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out, result)
    print_table(result)
    log(f"wrote {args.out} ({result['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
