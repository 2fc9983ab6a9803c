"""Costs that must not grow with the store: what streaming reads and what it allocates (benchmarks/run_scale.py)."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np

from probekit.probe import data as pdata
from probekit.store import Store, pread_rows, row_layout
from tests.store_factory import make_store


def _store(tmp_path, n=64, T=100, shard_size=16):
    rng = np.random.default_rng(0)
    states = [rng.standard_normal((T, 8)).astype(np.float32) for _ in range(n)]
    path = make_store(tmp_path / "s", states, [f"g{i // 4}" for i in range(n)], [1, 1, 0, 0] * (n // 4), shard_size=shard_size)
    return Store(path), np.concatenate(states)


def test_stream_blocks_read_only_the_selected_trajectories_rows(tmp_path, monkeypatch):
    """Evaluating a split must read its rows only, not every shard whole (it read 5x too much for a 20% split)."""
    store, full = _store(tmp_path, n=64, T=300, shard_size=32)
    requested = []
    real = store.read_rows
    monkeypatch.setattr(store, "read_rows", lambda layer, rows: requested.append(len(rows)) or real(layer, rows))
    monkeypatch.setattr(store, "shard_states", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole shard read")))
    traj = np.flatnonzero(np.arange(64) % 3 != 0)  # 42 of 64 trajectories: over 6,000 of each shard's 9,600 rows
    blocks = list(pdata.StreamRows(store, 2).blocks(traj))
    assert sum(requested) == len(traj) * 300
    rows = pdata.trajectory_rows(store, traj)
    np.testing.assert_array_equal(np.concatenate([b.states for b in blocks]), full[rows])


def test_runs_of_rows_are_one_read_each(tmp_path, monkeypatch):
    store, full = _store(tmp_path, n=16, T=300, shard_size=16)  # one shard of 4800 rows, 19 chunks of 256
    import h5py

    with h5py.File(store.shard_paths[0], "r") as fh:
        layout = row_layout(fh["states/L2"])
    calls = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda *a: calls.append(a[2]) or real(*a))
    rows = np.r_[np.arange(300, 900), np.arange(2000, 2300)]  # two trajectories' rows, each across chunk edges
    np.testing.assert_array_equal(pread_rows(store.shard_paths[0], layout, rows), full[rows])
    assert len(calls) <= 2 + 6  # at most one read per chunk each run touches (one per run when chunks are adjacent)
    calls.clear()
    scattered = np.array([5, 900, 17, 4000])
    np.testing.assert_array_equal(pread_rows(store.shard_paths[0], layout, scattered), full[scattered])
    assert len(calls) == 4


def test_sampling_index_without_goal_bound_allocates_nothing_row_sized():
    """goal_min_frac 0 (the default) needs no search over the rows: at 1e7 rows that search took ~300 MB."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(150, 250, size=5000)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    positions = (np.arange(ends[-1]) - np.repeat(starts, lengths)).astype(np.int32)
    row_bytes = 8 * len(positions)

    def peak(frac):
        tracemalloc.start()
        index = pdata.build_sampling_index(starts, ends, positions, lengths, goal_min_frac=frac)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return index, top

    free, free_peak = peak(0.0)
    searched, searched_peak = peak(0.004)  # bound: position 1, which the clip to >= 1 applies anyway; found by the search
    assert np.array_equal(free.goal_lo, searched.goal_lo) and np.array_equal(free.neg_lo, searched.neg_lo)
    assert searched_peak > row_bytes  # the search does build row-sized arrays ...
    assert free_peak < row_bytes / 10  # ... the default does not
