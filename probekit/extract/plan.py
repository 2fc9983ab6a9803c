"""What to compute and store: position policies and length-bucketed batches."""

from __future__ import annotations

import numpy as np

from probekit.errors import ProbekitError


def parse_positions(spec: str) -> int:
    """Return the stride for a positions policy: 'all' -> 1, 'last' -> 0, 'stride:K' -> K."""
    if spec == "all":
        return 1
    if spec == "last":
        return 0
    if spec.startswith("stride:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ProbekitError(f"--positions must be all, last or stride:K with K >= 1, got '{spec}'")


def select_positions(first: int, total: int, stride: int) -> np.ndarray:
    """Completion token positions to store, out of the kept range [first, total).

    The last token is always kept: the reward is read there.
    """
    if stride == 0:
        return np.asarray([total - 1], dtype=np.int64)
    pos = np.arange(first, total, dtype=np.int64)
    keep = pos[pos % stride == 0]
    if len(keep) == 0 or keep[-1] != total - 1:
        keep = np.append(keep, total - 1)
    return keep


CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 8192


def batch_token_budget(requested: int | None, device: str) -> int:
    """The padded-token budget of one batch: `requested`, else the device's default.

    A CPU runs small batches faster: their activations stay in cache, and a
    small bucket pads less (SmolLM2-135M, bfloat16, 2 cores: 2048 tokens 1.2x
    faster than 8192, 512 slower again). A GPU wants work in flight; 8192 is
    the budget measured there (benchmarks/results/speed-gpu.json).
    """
    if requested is not None:
        if requested < 1:
            raise ProbekitError("--max-batch-tokens must be positive")
        return requested
    return CPU_BATCH_TOKENS if str(device).startswith("cpu") else GPU_BATCH_TOKENS


# What one more forward call costs on top of its tokens, in tokens: the per-call work of every block (kernel launches,
# hooks, masks) that a batch pays once. Measured by benchmarks/bucketing.py (SmolLM2-135M to layer 8, bfloat16, one
# CPU thread): a single-row forward costs 35-65 tokens of a 2,048-token batch's time beyond its own tokens, and server
# batches of 16 texts ran fastest at 64-128 (results/bucketing.json). A GPU's launch cost is larger, but its budget
# (8192 tokens) makes its batches large anyway.
BATCH_OVERHEAD_TOKENS = 64


def length_buckets(lengths: list[int] | np.ndarray, max_batch_tokens: int, rows: list[int] | np.ndarray | None = None,
                   batch_overhead: int | None = None) -> list[list[int]]:
    """Group item indices into batches of similar length under a padded-token budget, at the least padded cost.

    A batch's cost is its rows times its longest item, `sum(rows) * max_len` (an
    item is one row unless `rows` says how many it stands for: a shared
    prompt's completions), plus `batch_overhead` tokens for the call itself
    (default `BATCH_OVERHEAD_TOKENS`);
    it stays under `max_batch_tokens` (a single item over the budget gets a
    batch of its own). Filling each batch greedily to the budget pads a few
    random lengths to their longest (a server batch of 16 texts of 74-153
    tokens: 20% more padded tokens than the texts hold); the least-cost split
    of the length-sorted items into runs of neighbours, found by dynamic
    programming, pads little at any batch size. With one row per item no
    grouping at all costs less (an optimal one never interleaves lengths);
    with weighted rows the budget can make an interleaved one cheaper, and
    the split is the best of those that keep lengths in runs. Batches come longest first: a run that will not
    fit in memory fails on its first batch.
    """
    if max_batch_tokens < 1:
        raise ProbekitError("--max-batch-tokens must be positive")
    n = len(lengths)
    overhead = BATCH_OVERHEAD_TOKENS if batch_overhead is None else batch_overhead
    rows = np.ones(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]  # longest first
    longest = np.asarray(lengths, dtype=np.int64)[order]
    before = np.concatenate([[0], np.cumsum(rows[order])])  # rows of the first k sorted items
    cost = np.zeros(n + 1)  # cost[k]: the least cost of batching the k longest items
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last batch of that best split starts
    first = 0  # the earliest start of a batch that may end at item k (only grows: lengths fall as k grows)
    for k in range(1, n + 1):
        while first < k - 1 and longest[first] * (before[k] - before[first]) > max_batch_tokens:
            first += 1
        starts = np.arange(first, k)
        total = cost[starts] + overhead + longest[starts] * (before[k] - before[starts])
        best = int(np.argmin(total))  # the first minimum: the fewest, longest-reaching batches among equals
        cost[k], cut[k] = total[best], starts[best]
    batches: list[list[int]] = []
    k = n
    while k > 0:
        batches.append([int(i) for i in order[cut[k]:k]])
        k = int(cut[k])
    return batches[::-1]


def shared_prompts(prompt_keys: list[tuple]) -> tuple[list[list[int]], list[int]]:
    """(units, alone): items whose prompt tokens repeat, grouped by prompt (first-seen order), and the rest.

    A unit's prompt runs once and its KV cache serves every completion of the
    unit; an item with a unique or empty prompt gains nothing from that and
    keeps the plain path.
    """
    by_key: dict[tuple, list[int]] = {}
    for i, key in enumerate(prompt_keys):
        by_key.setdefault(key, []).append(i)
    units = [items for key, items in by_key.items() if key and len(items) > 1]
    alone = sorted(i for key, items in by_key.items() if not key or len(items) == 1 for i in items)
    return units, alone
