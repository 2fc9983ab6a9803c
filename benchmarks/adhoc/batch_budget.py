"""Extraction time against --max-batch-tokens, interleaved repeats (the measurement behind the CPU default of 2,048).

    .venv/bin/python benchmarks/adhoc/batch_budget.py [DATA_DIR] [BUDGET ...]
      default: ../shared/data, budgets 512 1024 2048 3072 4096 8192 16384; 80 GSM8K solutions, layer 15, 2 repeats

Prints seconds per (budget, --share-prompts) and repeat; not recorded in a JSON.
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.run_speed import LAYER, MODEL, warm_up  # noqa: E402
from probekit.data.gsm8k import labelled_solutions  # noqa: E402
from probekit.data.schema import write_trajectories  # noqa: E402
from probekit.extract.options import ExtractOptions
from probekit.extract.run import extract
from probekit.models import load_model  # noqa: E402

data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
budgets = [int(b) for b in sys.argv[2:]] or [512, 1024, 2048, 3072, 4096, 8192, 16384]
torch.set_num_threads(2)
n = 80
work = Path(tempfile.mkdtemp())
sub = work / "s.jsonl"
write_trajectories(sub, labelled_solutions(data / "gsm8k" / "example_model_solutions.jsonl")[:n])
loaded = load_model(MODEL)
warm_up(loaded)
res: dict = {}
for rep in range(2):
    for budget in budgets:
        for share in (True, False):
            opts = ExtractOptions(trajectories=sub, out=work / f"o{budget}{share}{rep}", model=MODEL, layers=str(LAYER), shard_size=n,
                                  max_batch_tokens=budget, share_prompts=share)
            t = time.perf_counter()
            extract(opts, loaded=loaded)
            res.setdefault((budget, share), []).append(round(time.perf_counter() - t, 2))
for (budget, share), secs in res.items():
    print(f"max_batch_tokens {budget:6d} share_prompts {share!s:5s} seconds {secs}")
