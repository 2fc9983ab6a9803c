"""CPU attention (scaled_dot_product_attention) in bfloat16 vs float32, causal vs masked vs eager, at extraction's shapes.

    .venv/bin/python benchmarks/adhoc/sdpa_dtype.py      (2 torch threads; best of 5; not recorded in a JSON)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.harness import Clock, add_threads_option, apply_threads  # noqa: E402

B, H, L, D = 27, 9, 300, 64


def best_ms(f, repeats: int = 5) -> float:
    f()
    times = []
    for _ in range(repeats):
        with Clock() as clock:
            f()
        times.append(clock.seconds)
    return min(times) * 1000


def add_cli_args(ap: argparse.ArgumentParser) -> None:
    add_threads_option(ap, default=2)


def main(args) -> None:
    import torch
    import torch.nn.functional as F

    apply_threads(args.threads)
    for dt in (torch.bfloat16, torch.float32):
        q, k, v = (torch.randn(B, H, L, D, dtype=dt) for _ in range(3))
        mask = torch.ones(L, L, dtype=torch.bool).tril()[None, None].expand(B, 1, L, L).clone()
        additive = torch.zeros(B, 1, L, L, dtype=dt).masked_fill(~mask, float("-inf"))

        def eager():
            return ((q @ k.transpose(-1, -2)) * D**-0.5 + additive).softmax(-1) @ v

        with torch.inference_mode():
            print(dt, "causal", round(best_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), 1), "ms")
            print(dt, "bool mask", round(best_ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), 1), "ms")
            print(dt, "eager", round(best_ms(eager), 1), "ms")
    print("causal GFLOP per call", 4 * B * H * L * L * D / 2 / 1e9)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cli_args(parser)
    main(parser.parse_args())
