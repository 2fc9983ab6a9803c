"""Extraction time against --max-batch-tokens, interleaved repeats (the measurement behind the CPU default of 2,048).

    .venv/bin/python benchmarks/adhoc/batch_budget.py [DATA_DIR] [BUDGET ...]
      default: ../shared/data, budgets 512 1024 2048 3072 4096 8192 16384; 80 GSM8K solutions, layer 15, 2 repeats

Prints seconds per (budget, --share-prompts) and repeat; not recorded in a JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Clock, add_threads_option, apply_threads  # noqa: E402
from benchmarks.speed_stages import LAYER, MODEL, warm_up  # noqa: E402

BUDGETS = [512, 1024, 2048, 3072, 4096, 8192, 16384]
N_SOLUTIONS = 80
REPEATS = 2


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("data_dir", nargs="?", type=Path, default=ROOT.parent / "shared" / "data", metavar="DATA_DIR",
                    help="data folder holding gsm8k/example_model_solutions.jsonl (default ../shared/data)")
    ap.add_argument("budgets", nargs="*", type=int, metavar="BUDGET",
                    help=f"--max-batch-tokens values (default {' '.join(map(str, BUDGETS))})")
    add_threads_option(ap, default=2)


def main(args) -> None:
    from probekit.data.gsm8k import labelled_solutions
    from probekit.data.schema import write_trajectories
    from probekit.extract.options import ExtractOptions
    from probekit.extract.run import extract
    from probekit.models import load_model

    budgets = args.budgets or BUDGETS
    apply_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    sub = work / "s.jsonl"
    write_trajectories(sub, labelled_solutions(args.data_dir / "gsm8k" / "example_model_solutions.jsonl")[:N_SOLUTIONS])
    loaded = load_model(MODEL)
    warm_up(loaded)
    res: dict = {}
    for rep in range(REPEATS):
        for budget in budgets:
            for share in (True, False):
                opts = ExtractOptions(trajectories=sub, out=work / f"o{budget}{share}{rep}", model=MODEL, layers=str(LAYER),
                                      shard_size=N_SOLUTIONS, max_batch_tokens=budget, share_prompts=share)
                with Clock() as clock:
                    extract(opts, loaded=loaded)
                res.setdefault((budget, share), []).append(round(clock.seconds, 2))
    for (budget, share), secs in res.items():
        print(f"max_batch_tokens {budget:6d} share_prompts {share!s:5s} seconds {secs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
