"""What the writer lane buys: `probekit extract` with `--overlap` (the default) and `--no-overlap`, side by side.

With the overlap, the states' way to the host (the cast to float16, the finiteness checks, the device-to-host
copies, pinned and non-blocking on a GPU) and each shard's HDF5 write run on a writer thread while the next
batch's forward runs (probekit/extract/lane.py); without it they run in turn, as before the lane existed.

In one process, with one model and the same trajectories, the two modes alternate (the order reverses every
repeat) and the medians are reported. The two stores are compared array by array (they must be identical). The
host-side work the lane leaves on the forward's path is timed on its own, against the extraction: tokenising
(done for the whole input before the first forward) and padding each batch. That says whether preparing the next
batch ahead of the forward would be worth doing. On a GPU, one more run of each mode under torch.profiler gives
the GPU's busy fraction, kernel time over wall time (run_gpu.py's `overlap` stage, 135M, before and after).

    python benchmarks/overlap.py --threads 1 --trajectories 64 --repeats 5 --shard-size 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import add_threads_option, apply_threads, machine, plain_log as log, results_header  # noqa: E402
from benchmarks.overlap_stage import measure  # noqa: E402


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data-dir", default=None, help="folder holding gsm8k/example_model_solutions.jsonl (default ../shared/data)")
    ap.add_argument("--model", default="smollm2-135m", help="bundled name, model folder or .gguf file")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (run_gpu.py's `overlap` stage runs this on a GPU)")
    ap.add_argument("--trajectories", type=int, default=64, help="GSM8K trajectories extracted per run (file order)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shard-size", type=int, default=16, help="trajectories per shard (several shards: their writes overlap too)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "overlap_cpu.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/probekit-overlap-bench"))
    add_threads_option(ap)


def main(args) -> int:
    from probekit.data.fetch import resolve_data_dir
    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.schema import write_trajectories
    from probekit.io import write_json
    from probekit.models import load_model

    threads = apply_threads(args.threads)
    result = {**results_header("extract --overlap against --no-overlap", machine=machine(
        "cpu", "cpu_count", "cpus_available", "gpu", "torch", "torch_threads", "python", "load_average_at_start=load_average", "git_commit"))}
    data_dir = resolve_data_dir(args.data_dir, default=ROOT.parent / "shared" / "data", need=("gsm8k-model-solutions",))
    args.work.mkdir(parents=True, exist_ok=True)
    subset = args.work / "subset.jsonl"
    write_trajectories(subset, labelled_solutions(data_dir / "gsm8k" / "example_model_solutions.jsonl")[:args.trajectories])
    loaded = load_model(args.model, device=args.device, dtype="auto")
    result.update(model=args.model, data=f"GSM8K labelled model solutions, first {args.trajectories} in file order", threads=threads)
    result["overlap"] = measure(loaded, subset, args.work, repeats=args.repeats, shard_size=args.shard_size, layer=args.layer,
                                model=args.model)
    result["load_average_at_end"] = machine("load_average")["load_average"]
    write_json(args.out, result)
    o = result["overlap"]
    log(f"overlap {o['tokens_per_s_median']['overlap']:,.0f} tok/s, no overlap {o['tokens_per_s_median']['no_overlap']:,.0f} tok/s: "
        f"{o['speedup_overlap_vs_no_overlap_median']:.3f}x (per repeat {o['speedup_per_repeat_range']}); stores identical: "
        f"{o['stores_identical']}; the writer's work = {o['work_moved_to_the_writer_thread']['fraction_of_no_overlap_extraction']:.1%}, tokenise + pad = {o['host_side_preparation']['fraction_of_no_overlap_extraction']:.1%} of the "
        f"extraction -> {args.out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cli_args(parser)
    sys.exit(main(parser.parse_args()))
