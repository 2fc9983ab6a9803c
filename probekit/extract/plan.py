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


def length_buckets(lengths: list[int] | np.ndarray, max_batch_tokens: int) -> list[list[int]]:
    """Group item indices into batches of similar length under a padded-token budget.

    Sorting by length keeps padding small; a batch's cost is
    `len(batch) * max_len`, which stays under `max_batch_tokens` (a single
    item longer than the budget gets a batch of its own).
    """
    if max_batch_tokens < 1:
        raise ProbekitError("--max-batch-tokens must be positive")
    order = np.argsort(np.asarray(lengths), kind="stable")[::-1]  # longest first: fail fast on memory
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = 0
    for idx in order:
        n = int(lengths[idx])
        new_max = max(current_max, n)
        if current and new_max * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current, new_max = [], n
        current.append(int(idx))
        current_max = new_max
    if current:
        batches.append(current)
    return batches
