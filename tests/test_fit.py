"""Sampling, training, checkpoints and bad input, on stores with planted signal (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit.errors import ProbekitError
from probekit.probe import data as pdata
from probekit.probe import losses
from probekit.config import FitConfig
from probekit.pipeline import fit_probe
from probekit.probe.checkpoint import check_compatible, load_checkpoint
from probekit.probe.train import prepare
from probekit.store import Store
from tests.helpers import PLANTED_HIDDEN, fast_config, fit, planted_arrays, planted_store, trained
from tests.store_factory import make_store

HIDDEN = PLANTED_HIDDEN
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- sampling ----------------------------------------------------------------
def coded_store(path: Path, lengths: list[int], groups: list[str], labels: list[int], pairs=None) -> Store:
    """States whose feature 0 is the trajectory index and feature 1 the token position."""
    states = []
    for i, T in enumerate(lengths):
        x = np.zeros((T, 4), np.float32)
        x[:, 0] = i
        x[:, 1] = np.arange(T)
        states.append(x)
    return Store(make_store(path, states, groups, labels, pairs=pairs, shard_size=3))


def test_positive_and_negative_rows_come_from_the_right_trajectories(tmp_path):
    lengths = [9, 5, 12, 1, 7, 2]
    store = coded_store(tmp_path / "s", lengths, ["a", "a", "b", "b", "c", "c"], [1, 0, 1, 0, 1, 0], pairs=[(0, 1), (2, 3), (4, 5), (5, 3)])
    pairs = store.pairs()
    m = store.meta
    index = pdata.build_sampling_index(m.row_start, m.row_end, store.positions(), m.completion_tokens)
    src = pdata.MemoryRows(store, 2)
    rng = np.random.default_rng(0)
    K = 64
    ps, pg = pdata.sample_positives(index, pairs[:, 0], K, rng)
    ns, nr = pdata.sample_negatives(index, pairs[:, 0], pairs[:, 1], K, rng)
    for b, (c, r) in enumerate(pairs):
        s_feat, g_feat = src.rows(ps[b]), src.rows(pg[b])
        assert (s_feat[:, 0] == c).all() and (g_feat[:, 0] == c).all()  # both on the chosen trajectory
        if lengths[c] >= 2:
            assert (s_feat[:, 1] < g_feat[:, 1]).all()  # source strictly before goal
            if lengths[c] > 2:
                assert len(set(g_feat[:, 1])) > 1 and len(set(s_feat[:, 1])) > 1
        else:
            assert (s_feat[:, 1] == lengths[c] - 1).all() and (g_feat[:, 1] == lengths[c] - 1).all()
        assert (src.rows(ns[b])[:, 0] == c).all()
        assert (src.rows(nr[b])[:, 0] == r).all()
    # T = 1 and T = 2 trajectories as chosen (pair (5, 3): chosen T=2).
    assert (src.rows(ps[3])[:, 1] == 0).all() and (src.rows(pg[3])[:, 1] == 1).all()


def test_goal_min_frac_and_late_frac_restrict_positions(tmp_path):
    lengths = [20, 10, 16, 8]
    store = coded_store(tmp_path / "s", lengths, ["a", "a", "b", "b"], [1, 0, 1, 0])
    m = store.meta
    index = pdata.build_sampling_index(m.row_start, m.row_end, store.positions(), m.completion_tokens, goal_min_frac=0.5, late_frac=0.25)
    src = pdata.MemoryRows(store, 2)
    rng = np.random.default_rng(1)
    pairs = store.pairs()
    ps, pg = pdata.sample_positives(index, pairs[:, 0], 50, rng)
    ns, nr = pdata.sample_negatives(index, pairs[:, 0], pairs[:, 1], 50, rng)
    for b, (c, r) in enumerate(pairs):
        goal_pos = src.rows(pg[b])[:, 1]
        assert (goal_pos >= np.ceil(0.5 * lengths[c])).all()
        assert (src.rows(ps[b])[:, 1] < goal_pos).all()
        assert (src.rows(ns[b])[:, 1] >= 0.75 * lengths[c]).all()
        assert (src.rows(nr[b])[:, 1] >= 0.75 * lengths[r]).all()


def test_sampling_uses_only_stored_rows_with_stride_positions():
    # Two trajectories stored with stride 3 (last token always kept), one with only its last token.
    positions = np.array([0, 3, 6, 9, 10, 0, 3, 4, 6], dtype=np.int32)
    row_start, row_end = np.array([0, 5, 8]), np.array([5, 8, 9])
    T = np.array([11, 5, 7])
    index = pdata.build_sampling_index(row_start, row_end, positions, T, goal_min_frac=0.5)
    rng = np.random.default_rng(0)
    ps, pg = pdata.sample_positives(index, np.array([0, 1, 2]), 100, rng)
    assert ((ps[0] >= 0) & (ps[0] < 5) & (pg[0] < 5)).all() and (positions[pg[0]] >= 6).all()
    assert (positions[ps[0]] < positions[pg[0]]).all()
    assert ((ps[1] >= 5) & (pg[1] < 8)).all() and (ps[1] < pg[1]).all()
    assert (ps[2] == 8).all() and (pg[2] == 8).all()  # one stored row: source = goal = last


def test_split_is_by_group_and_seeded():
    groups = np.array([f"g{i}" for i in range(20) for _ in range(3)])
    a = pdata.make_split(groups, 0.2, 0.2, seed=3)
    assert a == pdata.make_split(groups, 0.2, 0.2, seed=3)
    assert a != pdata.make_split(groups, 0.2, 0.2, seed=4)
    assert sorted(a["train"] + a["valid"] + a["test"]) == sorted(set(groups))
    assert (len(a["train"]), len(a["valid"]), len(a["test"])) == (12, 4, 4)
    with pytest.raises(ProbekitError, match="empty train split"):
        pdata.make_split(np.array(["x", "y"]), 0.5, 0.4, seed=0)


def test_row_sources_agree(tmp_path):
    store = Store(planted_store(tmp_path / "s", n_groups=4))
    rows = np.array([5, 0, 77, 5, 31])
    mem, stream = pdata.MemoryRows(store, 2), pdata.StreamRows(store, 2)
    assert np.array_equal(mem.rows(rows), stream.rows(rows))
    traj = np.array([1, 2, 9, 14])
    got, want = list(mem.blocks(traj)), list(stream.blocks(traj))
    assert sum(len(b.trajectories) for b in got) == 4
    for field in ("trajectories", "positions", "states"):
        assert np.array_equal(np.concatenate([getattr(b, field) for b in got]), np.concatenate([getattr(b, field) for b in want])), field
    assert [np.diff(b.offsets).tolist() for b in got] != [] and np.array_equal(
        np.concatenate([np.diff(b.offsets) for b in got]), np.concatenate([np.diff(b.offsets) for b in want]))


def test_stream_blocks_of_large_shards_agree_with_memory(tmp_path):
    # 4800 selected rows per shard, read as runs of rows (tests/test_stream_costs.py: only the selected ones).
    rng = np.random.default_rng(0)
    n, T = 800, 16
    states = [rng.normal(size=(T, 4)).astype(np.float32) for _ in range(n)]
    store = Store(make_store(tmp_path / "s", states, [f"g{i // 4}" for i in range(n)], [i % 2 for i in range(n)], shard_size=400))
    traj = np.flatnonzero(np.arange(n) % 4 != 1)  # 300 of each shard's 400 trajectories: 4800 rows per shard
    got, want = list(pdata.MemoryRows(store, 2).blocks(traj)), list(pdata.StreamRows(store, 2).blocks(traj))
    assert len(want) == 2 and all(len(b.states) == 300 * T for b in want)
    for field in ("trajectories", "positions", "states"):
        assert np.array_equal(np.concatenate([getattr(b, field) for b in got]), np.concatenate([getattr(b, field) for b in want])), field
    assert np.array_equal(np.concatenate([np.diff(b.offsets) for b in want]), np.full(len(traj), T))
    assert np.array_equal(np.concatenate([b.trajectories for b in want]), traj)


# ---- training -------------------------------------------------------------------
def test_fit_separates_planted_signal_and_saves_a_checkpoint(tmp_path_factory):
    store_path, ckpt = trained(tmp_path_factory)
    valid = ckpt.metrics["valid"]
    assert valid["probe"]["auroc"]["value"] > 0.9
    assert valid["probe"]["pairwise_accuracy"]["value"] > 0.9
    assert valid["probe"]["q_auroc_mean"]["value"] > 0.9
    for name in ("weights.safetensors", "config.json", "goals.safetensors", "split.json", "metrics.json", "prefix_auroc.png"):
        assert (ckpt.path / name).exists(), name
    loaded = load_checkpoint(ckpt.path)
    cfg = loaded.config
    assert cfg["layer"] == 2 and cfg["fit"]["loss"]["lam"] == 0.5 and cfg["fit"]["loss"]["K"] == 8 and cfg["fit"]["run"]["seed"] == 0
    assert FitConfig.from_dict(cfg["fit"]) == fast_config(goal_prototypes=3)
    assert cfg["store"]["model_sha256"] == "test-model" and cfg["store"]["hidden_size"] == HIDDEN and cfg["store"]["layers"] == [2]
    assert loaded.goals["mean"].shape == (1, 16) and loaded.goals["kmeans"].shape == (3, 16)
    x = torch.randn(5, HIDDEN) * 50
    with torch.no_grad():
        assert torch.equal(loaded.model(x)[1], ckpt.model(x)[1])
    # The split is by group and saved; every pair's group is on one side.
    split = json.loads((ckpt.path / "split.json").read_text())
    sets = [set(split[k]) for k in ("train", "valid", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == {f"g{i:02d}" for i in range(30)}
    assert json.loads((ckpt.path / "metrics.json").read_text())["valid"]["probe"]["auroc"]["value"] == valid["probe"]["auroc"]["value"]


def test_goal_is_mean_phi_of_train_label1_last_states(tmp_path_factory):
    store_path, ckpt = trained(tmp_path_factory)
    store = Store(store_path)
    train = set(ckpt.split["train"])
    good = [i for i in range(len(store)) if store.meta.group[i] in train and store.meta.label[i] == 1]
    x = torch.from_numpy(store.read_rows(2, store.last_rows()[good]))
    with torch.no_grad():
        z = ckpt.model.encode(x).numpy()
    assert np.allclose(ckpt.goals["mean"], z.mean(0, keepdims=True), atol=1e-5)


def test_fit_is_reproducible_and_memory_and_stream_agree(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=12)
    opts = dict(epochs=4, n_boot=50, baselines=False)
    a = fit(store, tmp_path / "a", **opts)
    b = fit(store, tmp_path / "b", **opts)
    c = fit(store, tmp_path / "c", **opts, memory_budget_mb=1e-6)
    assert a.metrics["train"]["row_source"] == "memory" and c.metrics["train"]["row_source"] == "stream"
    for other in (b, c):
        assert other.metrics["train"]["history"] == a.metrics["train"]["history"]
        assert other.metrics["valid"]["probe"] == a.metrics["valid"]["probe"]
        for k, v in a.model.state_dict().items():
            assert torch.equal(v, other.model.state_dict()[k]), k
    d = fit(store, tmp_path / "d", **opts, seed=1)
    assert d.metrics["train"]["history"] != a.metrics["train"]["history"]


def test_lambda_zero_never_computes_the_contrastive_term(tmp_path, monkeypatch):
    store = planted_store(tmp_path / "s", n_groups=6)

    def boom(*_a, **_k):
        raise AssertionError("contrastive work done with lam=0")

    monkeypatch.setattr(losses, "contrastive", boom)
    monkeypatch.setattr(pdata, "sample_positives", boom)
    monkeypatch.setattr(pdata, "sample_negatives", boom)
    ckpt = fit(store, tmp_path / "ck", lam=0.0, epochs=2, n_boot=20, baselines=False)
    assert all(h["loss_contrastive"] == 0.0 and h["loss_total"] == h["loss_bt"] for h in ckpt.metrics["train"]["history"])


def test_explicit_split_file_and_early_stopping(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=8)
    split = {"train": [f"g{i:02d}" for i in range(5)], "valid": ["g05", "g06"], "test": ["g07"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    ckpt = fit(store, tmp_path / "ck", split_file=tmp_path / "split.json", epochs=30, patience=2, n_boot=20, baselines=False)
    assert ckpt.split == split
    train = ckpt.metrics["train"]
    assert train["n_train_pairs"] == 5 * 4 and train["n_valid_pairs"] == 2 * 4
    assert train["stopped_early"] and train["epochs_run"] == train["best_epoch"] + 2


# ---- bad input ---------------------------------------------------------------------
def test_store_without_pairs_is_refused(tmp_path):
    states, groups, labels, _ = planted_arrays(n_groups=3)
    store = make_store(tmp_path / "s", states, groups, labels, pairs=[])
    with pytest.raises(ProbekitError, match="no preference pairs"):
        prepare(Store(store), fast_config())


def test_refused_fit_leaves_no_folder_behind(tmp_path):
    """A fit refused after claiming --out (no pairs) removes the folder it made, but never one that existed."""
    states, groups, labels, _ = planted_arrays(n_groups=3)
    store = Store(make_store(tmp_path / "s", states, groups, labels, pairs=[]))
    with pytest.raises(ProbekitError, match="no preference pairs"):
        fit_probe(store, tmp_path / "new" / "ckpt", fast_config())
    assert not (tmp_path / "new" / "ckpt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(ProbekitError, match="no preference pairs"):
        fit_probe(store, mine, fast_config())
    assert mine.is_dir() and not any(mine.iterdir())


def test_pair_with_missing_trajectory_is_refused(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=3)
    with open(store / "pairs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"chosen": "t0", "rejected": "t999"}) + "\n")
    with pytest.raises(ProbekitError, match="t999"):
        prepare(Store(store), fast_config())


def test_missing_layer_and_empty_train_split_are_refused(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=4)
    with pytest.raises(ProbekitError, match="layer 7 not in this store"):
        prepare(Store(store), fast_config(layer=7))
    # Train groups whose trajectories are all correct: no pairs to train on.
    states, groups, labels, _ = planted_arrays(n_groups=4)
    labels = [1 if g in ("g00", "g01") else lab for lab, g in zip(labels, groups)]
    s2 = make_store(tmp_path / "s2", states, groups, labels)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["g00", "g01"], "valid": ["g02"], "test": ["g03"]}))
    with pytest.raises(ProbekitError, match="empty train split"):
        prepare(Store(s2), fast_config(split_file=tmp_path / "split.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["g00", "nope"], "valid": [], "test": []}))
    with pytest.raises(ProbekitError, match="not in the store"):
        prepare(Store(s2), fast_config(split_file=tmp_path / "bad.json"))


def test_checkpoint_refuses_stores_of_another_model_layer_or_width(tmp_path_factory, tmp_path):
    _store, ckpt = trained(tmp_path_factory)
    other_model = Store(planted_store(tmp_path / "m", n_groups=2, model_name="other-model"))
    with pytest.raises(ProbekitError, match="other-model") as exc:
        check_compatible(ckpt, other_model)
    assert "test-model" in str(exc.value)
    other_layer = Store(planted_store(tmp_path / "l", n_groups=2, layer=5))
    with pytest.raises(ProbekitError, match="layer 2"):
        check_compatible(ckpt, other_layer)
    other_width = Store(planted_store(tmp_path / "w", n_groups=2, hidden=8))
    with pytest.raises(ProbekitError, match="hidden size"):
        check_compatible(ckpt, other_width)
    check_compatible(ckpt, Store(_store))


def test_load_checkpoint_refuses_other_folders(tmp_path):
    with pytest.raises(ProbekitError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    with pytest.raises(ProbekitError, match="not a probekit checkpoint"):
        load_checkpoint(tmp_path / "x")


def test_fit_refuses_to_overwrite_a_folder_that_is_not_a_checkpoint(tmp_path):
    store = planted_store(tmp_path / "s", n_groups=4)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ProbekitError, match="not a probekit fit output"):
        fit(store, tmp_path / "busy", epochs=1, n_boot=10, baselines=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


# ---- CLI ---------------------------------------------------------------------------
def test_cli_fit_and_eval_json(tmp_path_factory, tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401  (registers the commands)
    from probekit_cli.app import app

    store, _ = trained(tmp_path_factory)
    runner = CliRunner()
    res = runner.invoke(app, ["fit", "--store", str(store), "--out", str(tmp_path / "ck"), "--widths", "16", "--rep-size", "8",
                              "--epochs", "2", "--n-boot", "20", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["checkpoint"] == str(tmp_path / "ck") and "valid" in out["metrics"]
    shared = sorted(p.name for p in (tmp_path / "ck").iterdir())
    res = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "ck"), "--split", "test", "--n-boot", "20", "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    # The default output lies beside the checkpoint, whose folder stays as fit wrote it (ready to share).
    assert metrics["split"] == "test" and (tmp_path / "ck-eval-test" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == shared
    inside = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "ck"), "--n-boot", "20", "--out", str(tmp_path / "ck" / "ev")])
    assert isinstance(inside.exception, ProbekitError) and "lies inside the input" in str(inside.exception)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == shared
    assert metrics["probe"]["auroc"]["length_controlled"]["stratified"]["value"] is not None and "beats_length" in metrics
    res = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "ck"), "--split", "test", "--n-boot", "20", "--length-bins", "3",
                              "--out", str(tmp_path / "ev3"), "--no-progress"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "within length strata" in res.output and "log length regressed out" in res.output
    assert len(json.loads((tmp_path / "ev3" / "metrics.json").read_text())["length_control"]["edges"]) <= 2
    assert (tmp_path / "ck-eval-test" / "prefix_auroc.png").exists()
    res = runner.invoke(app, ["fit", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert isinstance(res.exception, ProbekitError)
