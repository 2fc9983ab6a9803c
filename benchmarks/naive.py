"""The naive baselines probekit is measured against, and the FLOP model of a forward pass.

Each baseline is written as a user would write it without probekit (run_speed.py, run_gpu.py and
run_generation.py time them side by side with probekit's own functions, on the same inputs):

* `naive_extract`        the whole model (in float32: `NAIVE_DTYPE`, what from_pretrained gives a user who does not
                         ask), output_hidden_states=True, fixed batches of `NAIVE_BATCH` in data order, right padding;
* `naive_filter`         the shape of the official evaluation script: per trajectory, per token, φ of one token, cosine
                         with the goal, stop at the first drop;
* `plain_generate`       Hugging Face's `model.generate` with its stop strings;
* `decode_without_capture` probekit's own decoding loop with no layer captured and nothing stored (the cost floor of
                         `probekit generate`, against which capturing the states is measured).

The FLOP model: `forward_flops` (the useful matmul FLOPs of a forward) and the matmul peaks it is compared with
(`matmul_peak` on the CPU, `matmul_peak_cuda` on a GPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.harness import Clock

NAIVE_BATCH = 8
NAIVE_DTYPE = "float32"  # what from_pretrained gives a user who does not ask: the naive loop stays in it


# ---- extraction ------------------------------------------------------------------------------------------------


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


# ---- filter ----------------------------------------------------------------------------------------------------


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


# ---- generation ------------------------------------------------------------------------------------------------


def plain_generate(loaded, prompts, samples: int, seed: int) -> int:
    """Generated tokens of HF generate on the same prompts, left-padded in one batch per 8 prompts."""
    import torch

    from benchmarks.generation_task import SAMPLING
    from probekit.extract.render import prompt_ids

    tok, model = loaded.tokenizer, loaded.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    sampling = {k: v for k, v in SAMPLING.items() if k != "stop"}
    torch.manual_seed(seed)
    n_tokens = 0
    for i in range(0, len(prompts), 8):
        ids = [prompt_ids(tok, p.prompt, "raw") for p in prompts[i:i + 8]]
        width = max(map(len, ids))
        inp = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=inp, attention_mask=mask, do_sample=True, num_return_sequences=samples, pad_token_id=pad,
                                 stop_strings=[SAMPLING["stop"]], tokenizer=tok, **sampling)
        new = out[:, width:]
        n_tokens += int(((new != pad) & (new != eos)).sum())
    return n_tokens


def decode_without_capture(loaded, prompts, cfg) -> int:
    """Tokens decoded by probekit's scheduler with no layer captured and nothing stored: the cost floor of generate."""
    from probekit.extract.render import prompt_ids
    from probekit.generate.decoding import Scheduler
    from probekit.progress import or_null

    contexts = [prompt_ids(loaded.tokenizer, p.prompt, "raw") for p in prompts]
    return Scheduler(loaded, contexts, [], cfg.decoding(), None, lambda seqs, fallback: None).run(or_null(None).task("decode", 0)).fed


# ---- the FLOP model --------------------------------------------------------------------------------------------


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
        with Clock() as clock:
            torch.mm(a, b)
        if k:
            best = min(best, clock.seconds)
    return {"dtype": dtype_name, "shape": f"{size}x{size} @ {size}x{size}", "best_seconds": round(best, 5),
            "gflops": round(2 * size**3 / best / 1e9, 1), "torch_threads": torch.get_num_threads(), "repeats": repeats}


def matmul_peak_cuda(dtype_name: str, size: int = 8192, repeats: int = 10) -> dict:
    """TFLOP/s of a size³ matmul on random data (median of `repeats` after 3 warm-ups, CUDA events)."""
    import torch

    if not torch.cuda.is_available():  # the CPU smoke run of run_gpu.py
        p = matmul_peak(dtype_name, size=512, repeats=2)
        return {**p, "tflops": p["gflops"] / 1000}

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(size, size, device="cuda", dtype=dtype, generator=gen)
    b = torch.randn(size, size, device="cuda", dtype=dtype, generator=gen)
    times = []
    for k in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.mm(a, b)
        end.record()
        torch.cuda.synchronize()
        if k >= 3:
            times.append(start.elapsed_time(end) / 1000)
    med = float(np.median(times))
    return {"dtype": dtype_name, "shape": f"{size}x{size} @ {size}x{size}", "median_seconds": round(med, 6),
            "tflops": round(2 * size**3 / med / 1e12, 1), "repeats": repeats}
