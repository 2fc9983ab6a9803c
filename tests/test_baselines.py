"""Baselines on hand-made data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from probekit.eval.baselines import beats, length_baseline, logistic_baselines, random_baseline, run_baselines, trajectory_features
from probekit.eval.context import make_context
from probekit.probe.data import MemoryRows, StreamRows
from probekit.store import Store
from tests.store_factory import make_store

HIDDEN = 8


def _store(path, lengths, labels, n_per_group=4, seed=0, direction=None, pairs=None):
    rng = np.random.default_rng(seed)
    states = []
    for T, lab in zip(lengths, labels):
        x = rng.normal(size=(T, HIDDEN)).astype(np.float32)
        if direction is not None:
            x[-1] += (3.0 if lab == 1 else -3.0) * direction
        states.append(x)
    groups = [f"g{i // n_per_group:03d}" for i in range(len(lengths))]
    return Store(make_store(path, states, groups, labels, pairs=pairs, shard_size=16))


def _split(n_groups: int) -> dict:
    names = [f"g{i:03d}" for i in range(n_groups)]
    a, b = n_groups // 2, (3 * n_groups) // 4
    return {"train": names[:a], "valid": names[a:b], "test": names[b:]}


@pytest.mark.parametrize("better", ["shorter", "longer"])
def test_length_baseline_finds_the_direction_when_labels_follow_length(tmp_path, better):
    rng = np.random.default_rng(1)
    labels = [int(i % 4 < 2) for i in range(80)]
    short = lambda: int(rng.integers(5, 9))  # noqa: E731
    long = lambda: int(rng.integers(12, 16))  # noqa: E731
    lengths = [(short() if lab else long()) if better == "shorter" else (long() if lab else short()) for lab in labels]
    store = _store(tmp_path / "s", lengths, labels)
    for which, selected_on in (("valid", "train"), ("test", "valid")):
        res = length_baseline(make_context(store, _split(20), which, n_boot=100))
        assert res["direction"] == better and res["selected_on"] == selected_on
        assert res["auroc"]["value"] == 1.0 and res["pairwise_accuracy"]["value"] == 1.0


def test_logistic_baseline_recovers_a_planted_direction(tmp_path):
    rng = np.random.default_rng(2)
    direction = rng.normal(size=HIDDEN).astype(np.float32)
    direction /= np.linalg.norm(direction)
    labels = [int(i % 4 < 2) for i in range(160)]
    lengths = rng.integers(3, 9, size=160).tolist()
    store = _store(tmp_path / "s", lengths, labels, direction=direction)
    ctx = make_context(store, _split(40), "valid", n_boot=100)
    res = logistic_baselines(ctx, MemoryRows(store, 2))
    assert res["logistic_last"]["auroc"]["value"] > 0.97
    assert res["logistic_last"]["pairwise_accuracy"]["value"] > 0.95
    assert "train labels" in res["logistic_last"]["note"]
    # Mean pooling dilutes a last-token-only signal but still finds it better than chance.
    assert 0.5 < res["logistic_mean"]["auroc"]["value"] < res["logistic_last"]["auroc"]["value"] + 1e-9
    # Streaming gives the same features.
    res2 = logistic_baselines(ctx, StreamRows(store, 2))
    assert res2["logistic_last"]["auroc"] == res["logistic_last"]["auroc"]


def test_random_baseline_is_chance(tmp_path):
    labels = [int(i % 4 < 2) for i in range(400)]
    store = _store(tmp_path / "s", [3] * 400, labels)
    split = {"train": [], "valid": sorted(set(store.meta.group.astype(str).tolist())), "test": []}
    res = random_baseline(make_context(store, split, "valid", n_boot=300))
    assert abs(res["auroc"]["value"] - 0.5) < 0.1
    assert res["auroc"]["lo"] < res["auroc"]["value"] < res["auroc"]["hi"]
    assert 0.05 < res["auroc"]["hi"] - res["auroc"]["lo"] < 0.25  # a real interval, of the size chance gives
    assert abs(res["pairwise_accuracy"]["value"] - 0.5) < 0.15


def test_trajectory_features_last_and_mean(tmp_path):
    store = _store(tmp_path / "s", [3, 1, 4, 2], [1, 0, 1, 0])
    last, mean = trajectory_features(MemoryRows(store, 2), np.array([2, 0]))
    for k, t in enumerate([0, 2]):
        states = store.trajectory_states(t, 2)
        assert np.allclose(last[k], states[-1]) and np.allclose(mean[k], states.mean(0), atol=1e-6)


def test_unlabelled_pairs_use_pairwise_accuracy(tmp_path):
    rng = np.random.default_rng(3)
    direction = np.eye(HIDDEN, dtype=np.float32)[1]
    n = 80
    truth = [int(i % 2 == 0) for i in range(n)]  # even = chosen (direction planted), odd = rejected
    lengths = rng.integers(3, 7, size=n).tolist()
    pairs = [(i, i + 1) for i in range(0, n, 2)]
    rng_states = _store(tmp_path / "tmp", lengths, truth, n_per_group=2, direction=direction)
    states = [rng_states.trajectory_states(i, 2) for i in range(n)]
    groups = [f"g{i // 2:03d}" for i in range(n)]
    store = Store(make_store(tmp_path / "s", states, groups, [-1] * n, pairs=pairs))
    ctx = make_context(store, _split(40), "valid", n_boot=100)
    res = run_baselines(ctx, MemoryRows(store, 2))
    assert res["logistic_last"]["auroc"]["value"] is None
    assert res["logistic_last"]["pairwise_accuracy"]["value"] > 0.9
    assert "pairs" in res["logistic_last"]["note"]
    assert res["length"]["selected_on"] == "train" and res["length"]["pairwise_accuracy"]["n"] == 10
    probe = {"auroc": {"value": None, "lo": None, "hi": None}, "pairwise_accuracy": {"value": 0.9, "lo": 0.8, "hi": 1.0}}
    verdict = beats(probe, res)
    assert verdict["compared_on"] == "pairwise_accuracy"


def test_beats_compares_the_ci_lower_bound_with_the_best_baseline():
    def b(v):
        return {"auroc": {"value": v}, "pairwise_accuracy": {"value": v}}

    baselines = {"length": b(0.7), "random": b(0.5), "logistic_last": b(0.9), "logistic_mean": b(0.8)}
    probe = lambda lo: {"auroc": {"value": 0.85, "lo": lo, "hi": 0.95}, "pairwise_accuracy": {"value": 0.8, "lo": 0.7, "hi": 0.9}}  # noqa: E731
    assert beats(probe(0.75), baselines) == {"compared_on": "auroc", "beats_baselines": True, "beats_logistic": False}
    assert beats(probe(0.65), baselines)["beats_baselines"] is False
    assert beats(probe(None), baselines)["beats_baselines"] is None


def test_features_streamed_in_small_blocks_equal_those_read_in_memory(tmp_path, monkeypatch):
    """The baselines' per-trajectory states do not depend on how the rows are read: memory in one block, the
    shards a few trajectories at a time, the float64 sums in runs of any size; so neither do the baselines."""
    import probekit.probe.data as pdata
    from probekit.eval.baselines import segment_means

    rng = np.random.default_rng(4)
    direction = rng.normal(size=HIDDEN).astype(np.float32)
    labels = [int(i % 4 < 2) for i in range(96)]
    store = _store(tmp_path / "s", rng.integers(2, 30, size=96).tolist(), labels, direction=direction)
    traj = np.flatnonzero(np.arange(96) % 5 != 2)
    last, mean = trajectory_features(MemoryRows(store, 2), traj)
    for i, t in enumerate(traj):
        x = store.trajectory_states(int(t), 2).astype(np.float64)
        np.testing.assert_array_equal(last[i], x[-1].astype(np.float32))
        np.testing.assert_allclose(mean[i], x.mean(0), rtol=1e-6)
    ctx = make_context(store, _split(24), "test", n_boot=100)
    in_memory = logistic_baselines(ctx, MemoryRows(store, 2))
    monkeypatch.setattr(pdata, "BLOCK_BYTES", 4 * HIDDEN * 50)
    stream = StreamRows(store, 2)
    assert sum(1 for _ in stream.blocks(traj)) > 2 * store.manifest["shards"]["n"]
    s_last, s_mean = trajectory_features(stream, traj)
    np.testing.assert_array_equal(s_last, last)
    np.testing.assert_array_equal(s_mean, mean)
    states = store.load_layer(2)
    offsets = np.append(store.meta.row_start, store.n_rows)
    for run_rows in (1, 7, 10_000):
        np.testing.assert_array_equal(segment_means(states, offsets, run_rows), segment_means(states, offsets))
    assert logistic_baselines(ctx, stream) == in_memory
    assert in_memory["logistic_last"]["auroc"]["value"] > 0.9
