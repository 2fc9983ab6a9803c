"""Generation speed, side by side in one process: plain `model.generate` vs `probekit generate` vs online filtering.

Same frozen model (SmolLM2-135M), same prompts (the generation study's test
problems: synthetic 1-step, 2-shot, raw template, which the bundled model
solves about a third of the time), same sampling (the study's: temperature
0.7, top-p 0.95, up to 48 new tokens, stop at a blank line), same seeds,
repeated and interleaved:

1. plain      `model.generate(..., num_return_sequences=S)` with HF's stop strings;
2. probekit   `probekit.generate.generation.generate` storing layer-15 states of every token;
   and probekit's decoding loop alone, without hooks or store (`no_capture`),
   which isolates what capturing and storing the states costs;
3. filtered   the same with online early stopping by the generation study's
              probe (`benchmarks.generation_task.fit_study_probe`: fitted on
              the states of its training problems) at its two thresholds,
              `auto` and `q20`. A prompt whose samples are all stopped is
              resumed for the fallback vote, and those tokens count.

Generation decodes with continuous batching, so the claim checked is that
online filtering's wall-clock saving tracks its share of tokens saved: each
repeat pairs a filtered run with the unfiltered run of the same repeat, and
the JSON reports both savings, their ratio, and seconds per generated token
relative to the unfiltered run (1.0 = time follows tokens exactly), in
wall-clock and in CPU time (with one torch thread, CPU time is the work done
whatever else loads a shared machine), and the decoding steps each run took.
Each run's time is also split into admitting samples (prefilling their
prompts, once per prompt, and merging their KV rows into the batch), which
online stopping cannot save since it happens before any token is scored,
and decoding, which it can: decoding seconds per token against the
unfiltered run's is the figure that says whether a saved token is saved time.
Tokens/s counts generated tokens only (not padding after a sequence ends).
The capture target: state capture costs at most 10 % throughput (against the
same loop without capture, and against plain generate).

    .venv/bin/python benchmarks/run_generation.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generation_task import SAMPLING, fit_study_probe, study_config, study_prompts  # noqa: E402
from benchmarks.harness import Clock, add_threads_option, apply_threads, console, machine_line, results_header, table  # noqa: E402
from benchmarks.naive import decode_without_capture, plain_generate  # noqa: E402
from probekit.io import write_json  # noqa: E402


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--n-problems", type=int, default=24, help="test problems generated in every run")
    ap.add_argument("--n-train", type=int, default=64, help="training problems the probe is fitted on (as the generation study)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model-dtype", default="auto", help="dtype the model runs in (auto: what probekit picks on this machine)")
    add_threads_option(ap)
    ap.add_argument("--work", default="runs/bench-generation")
    ap.add_argument("--out", default="benchmarks/results/generation.json")


def main(args) -> int:
    from probekit.generate.generation import generate
    from probekit.generate.stopping import OnlineStop
    from probekit.models import load_model

    threads = apply_threads(args.threads)
    work = Path(args.work)
    loaded = load_model("smollm2-135m", device="cpu", dtype=args.model_dtype)
    train, prompts = study_prompts(args.n_train, args.n_problems)
    cfg = study_config(args.samples, args.model_dtype)
    console.log(f"warm-up and the probe for online filtering: the generation study's, fitted on {len(train)} training problems")
    _, ckpt, _, thresholds = fit_study_probe(loaded, train, cfg, work)

    runs: dict[str, list[dict]] = {"plain": [], "no_capture": [], "probekit": [], **{k: [] for k in thresholds}}
    for r in range(args.repeats):  # interleaved, so drifting load on a shared machine hits all of them alike
        with Clock() as c:
            n = plain_generate(loaded, prompts, args.samples, seed=r)
        runs["plain"].append({"tokens": n, "seconds": c.seconds, "cpu_seconds": c.cpu_seconds})
        with Clock() as c:
            n = decode_without_capture(loaded, prompts, cfg)
        runs["no_capture"].append({"tokens": n, "seconds": c.seconds, "cpu_seconds": c.cpu_seconds})
        for name, stop in [("probekit", None)] + [(k, OnlineStop(ckpt, t, skip_first=5, chosen_on=k)) for k, t in thresholds.items()]:
            with Clock() as c:
                res = generate(prompts, work / f"{name}-{r}", cfg, stop=stop, loaded=loaded, overwrite=True)
            runs[name].append({"tokens": res.stats["tokens_generated"], "seconds": c.seconds, "cpu_seconds": c.cpu_seconds,
                               **{k: res.stats[k] for k in ("decode_steps", "mean_rows_per_step", "accuracy_per_sample", "n_stopped_early",
                                                            "n_fallback_groups", "tokens_resumed_for_fallback", "n_fallback_resumes_prefilled",
                                                            "prefill_tokens", "seconds_admitting", "seconds_decoding")}})
        console.log(f"repeat {r}: " + ", ".join(f"{k} {v[-1]['tokens'] / v[-1]['seconds']:.1f} tok/s" for k, v in runs.items()))

    def summary(name: str) -> dict:
        rs = runs[name]
        return {"tokens": [x["tokens"] for x in rs], "seconds": [round(x["seconds"], 2) for x in rs],
                "cpu_seconds": [round(x["cpu_seconds"], 2) for x in rs], "tokens_per_second": [round(x["tokens"] / x["seconds"], 1) for x in rs],
                "tokens_per_cpu_second": [round(x["tokens"] / x["cpu_seconds"], 1) for x in rs]}

    plain, bare, pk = summary("plain"), summary("no_capture"), summary("probekit")
    capture_cost = 1 - np.median(pk["tokens_per_second"]) / np.median(bare["tokens_per_second"])
    vs_plain = 1 - np.median(pk["tokens_per_second"]) / np.median(plain["tokens_per_second"])
    capture_cpu_cost = 1 - np.median(pk["tokens_per_cpu_second"]) / np.median(bare["tokens_per_cpu_second"])
    filtered = {}
    for name, t in thresholds.items():
        fl = summary(name)
        # per repeat, paired with that repeat's unfiltered run
        ratio = {k: np.asarray([f[k] for f in runs[name]]) / np.asarray([p[k] for p in runs["probekit"]])
                 for k in ("tokens", "decode_steps", "seconds", "cpu_seconds", "seconds_decoding")}
        saved = {k: 1 - float(np.median(v)) for k, v in ratio.items()}
        filtered[f"filtered_{name}"] = {
            **fl, "threshold": t, "runs": runs[name],
            "tokens_saved": round(saved["tokens"], 4), "decode_steps_saved": round(saved["decode_steps"], 4),
            "wall_clock_saved": round(saved["seconds"], 4), "cpu_time_saved": round(saved["cpu_seconds"], 4),
            **{f"{k}_saved_per_repeat": [round(1 - x, 4) for x in v] for k, v in ratio.items()},
            "decoding_seconds_saved": round(saved["seconds_decoding"], 4),
            "wall_clock_saved_over_tokens_saved": round(saved["seconds"] / saved["tokens"], 2) if saved["tokens"] else None,
            "decoding_seconds_saved_over_tokens_saved": round(saved["seconds_decoding"] / saved["tokens"], 2) if saved["tokens"] else None,
            "decoding_seconds_per_token_vs_unfiltered": round(float(np.median(ratio["seconds_decoding"] / ratio["tokens"])), 3),
            "admitting_share_of_unfiltered_seconds": round(float(np.median([p["seconds_admitting"] / p["seconds"] for p in runs["probekit"]])), 3),
            "seconds_per_token_vs_unfiltered": round(float(np.median(ratio["seconds"] / ratio["tokens"])), 3),
            "cpu_seconds_per_token_vs_unfiltered": round(float(np.median(ratio["cpu_seconds"] / ratio["tokens"])), 3),
        }
    result = {
        **results_header(exact_command=False, day_only=True, machine=machine_line()),
        "model": "smollm2-135m", "model_dtype": str(loaded.dtype).replace("torch.", ""), "torch_threads": threads, "layer": 15,
        "prompts": {"n": len(prompts), "samples": args.samples, "task": "1-step, 2-shot, raw (the generation study's test problems)"},
        "probe": {"n_train_problems": len(train), "fitted_by": "benchmarks.generation_task.fit_study_probe", "thresholds": thresholds},
        "sampling": {**SAMPLING, "stop": "\\n\\n"}, "batch_size": cfg.batch_size, "batching": "continuous", "repeats": args.repeats,
        "plain_model_generate": plain, "probekit_decode_without_capture": bare,
        "probekit_generate": {**pk, "runs": runs["probekit"]},
        "probekit_generate_filtered": filtered,
        "state_capture_throughput_cost": round(float(capture_cost), 3), "state_capture_cpu_time_cost": round(float(capture_cpu_cost), 3),
        "throughput_cost_vs_plain_generate": round(float(vs_plain), 3), "capture_target": "<= 0.10 (both)",
        "capture_target_met": bool(capture_cost <= 0.10 and vs_plain <= 0.10),
        "note": "plain generate counts tokens before EOS/padding; its stop strings end a sequence like probekit's --stop. "
                "Savings are medians over repeats of each repeat's filtered run against its unfiltered run.",
    }
    write_json(args.out, result)
    console.print(table("Generation, side by side (median over repeats)", ["method", "tokens", "seconds", "tokens/s"],
                        [[k, int(np.median(v["tokens"])), float(np.median(v["seconds"])), float(np.median(v["tokens_per_second"]))]
                         for k, v in [("plain model.generate", plain), ("probekit loop, no capture", bare), ("probekit generate", pk)]
                         + list(filtered.items())]))
    console.print(f"state capture costs {100 * capture_cost:.1f}% throughput against the same loop without it, "
                  f"({100 * capture_cpu_cost:.1f}% in CPU time), {100 * vs_plain:.1f}% against plain generate (target <= 10%; negative = faster)")
    for name, f in filtered.items():
        console.print(f"{name}: {100 * f['tokens_saved']:.1f}% of tokens, {100 * f['wall_clock_saved']:.1f}% of wall-clock, "
                      f"{100 * f['decoding_seconds_saved']:.1f}% of decoding time and "
                      f"{100 * f['cpu_time_saved']:.1f}% of CPU time saved; seconds per token {f['seconds_per_token_vs_unfiltered']:.3f}x "
                      f"(decoding {f['decoding_seconds_per_token_vs_unfiltered']:.3f}x, CPU {f['cpu_seconds_per_token_vs_unfiltered']:.3f}x) the unfiltered run's; "
                      f"admitting (prefill + merging rows in, which stopping cannot save) {100 * f['admitting_share_of_unfiltered_seconds']:.0f}% of an unfiltered run")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
