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


def length_buckets(lengths: list[int] | np.ndarray, max_batch_tokens: int, rows: list[int] | np.ndarray | None = None) -> list[list[int]]:
    """Group item indices into batches of similar length under a padded-token budget.

    Sorting by length keeps padding small; a batch's cost is its rows times
    its longest item, `sum(rows) * max_len` (an item is one row unless `rows`
    says how many it stands for: a shared prompt's completions), which stays
    under `max_batch_tokens` (a single item over the budget gets a batch of its own).
    """
    if max_batch_tokens < 1:
        raise ProbekitError("--max-batch-tokens must be positive")
    rows = np.ones(len(lengths), dtype=np.int64) if rows is None else np.asarray(rows)
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]  # longest first: fail fast on memory
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = current_rows = 0
    for idx in order:
        n, r = int(lengths[idx]), int(rows[idx])
        new_max = max(current_max, n)
        if current and new_max * (current_rows + r) > max_batch_tokens:
            batches.append(current)
            current, new_max, current_rows = [], n, 0
        current.append(int(idx))
        current_max, current_rows = new_max, current_rows + r
    if current:
        batches.append(current)
    return batches


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
