"""Scoring text through the reward-model API against `probekit extract` on the same texts, side by side in one process.

`RewardProbe.score` runs extraction's own forward (`probekit.extract.live.live_states`) and the one scorer; the
target is API throughput within 10% of extract's on the same texts. Both run on the same loaded model (the bundled
SmolLM2-135M, compute dtype auto), the same layer and the same GSM8K labelled solutions, interleaved (extract, API,
extract, API, ...) over --repeats, medians reported. Extract writes a store (HDF5 shards, every completion position);
the API keeps only the last position of each text (all it needs for a last-token probe's reward) and, with --q, every
position with its Q-value.

Results: benchmarks/results/reward_api.json.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import ArgumentParser, Clock, add_threads_option, apply_threads, console, machine, print_stdout, results_header, table  # noqa: E402
from benchmarks.studies import add_data_dir_option, data_folder  # noqa: E402
from benchmarks.subsets import gsm8k_first_problems  # noqa: E402


def add_cli_args(ap: ArgumentParser) -> None:
    add_data_dir_option(ap)
    ap.add_argument("--problems", type=int, default=60, help="first N GSM8K test problems (x 4 labelled solutions; 60: the recorded run)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "reward_api.json")
    add_threads_option(ap, default=1)


def main(args) -> None:
    apply_threads(args.threads)
    from probekit.config import FitConfig
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.models import load_model
    from probekit.pipeline import fit_probe
    from probekit.probe.inputs import input_spec
    from probekit.reward import RewardProbe
    from probekit.store import Store

    work = Path(tempfile.mkdtemp(prefix="reward-api-"))
    try:
        data = gsm8k_first_problems(data_folder(args.data_dir), work, args.problems)
        texts = [json.loads(line) for line in data.read_text().splitlines()]
        prompts, completions = [t["prompt"] for t in texts], [t["completion"] for t in texts]
        loaded = load_model(args.model)
        opts = dict(trajectories=data, pairs=data.with_name("pairs.jsonl"), layers=str(args.layer))
        first = extract(ExtractOptions(out=work / "store0", **opts), loaded=loaded)
        n_tokens = int(first.manifest["stats"]["n_tokens_processed"])
        ckpt = fit_probe(Store(work / "store0"), work / "ckpt", FitConfig().vary(epochs=3, n_boot=20))
        rp = RewardProbe(ckpt, loaded, input_spec(ckpt))
        rp.score(prompts[:8], completions[:8])  # warm-up
        seconds = {"extract": [], "api": [], "api_q": []}
        cpu = {k: [] for k in seconds}  # process CPU seconds (one thread): less moved by other load on a shared machine
        for r in range(args.repeats):
            out = work / f"store-{r}"
            clock = Clock().start()
            extract(ExtractOptions(out=out, **opts), loaded=loaded)
            clock.stop()
            seconds["extract"].append(clock.seconds)
            cpu["extract"].append(clock.cpu_seconds)
            shutil.rmtree(out)
            clock = Clock().start()
            rp.score(prompts, completions)
            clock.stop()
            seconds["api"].append(clock.seconds)
            cpu["api"].append(clock.cpu_seconds)
            clock = Clock().start()
            rp.score(prompts, completions, q=True)
            clock.stop()
            seconds["api_q"].append(clock.seconds)
            cpu["api_q"].append(clock.cpu_seconds)
            console.print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()))
        med = {k: statistics.median(v) for k, v in seconds.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        result = {
            **results_header("reward_api", machine=machine("cpu", "cpu_count", "torch", "torch_threads", "load_average", "git_commit")),
            "model": args.model, "compute_dtype": str(loaded.dtype).removeprefix("torch."), "layer": args.layer,
            "n_texts": len(texts), "n_tokens": n_tokens, "repeats": args.repeats, "seconds": seconds, "cpu_seconds": cpu,
            "tokens_per_second": {k: round(n_tokens / v, 1) for k, v in med.items()},
            "api_over_extract": round(med["extract"] / med["api"], 3), "api_q_over_extract": round(med["extract"] / med["api_q"], 3),
            "api_over_extract_cpu": round(med_cpu["extract"] / med_cpu["api"], 3),
            "api_q_over_extract_cpu": round(med_cpu["extract"] / med_cpu["api_q"], 3),
            "target": "API throughput >= 0.9 x extract's on the same texts",
        }
        result["target_met"] = min(result["api_over_extract"], result["api_over_extract_cpu"]) >= 0.9
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_stdout(table("reward API vs extract (medians)", ["path", "tokens/s", "x extract"],
                       [["extract", f"{result['tokens_per_second']['extract']:,.0f}", "1.00"],
                        ["RewardProbe.score", f"{result['tokens_per_second']['api']:,.0f}", f"{result['api_over_extract']:.2f}"],
                        ["RewardProbe.score(q=True)", f"{result['tokens_per_second']['api_q']:,.0f}", f"{result['api_q_over_extract']:.2f}"]]))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    main(parser.parse_args())
