"""Scattered row reads (`Store.read_rows`): direct preads at HDF5's chunk offsets, checked against h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from probekit.errors import ProbekitError
from probekit.store import ShardData, Store, pread_rows, row_layout, shard_name, write_shard
from tests.store_factory import make_store


def _planted(tmp_path, n=40, shard_size=8, seed=0):
    rng = np.random.default_rng(seed)
    states = [rng.standard_normal((int(rng.integers(30, 300)), 16)).astype(np.float32) for _ in range(n)]
    path = make_store(tmp_path / "s", states, [f"g{i // 4}" for i in range(n)], [1, 1, 0, 0] * (n // 4), shard_size=shard_size)
    return path, np.concatenate(states)


def test_read_rows_matches_the_layer_in_any_order_with_repeats(tmp_path):
    path, full = _planted(tmp_path)
    store = Store(path)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, store.n_rows, size=3000)  # unordered, with repeats, across every shard (chunks of 256 rows)
    first = store.read_rows(2, rows)  # first read of each shard learns its layout
    second = store.read_rows(2, rows)
    np.testing.assert_array_equal(first, full[rows])
    np.testing.assert_array_equal(second, full[rows])
    np.testing.assert_array_equal(store.read_rows(2, rows[::-1]), full[rows[::-1]])
    assert store.read_rows(2, []).shape == (0, 16)


def test_rows_are_read_without_opening_hdf5_once_the_layout_is_known(tmp_path, monkeypatch):
    """The cost of one batch must not grow with the number of shards (an HDF5 open per shard per batch did)."""
    path, full = _planted(tmp_path)
    store = Store(path)
    every_shard = store.meta.row_start[:: 8]
    store.read_rows(2, every_shard)
    opened = []
    real_file = h5py.File
    monkeypatch.setattr(h5py, "File", lambda *a, **k: opened.append(a[0]) or real_file(*a, **k))
    rows = np.random.default_rng(2).integers(0, store.n_rows, size=500)
    np.testing.assert_array_equal(store.read_rows(2, np.r_[rows, every_shard]), full[np.r_[rows, every_shard]])
    assert opened == []


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_layout_of_written_shards_gives_hdf5s_rows(tmp_path, dtype):
    rng = np.random.default_rng(3)
    states = rng.standard_normal((1000, 24)).astype(dtype)
    data = ShardData(offsets=np.array([0, 600, 1000]), positions=np.r_[np.arange(600), np.arange(400)], states={7: states},
                     meta={"id": ["a", "b"], "group": ["g", "g"], "answer": ["", ""], "label": [1, 0], "completion_tokens": [600, 400],
                           "truncated_tokens": [0, 0], "error_token": [-1, -1]}, attrs={})
    write_shard(tmp_path / shard_name(0), data)
    with h5py.File(tmp_path / shard_name(0), "r") as fh:
        layout = row_layout(fh["states/L7"])
    assert layout is not None and layout.chunk_rows == 256 and len(layout.chunk_offsets) == 4
    rows = np.array([0, 1, 255, 256, 511, 767, 768, 999])  # chunk edges, the partial last chunk
    np.testing.assert_array_equal(pread_rows(tmp_path / shard_name(0), layout, rows), states[rows])


def test_compressed_or_contiguous_layers_are_read_correctly(tmp_path):
    """Layouts other than write_shard's: gzip chunks (read through h5py) and contiguous storage (pread)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as fh:
        fh.create_dataset("gz", data=x, chunks=(64, 8), compression="gzip")
        fh.create_dataset("contig", data=x)
        fh.create_dataset("narrow", data=x, chunks=(64, 4))
        assert row_layout(fh["gz"]) is None and row_layout(fh["narrow"]) is None
        layout = row_layout(fh["contig"])
    assert layout is not None
    rows = np.array([299, 0, 150, 7])
    np.testing.assert_array_equal(pread_rows(tmp_path / "f.h5", layout, rows), x[rows])

    path, full = _planted(tmp_path, n=8, shard_size=4)
    for s in range(2):  # rewrite each shard's layer gzip-compressed, as another tool might
        with h5py.File(path / shard_name(s), "a") as fh:
            data = fh["states/L2"][...]
            del fh["states/L2"]
            fh["states"].create_dataset("L2", data=data, chunks=(32, 16), compression="gzip")
    store = Store(path)
    rows = np.random.default_rng(5).integers(0, store.n_rows, size=200)
    for _ in range(2):
        np.testing.assert_array_equal(store.read_rows(2, rows), full[rows])


def test_non_finite_row_is_refused_on_the_pread_path(tmp_path):
    rng = np.random.default_rng(6)
    states = [rng.standard_normal((50, 8)).astype(np.float32) for _ in range(8)]
    states[5][10, 1] = np.inf  # trajectory t5, shard 1 (shard_size 4): global row 5 * 50 + 10
    store = Store(make_store(tmp_path / "p", states, [f"g{i // 2}" for i in range(8)], [1, 0] * 4, shard_size=4))
    store.read_rows(2, [200, 201, 300])  # clean rows of shard 1: its layout is now known
    with pytest.raises(ProbekitError, match=rf"{shard_name(1)}.*row 260 \(trajectory 't5'\)"):
        store.read_rows(2, [3, 260, 261])
