"""Length buckets by least padded cost against filling each batch to the budget, side by side in one process.

`probekit.extract.plan.length_buckets` splits length-sorted texts into batches at the least cost, padded tokens plus
`BATCH_OVERHEAD_TOKENS` per forward call; the baseline (`fill`, below: the planner before it) packs each batch up to
the 2,048-token CPU budget. Both run the same forward through `RewardProbe.score` (extraction's `build_shard`), on
GSM8K labelled solutions, in two text sets:

* `gsm8k`: the file as it is (4 solutions per problem share their prompt, which runs once);
* `distinct`: every solution with its own prompt (a counter in front), as a reward server's requests arrive;

and two call sizes: all texts in one call (a file, `probekit score`), and calls of 16 texts in file order (a server
batch at 32 clients). Repeats interleave every configuration, the order reversing each repeat; medians reported.
It also measures what one more forward call costs, in tokens: single-row forwards of 16-256 tokens against a
2,048-token batch's per-token time (the intercept of a least-squares line), which is what the overhead constant
stands for.

    .venv/bin/python benchmarks/bucketing.py --threads 1     # -> benchmarks/results/bucketing.json
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import ArgumentParser, add_threads_option, apply_threads, log, machine, print_stdout, results_header, table  # noqa: E402
from benchmarks.studies import add_data_dir_option, data_folder  # noqa: E402
from benchmarks.subsets import gsm8k_first_problems  # noqa: E402

CALL_SIZES = {"one call": None, "calls of 16": 16}


def fill(lengths, max_batch_tokens: int, rows=None) -> list[list[int]]:
    """The baseline: longest first, each batch filled until one more item would pass the budget."""
    rows = np.ones(len(lengths), dtype=np.int64) if rows is None else np.asarray(rows)
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = current_rows = 0
    for idx in np.argsort(np.asarray(lengths), kind="stable")[::-1]:
        n, r = int(lengths[idx]), int(rows[idx])
        if current and max(current_max, n) * (current_rows + r) > max_batch_tokens:
            batches.append(current)
            current, current_max, current_rows = [], 0, 0
        current.append(int(idx))
        current_max, current_rows = max(current_max, n), current_rows + r
    if current:
        batches.append(current)
    return batches


def add_cli_args(ap: ArgumentParser) -> None:
    add_data_dir_option(ap)
    ap.add_argument("--problems", type=int, default=30, help="first N GSM8K test problems (x 4 labelled solutions)")
    ap.add_argument("--layer", type=int, default=8, help="the probe's layer (serve_bench's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overheads", default="0,32,96", help="BATCH_OVERHEAD_TOKENS values tried (comma list)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bucketing.json")
    add_threads_option(ap, default=1)


def call_overhead_tokens(loaded, layer: int, repeats: int) -> dict:
    """Seconds of single-row forwards of n tokens, fitted as a + b*n; a/b is one call's cost in tokens."""
    import torch

    from probekit.extract.forward import forward_layers

    def seconds(rows: int, n: int) -> float:
        ids = torch.randint(100, 1000, (rows, n))
        mask = torch.ones_like(ids)
        forward_layers(loaded.model, ids, mask, [layer])
        times = []
        for _ in range(repeats + 2):
            t = time.perf_counter()
            forward_layers(loaded.model, ids, mask, [layer])
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    lengths = [16, 32, 64, 128, 256]
    single = [seconds(1, n) for n in lengths]
    slope, intercept = np.polyfit(lengths, single, 1)
    batch = seconds(16, 128) / 2048
    return {"single_row_tokens": lengths, "single_row_seconds": [round(s, 5) for s in single],
            "fit_intercept_seconds": round(float(intercept), 5), "fit_seconds_per_token": round(float(slope), 7),
            "batch_16x128_seconds_per_token": round(batch, 7), "call_cost_tokens": round(float(intercept) / batch, 1)}


def main(args) -> None:
    apply_threads(args.threads)
    import probekit.extract.plan as plan
    import probekit.extract.run as run
    from probekit.config import FitConfig
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.models import load_model
    from probekit.pipeline import fit_probe
    from probekit.probe.inputs import input_spec
    from probekit.reward import RewardProbe
    from probekit.store import Store

    least_cost = plan.length_buckets
    with tempfile.TemporaryDirectory(prefix="bucketing-") as tmp:
        work = Path(tmp)
        data = gsm8k_first_problems(data_folder(args.data_dir), work, args.problems)
        texts = [json.loads(line) for line in data.read_text().splitlines()]
        loaded = load_model(args.model)
        extract(ExtractOptions(trajectories=data, pairs=data.with_name("pairs.jsonl"), layers=str(args.layer), out=work / "store"), loaded=loaded)
        ckpt = fit_probe(Store(work / "store"), work / "ckpt", FitConfig().vary(epochs=3, n_boot=20))
        rp = RewardProbe(ckpt, loaded, input_spec(ckpt))
        sets = {"gsm8k": ([t["prompt"] for t in texts], [t["completion"] for t in texts]),
                "distinct": ([f"({i}) {t['prompt']}" for i, t in enumerate(texts)], [t["completion"] for t in texts])}
        rp.score(*[x[:8] for x in sets["gsm8k"]])  # warm-up
        overheads = [int(x) for x in args.overheads.split(",")]
        configs = [("fill", None), *[("least-cost", c) for c in overheads]]
        runs = [(s, call, planner, c) for s in sets for call in CALL_SIZES for planner, c in configs
                if planner == "fill" or c == plan.BATCH_OVERHEAD_TOKENS or (s == "distinct" and CALL_SIZES[call])]
        seconds: dict[tuple, list[float]] = {r: [] for r in runs}
        default = plan.BATCH_OVERHEAD_TOKENS
        try:
            for rep in range(args.repeats):
                for key in runs if rep % 2 == 0 else runs[::-1]:
                    name, call, planner, c = key
                    run.length_buckets = fill if planner == "fill" else least_cost
                    plan.BATCH_OVERHEAD_TOKENS = default if c is None else c
                    prompts, completions = sets[name]
                    size = CALL_SIZES[call] or len(prompts)
                    t = time.perf_counter()
                    for i in range(0, len(prompts), size):
                        rp.score(prompts[i:i + size], completions[i:i + size])
                    seconds[key].append(time.perf_counter() - t)
                log(f"repeat {rep + 1} of {args.repeats} done")
        finally:
            run.length_buckets, plan.BATCH_OVERHEAD_TOKENS = least_cost, default
        distinct_lengths = np.asarray([len(e.input_ids) for e in rp.encode(*sets["distinct"])])
        padded = {}
        for planner, fn in (("fill", fill), ("least-cost", least_cost)):
            for call, size in CALL_SIZES.items():
                size = size or len(distinct_lengths)
                calls = [distinct_lengths[i:i + size] for i in range(0, len(distinct_lengths), size)]
                plans = [(ls, fn(ls, plan.CPU_BATCH_TOKENS)) for ls in calls]
                padded[f"{planner}, {call}"] = {"padded_tokens": int(sum(len(b) * ls[b].max() for ls, p in plans for b in p)),
                                                "forward_calls": sum(len(p) for _, p in plans)}
        overhead = call_overhead_tokens(loaded, args.layer, args.repeats)

    rows, results = [], []
    for key, secs in seconds.items():
        name, call, planner, c = key
        med = statistics.median(secs)
        base = statistics.median(seconds[(name, call, "fill", None)])
        results.append({"texts": name, "call": call, "planner": planner, "overhead_tokens": c, "seconds": [round(s, 3) for s in secs],
                        "texts_per_second": round(len(texts) / med, 2), "speedup_over_fill": round(base / med, 3)})
        rows.append([name, call, planner if c is None else f"{planner} ({c})", f"{len(texts) / med:.1f}", f"{base / med:.2f}x"])
    out = {**results_header("bucketing", machine=machine("cpu", "cpu_count", "torch", "torch_threads", "load_average", "git_commit")),
           "model": args.model, "layer": args.layer, "n_texts": len(texts), "repeats": args.repeats, "budget_tokens": plan.CPU_BATCH_TOKENS,
           "default_overhead_tokens": plan.BATCH_OVERHEAD_TOKENS, "runs": results, "distinct_padding": {"real_tokens": int(distinct_lengths.sum()), **padded},
           "call_overhead": overhead}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print_stdout(table("length buckets: least cost vs fill (medians)", ["texts", "call", "planner (overhead)", "texts/s", "vs fill"], rows))
    log(f"one forward call costs about {overhead['call_cost_tokens']} tokens; wrote {args.out}")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    main(parser.parse_args())
