"""Length buckets: every item once, the budget kept, and the least padded cost (checked against brute force)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from probekit.errors import ProbekitError
from probekit.extract.plan import BATCH_OVERHEAD_TOKENS, length_buckets


def cost(batches: list[list[int]], lengths, rows, overhead: int) -> int:
    return sum(overhead + max(lengths[i] for i in b) * sum(rows[i] for i in b) for b in batches)


def feasible(batch: list[int], lengths, rows, budget: int) -> bool:
    return len(batch) == 1 or max(lengths[i] for i in batch) * sum(rows[i] for i in batch) <= budget


def set_partitions(items: list[int]):
    """Every partition of `items` into non-empty blocks (Bell(7) = 877 for 7 items)."""
    if not items:
        yield []
        return
    head, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[head], *part]
        for k in range(len(part)):
            yield [*part[:k], [head, *part[k]], *part[k + 1:]]


def contiguous_partitions(order: list[int]):
    """Every split of `order` into runs of neighbours."""
    for cuts in itertools.product([False, True], repeat=max(len(order) - 1, 0)):
        runs, run = [], [order[0]]
        for item, cut in zip(order[1:], cuts):
            if cut:
                runs.append(run)
                run = []
            run.append(item)
        yield [*runs, run]


def random_case(seed: int, weighted: bool):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    lengths = [int(x) for x in rng.integers(1, 60, n)]
    rows = [int(x) for x in rng.integers(1, 4, n)] if weighted else [1] * n
    return lengths, rows, int(rng.integers(40, 200)), int(rng.choice([0, 5, 32, 400]))


def check_plan(got, lengths, rows, budget) -> None:
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    assert all(feasible(b, lengths, rows, budget) for b in got)


@pytest.mark.parametrize("seed", range(12))
def test_least_cost_among_all_groupings(seed):
    """One row per item: the dynamic programme over length-sorted cuts is the cheapest of all feasible groupings
    (brute force over every set partition), not only of the contiguous ones."""
    lengths, rows, budget, overhead = random_case(seed, weighted=False)
    got = length_buckets(lengths, budget, batch_overhead=overhead)
    check_plan(got, lengths, rows, budget)
    best = min(cost(p, lengths, rows, overhead) for p in set_partitions(list(range(len(lengths))))
               if all(feasible(b, lengths, rows, budget) for b in p))
    assert cost(got, lengths, rows, overhead) == best


@pytest.mark.parametrize("seed", range(12))
def test_least_cost_among_runs_with_weighted_rows(seed):
    """Shared-prompt units weigh several rows: the plan is the cheapest split of the length-sorted units into runs."""
    lengths, rows, budget, overhead = random_case(seed, weighted=True)
    got = length_buckets(lengths, budget, rows=rows, batch_overhead=overhead)
    check_plan(got, lengths, rows, budget)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = min(cost(p, lengths, rows, overhead) for p in contiguous_partitions(order) if all(feasible(b, lengths, rows, budget) for b in p))
    assert cost(got, lengths, rows, overhead) == best


def test_splits_where_filling_to_the_budget_pads_most():
    """Two long texts and four short ones fit one 2048-token batch, but padding the short ones to 153 costs more than
    a second call: the split is between the long and the short."""
    lengths = [76, 153, 80, 150, 75, 78]
    assert length_buckets(lengths, 2048, batch_overhead=32) == [[1, 3], [2, 5, 0, 4]]
    assert length_buckets(lengths, 2048, batch_overhead=10_000) == [[1, 3, 2, 5, 0, 4]]  # calls dearer than padding


def test_longest_first_and_an_item_over_the_budget_alone():
    lengths = [10, 5000, 12, 11]
    got = length_buckets(lengths, 2048)
    assert got[0] == [1]
    maxima = [max(lengths[i] for i in b) for b in got]
    assert maxima == sorted(maxima, reverse=True)
    assert length_buckets([], 2048) == []


def test_budget_must_be_positive():
    with pytest.raises(ProbekitError, match="--max-batch-tokens must be positive"):
        length_buckets([3, 4], 0)


def test_shard_of_short_texts():
    """A 512-item shard (extract's size) of short texts, where a batch may hold hundreds of rows: every item once,
    within the budget, and no more padded tokens than filling each batch to the budget would give."""
    lengths = np.random.default_rng(0).integers(3, 400, 512)
    got = length_buckets(lengths, 2048)
    check_plan(got, list(lengths), [1] * 512, 2048)
    order = np.argsort(lengths, kind="stable")[::-1]
    filled, batch = [], []
    for i in order:  # the greedy fill
        if batch and max(lengths[j] for j in [*batch, i]) * (len(batch) + 1) > 2048:
            filled.append(batch)
            batch = []
        batch.append(int(i))
    filled.append(batch)
    assert cost(got, lengths, [1] * 512, BATCH_OVERHEAD_TOKENS) <= cost(filled, lengths, [1] * 512, BATCH_OVERHEAD_TOKENS)
