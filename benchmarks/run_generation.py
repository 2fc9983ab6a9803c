"""Generation speed, side by side in one process: plain `model.generate` vs `probekit generate` vs online filtering.

Same frozen model (SmolLM2-135M), same prompts (synthetic 1-step problems,
2-shot, raw template: the task the bundled model solves about a third of the
time, benchmarks/results/task_accuracy.json), same sampling (temperature 0.7,
top-p 0.95, up to 48 new tokens, stop at a blank line), repeated and
interleaved:

1. plain      `model.generate(..., num_return_sequences=S)` with HF's stop strings;
2. probekit   `probekit.generation.generate` storing layer-15 states of every token;
   and probekit's decoding loop alone, without hooks or store (`no_capture`),
   which isolates what capturing and storing the states costs;
3. filtered   the same with online early stopping by a probe fitted on run 2's
              samples, at two thresholds: the 20 % and 50 % quantiles of the
              per-sample minimum Q (about a fifth, and half, of the samples are
              stopped). A prompt whose samples are all stopped is generated
              again in full for the fallback vote, and those tokens count.

Tokens/s counts generated tokens only (not padding after a sequence ends).
The targets: state capture costs at most 10 % throughput (against the same loop
without capture, and against plain generate); online filtering's
wall-clock saving should track its share of tokens saved.

    .venv/bin/python benchmarks/run_generation.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import add_threads_option, apply_threads, console, table  # noqa: E402
from probekit.io import write_json  # noqa: E402

SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 48}
QUANTILES = (0.2, 0.5)
STOP = "\n\n"


def plain_generate(loaded, prompts, samples: int, seed: int) -> tuple[int, float]:
    """(generated tokens, seconds) of HF generate on the same prompts, left-padded in one batch per 8 prompts."""
    import torch

    from probekit.extract.render import prompt_ids

    tok, model = loaded.tokenizer, loaded.model
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    n_tokens, t0 = 0, time.perf_counter()
    for i in range(0, len(prompts), 8):
        ids = [prompt_ids(tok, p.prompt, "raw") for p in prompts[i:i + 8]]
        width = max(map(len, ids))
        inp = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=model.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=inp, attention_mask=mask, do_sample=True, num_return_sequences=samples, pad_token_id=pad,
                                 stop_strings=[STOP], tokenizer=tok, **SAMPLING)
        new = out[:, width:]
        n_tokens += int(((new != pad) & (new != eos)).sum())
    return n_tokens, time.perf_counter() - t0


def decode_without_capture(loaded, prompts, cfg) -> tuple[int, float]:
    """(tokens, seconds) of probekit's decoding loop with no layer captured and nothing stored: the cost floor of generate."""
    from probekit.extract.render import prompt_ids
    from probekit.generation import _decode, _Sequence
    from probekit.progress import or_null
    from probekit.sampling import sequence_generator

    task = or_null(None).task("decode", 0)
    per_batch = max(1, cfg.batch_size // cfg.samples)
    fed, t0 = 0, time.perf_counter()
    for g0 in range(0, len(prompts), per_batch):
        seqs = [_Sequence(pi, k, prompt_ids(loaded.tokenizer, prompts[pi].prompt, "raw"), sequence_generator(cfg.seed, pi, k))
                for pi in range(g0, min(len(prompts), g0 + per_batch)) for k in range(cfg.samples)]
        fed += _decode(loaded, seqs, [], cfg, None, task)
    return fed, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-problems", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model-dtype", default="auto", help="dtype the model runs in (auto: what probekit picks on this machine)")
    add_threads_option(ap)
    ap.add_argument("--work", default="runs/bench-generation")
    ap.add_argument("--out", default="benchmarks/results/generation.json")
    args = ap.parse_args()

    from probekit.config import FitConfig
    from probekit.data.synth import synth_prompts
    from probekit.early_stop import min_signal
    from probekit.generation import GenerateConfig, OnlineStop, generate
    from probekit.models import load_model
    from probekit.pipeline import fit_probe
    from probekit.scoring import Scorer, score_store
    from probekit.store import Store

    threads = apply_threads(args.threads)
    work = Path(args.work)
    loaded = load_model("smollm2-135m", device="cpu", dtype=args.model_dtype)
    prompts = synth_prompts(args.n_problems, 1, 1, shots=2, seed=0)
    cfg = GenerateConfig(samples=args.samples, template="raw", layers="15", answer="synth", stop=STOP, batch_size=32, **SAMPLING)
    console.log("warm-up and the probe for online filtering: generate once, fit on its samples")
    first = generate(prompts, work / "fit-samples", cfg, loaded=loaded, overwrite=True)
    store = Store(first.out / "store")
    ckpt = fit_probe(store, work / "probe", FitConfig().vary(layer=15, epochs=10, n_boot=100, valid_frac=0.2, test_frac=0.0), overwrite=True)
    scores = score_store(store, Scorer.from_checkpoint(ckpt, kinds=["mean"]), 15)
    mins = min_signal(scores.offsets, scores.positions, scores.q["mean"], 5)
    thresholds = {f"filtered_q{int(100 * q)}": float(np.quantile(mins[np.isfinite(mins)], q)) for q in QUANTILES}

    runs: dict[str, list[dict]] = {"plain": [], "no_capture": [], "probekit": [], **{k: [] for k in thresholds}}
    for r in range(args.repeats):  # interleaved, so drifting load on a shared machine hits all of them alike
        n, s = plain_generate(loaded, prompts, args.samples, seed=r)
        runs["plain"].append({"tokens": n, "seconds": s})
        n, s = decode_without_capture(loaded, prompts, cfg)
        runs["no_capture"].append({"tokens": n, "seconds": s})
        for name, stop in [("probekit", None)] + [(k, OnlineStop(ckpt, t, skip_first=5)) for k, t in thresholds.items()]:
            t0 = time.perf_counter()
            res = generate(prompts, work / f"{name}-{r}", cfg, stop=stop, loaded=loaded, overwrite=True)
            runs[name].append({"tokens": res.stats["tokens_generated"], "seconds": time.perf_counter() - t0,
                               "accuracy_per_sample": res.stats["accuracy_per_sample"], "n_stopped_early": res.stats["n_stopped_early"],
                               "n_fallback_groups": res.stats["n_fallback_groups"]})
        console.log(f"repeat {r}: " + ", ".join(f"{k} {v[-1]['tokens'] / v[-1]['seconds']:.1f} tok/s" for k, v in runs.items()))

    def summary(name: str) -> dict:
        rs = runs[name]
        return {"tokens": [x["tokens"] for x in rs], "seconds": [round(x["seconds"], 2) for x in rs],
                "tokens_per_second": [round(x["tokens"] / x["seconds"], 1) for x in rs]}

    plain, bare, pk = summary("plain"), summary("no_capture"), summary("probekit")
    capture_cost = 1 - np.median(pk["tokens_per_second"]) / np.median(bare["tokens_per_second"])
    vs_plain = 1 - np.median(pk["tokens_per_second"]) / np.median(plain["tokens_per_second"])
    filtered = {}
    for name, t in thresholds.items():
        fl = summary(name)
        filtered[name] = {**fl, "threshold": t, "runs": runs[name],
                          "tokens_saved": round(float(1 - np.median(fl["tokens"]) / np.median(pk["tokens"])), 3),
                          "wall_clock_saved": round(float(1 - np.median(fl["seconds"]) / np.median(pk["seconds"])), 3)}
    result = {
        "command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "model": "smollm2-135m", "model_dtype": str(loaded.dtype).replace("torch.", ""), "torch_threads": threads, "layer": 15, "prompts": {"n": len(prompts), "samples": args.samples, "task": "1-step, 2-shot, raw"},
        "sampling": {**SAMPLING, "stop": "\\n\\n"}, "repeats": args.repeats,
        "plain_model_generate": plain, "probekit_decode_without_capture": bare, "probekit_generate": pk,
        "probekit_generate_filtered": filtered,
        "state_capture_throughput_cost": round(float(capture_cost), 3),
        "throughput_cost_vs_plain_generate": round(float(vs_plain), 3), "capture_target": "<= 0.10 (both)",
        "capture_target_met": bool(capture_cost <= 0.10 and vs_plain <= 0.10),
        "note": "plain generate counts tokens before EOS/padding; its stop strings end a sequence like probekit's --stop",
    }
    write_json(args.out, result)
    console.print(table("Generation, side by side (median over repeats)", ["method", "tokens", "seconds", "tokens/s"],
                        [[k, int(np.median(v["tokens"])), float(np.median(v["seconds"])), float(np.median(v["tokens_per_second"]))]
                         for k, v in [("plain model.generate", plain), ("probekit loop, no capture", bare), ("probekit generate", pk)]
                         + list(filtered.items())]))
    console.print(f"state capture costs {100 * capture_cost:.1f}% throughput against the same loop without it, "
                  f"{100 * vs_plain:.1f}% against plain generate (target <= 10%; negative = faster)")
    for name, f in filtered.items():
        console.print(f"{name}: {100 * f['tokens_saved']:.1f}% of tokens and {100 * f['wall_clock_saved']:.1f}% of wall-clock saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
