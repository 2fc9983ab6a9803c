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


def _long_store(path, T, n=48, hidden=16, seed=0):
    """n trajectories of T rows each in groups of 4 (2 correct, 2 incorrect: a planted offset on feature 0), one shard."""
    rng = np.random.default_rng(seed)
    labels = [1, 1, 0, 0] * (n // 4)
    states = [(rng.normal(size=(T, hidden)) + (3.0 if lab else -3.0) * np.eye(hidden)[0]).astype(np.float32) for lab in labels]
    return Store(make_store(path, states, [f"g{i // 4:02d}" for i in range(n)], labels, shard_size=n))


def _scorer(hidden=16):
    """φ = identity, reward = feature 0, goal = feature 0: the planted offset is the signal."""
    import torch

    from probekit.probe.network import ProbeModel
    from probekit.probe.scoring import Scorer

    model = ProbeModel(hidden, encoder="linear", rep_size=hidden, head="linear")
    with torch.no_grad():
        model.encoder[0].weight.copy_(torch.eye(hidden))
        model.encoder[0].bias.zero_()
        model.head[0].weight.zero_()
        model.head[0].weight[0, 0] = 1.0
        model.head[0].bias.zero_()
    goal = np.zeros((1, hidden), np.float32)
    goal[0, 0] = 1.0
    return Scorer(model, {"mean": goal})


def test_evaluation_memory_does_not_grow_with_store_rows(tmp_path, monkeypatch):
    """Two stores of the same 48 trajectories, one with 16x the rows: the evaluation (probe, prefixes, length
    controls, baselines) keeps per-trajectory summaries and one block of rows, so its peak stays put, while
    scoring every row of the split at once, as it did before, grows with the rows. (Error localisation keeps
    the tokens of incorrect trajectories with a known first error; these stores have none, like real data.)"""
    from probekit.eval.evaluate import evaluate
    from probekit.eval.context import make_context
    from probekit.probe.scoring import score_trajectories

    monkeypatch.setattr(pdata, "BLOCK_BYTES", 4 * 16 * 1024)  # blocks of up to 1024 rows: 20 trajectories of 50 rows, or 1 of 800
    split = {"train": [f"g{g:02d}" for g in range(6)], "valid": [f"g{g:02d}" for g in range(6, 12)], "test": []}
    scorer = _scorer()
    peaks, whole = {}, {}
    for T in (50, 800):
        store = _long_store(tmp_path / f"s{T}", T)
        ctx = make_context(store, split, "valid", n_boot=200)
        source = pdata.StreamRows(store, 2)
        evaluate(scorer, ctx, source, layer=2)  # first call: lazy imports and caches
        tracemalloc.start()
        metrics = evaluate(scorer, ctx, source, layer=2)
        peaks[T] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        score_trajectories(source, scorer, ctx.traj)
        whole[T] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert metrics["probe"]["auroc"]["value"] > 0.9 and metrics["baselines"]["logistic_mean"]["auroc"]["value"] > 0.9
    added_rows = len(ctx.traj) * (800 - 50)
    assert whole[800] - whole[50] > 16 * added_rows  # positions, reward and Q of every row of the split ...
    assert peaks[800] < 1.15 * peaks[50] < whole[800]  # ... which the evaluation no longer holds


def test_a_block_of_rows_is_read_without_block_sized_copies(tmp_path, monkeypatch):
    """Increasing rows (a block of whole trajectories) are read once and cast straight into the output: the read and
    the output are the only arrays of the block's size (a reordered copy was a third; float16 stores made a
    float32 copy of the read too), and from `MAPPED_MIN_BYTES` on both live in memory maps of their own, off the heap."""
    import probekit.store as pstore

    rng = np.random.default_rng(0)
    states = [rng.standard_normal((100, 128)).astype(np.float32) for _ in range(48)]  # row indices are 8 of 512 bytes a row
    store = Store(make_store(tmp_path / "wide", states, [f"g{i // 4}" for i in range(48)], [1, 1, 0, 0] * 12, shard_size=48))
    full = np.concatenate(states)
    rows = pdata.trajectory_rows(store, np.flatnonzero(np.arange(48) % 3 != 0))
    for min_bytes, most in ((1 << 30, 2.1), (0, 1 / 8)):  # on the heap (float32 store: read + output); in maps
        monkeypatch.setattr(pstore, "MAPPED_MIN_BYTES", min_bytes)
        tracemalloc.start()
        got = store.read_rows(2, rows)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(got, full[rows])
        assert got.flags.writeable and got.dtype == np.float32
        assert peak < most * got.nbytes
    scattered = rows[::-7]  # decreasing, and read back in the caller's order
    np.testing.assert_array_equal(store.read_rows(2, np.r_[scattered, scattered[:3]]), full[np.r_[scattered, scattered[:3]]])


def test_fit_reads_no_row_sized_positions_when_goals_have_no_lower_bound(tmp_path):
    """`prepare` hands the sampling index the store's positions as a function: read (4 bytes a row) only when a
    bound needs them."""
    from probekit.config import FitConfig
    from probekit.probe.train import prepare

    store, _ = _store(tmp_path, n=16, T=20, shard_size=8)
    data = prepare(store, FitConfig().vary(layer=2))
    assert store._positions is None
    bounded = prepare(store, FitConfig().vary(layer=2, goal_min_frac=0.5), source=data.source)
    assert store._positions is not None and (bounded.index.goal_lo >= 9).all()


def test_feature_stats_subsample_is_the_draw_on_the_listed_rows(tmp_path):
    """The normalisation's subsample is drawn among the rows' positions, never listing the rows, and is the same
    draw as `choice` on the listed rows (the fit's statistics do not change)."""
    store, full = _store(tmp_path, n=64, T=100, shard_size=16)
    traj = np.flatnonzero(np.arange(64) % 4 != 3)
    source = pdata.MemoryRows(store, 2)
    rows = pdata.trajectory_rows(store, traj)
    picked = np.sort(np.random.default_rng(3).choice(rows, size=500, replace=False))
    x = full[picked].astype(np.float64)
    mean, std = pdata.feature_stats(source, traj, max_rows=500, seed=3)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-5)
    every = pdata.feature_stats(source, traj, max_rows=10**6)
    np.testing.assert_allclose(every[0], full[rows].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
