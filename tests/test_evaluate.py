"""Metric primitives on hand-made numbers, and the evaluation of a trained probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probekit_cli.tables import metric_rows
from probekit.errors import ProbekitError
from probekit.eval.evaluate import error_localisation, evaluate_checkpoint, prefix_rows, write_evaluation
from probekit.metrics import auroc_ci, bootstrap_counts, pairwise_ci, weighted_auroc
from probekit.outputs import claim_output
from probekit.probe.checkpoint import load_checkpoint
from probekit.probe.scoring import Scores
from probekit.store import Store
from tests.helpers import fit, planted_arrays, planted_store, trained
from tests.store_factory import make_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_weighted_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=200).astype(float)  # many ties
    labels = rng.integers(0, 2, size=200)
    assert weighted_auroc(scores, labels, np.ones((1, 200)))[0] == pytest.approx(roc_auc_score(labels, scores))
    # Integer weights = repeating items.
    w = rng.integers(0, 3, size=200)
    rep = np.repeat(np.arange(200), w)
    assert weighted_auroc(scores, labels, w[None])[0] == pytest.approx(roc_auc_score(labels[rep], scores[rep]))
    assert np.isnan(weighted_auroc(scores, np.ones(200), np.ones((1, 200)))[0])


def test_point_auroc_ranks_infinite_scores_as_extremes_and_refuses_nan():
    from probekit.metrics import point_auroc

    rng = np.random.default_rng(3)
    scores = rng.normal(size=60)
    labels = rng.integers(0, 2, size=60)
    assert point_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    # A filter's never-droppable solution (minimum +inf) ranks above every finite score, -inf below: as a huge finite value would.
    inf = scores.copy()
    inf[[0, 1]], inf[[2]] = np.inf, -np.inf
    huge = scores.copy()
    huge[[0, 1]], huge[[2]] = 1e300, -1e300
    assert point_auroc(inf, labels) == pytest.approx(roc_auc_score(labels, huge))
    assert point_auroc(scores, np.where(labels == 1, 1, -1)) is None  # unlabelled (-1) is not a class
    with pytest.raises(ValueError, match="NaN"):
        point_auroc(np.r_[scores[:-1], np.nan], labels)


def test_group_bootstrap_resamples_groups():
    counts = bootstrap_counts(7, 50, seed=1)
    assert counts.shape == (50, 7) and (counts.sum(1) == 7).all()
    assert np.array_equal(counts, bootstrap_counts(7, 50, seed=1))
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(7), 6)
    labels = np.tile([1, 1, 1, 0, 0, 0], 7)
    scores = labels + rng.normal(size=42)
    res = auroc_ci(scores, labels, groups, counts)
    assert res["value"] == pytest.approx(roc_auc_score(labels, scores))
    assert res["lo"] <= res["value"] <= res["hi"] and (res["n_pos"], res["n_neg"]) == (21, 21)
    # Each bootstrap value equals the AUROC of the explicitly resampled groups.
    explicit = []
    for row in counts:
        rows = np.concatenate([np.flatnonzero(groups == g) for g in range(7) for _ in range(row[g])])
        explicit.append(roc_auc_score(labels[rows], scores[rows]))
    assert np.allclose(weighted_auroc(scores, labels, counts[:, groups]), explicit)
    lo, hi = np.percentile(explicit, [2.5, 97.5])
    assert res["lo"] == pytest.approx(lo) and res["hi"] == pytest.approx(hi)
    assert auroc_ci(scores, np.ones(42), groups, counts)["value"] is None


def test_pairwise_ci_hand_values():
    counts = np.array([[1, 1], [2, 0], [0, 2]])
    res = pairwise_ci([1.0, -1.0, 0.0, 2.0], [0, 0, 1, 1], counts)
    # group 0: 1 of 2 correct; group 1: tie (0.5) + correct -> 1.5 of 2.
    assert res["value"] == pytest.approx(2.5 / 4) and res["n"] == 4
    boots = np.array([2.5 / 4, 0.5, 0.75])
    assert res["lo"] == pytest.approx(np.percentile(boots, 2.5)) and res["hi"] == pytest.approx(np.percentile(boots, 97.5))


def _scores(positions_per_traj, q_per_traj, r_per_traj=None):
    lengths = [len(p) for p in positions_per_traj]
    return Scores(
        traj=np.arange(len(lengths)),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        positions=np.concatenate(positions_per_traj).astype(np.int64),
        reward=np.concatenate(r_per_traj or q_per_traj).astype(np.float32),
        q={"mean": np.concatenate(q_per_traj).astype(np.float32)},
    )


def test_prefix_rows_pick_the_stored_state_at_or_below_the_prefix_end():
    # T = 10 stored with stride 3 (+ last), and a "last"-only trajectory with T = 10.
    s = _scores([[0, 3, 6, 9], [9]], [[0, 0, 0, 0], [0]])
    T = np.array([10, 10])
    assert prefix_rows(s, T, 0.1).tolist() == [0, -1]  # token 0
    assert prefix_rows(s, T, 0.5).tolist() == [1, -1]  # token 4 -> stored 3
    assert prefix_rows(s, T, 0.7).tolist() == [2, -1]  # token 6
    assert prefix_rows(s, T, 1.0).tolist() == [3, 4]  # last token


def test_error_localisation_on_hand_made_q_values():
    class Meta:
        error_token = np.array([3, 2, -1, -1])
        completion_tokens = np.array([6, 5, 4, 4])

    q = [[0.9, 0.8, 0.9, 0.1, 0.0, 0.1], [0.7, 0.9, 0.2, 0.2, 0.1], [0.9, 0.9, 0.9, 0.9], [0.5, 0.2, 0.3, 0.2]]
    s = _scores([list(range(6)), list(range(5)), list(range(4)), list(range(4))], q)
    labels = np.array([0, 0, 1, 0])
    res = error_localisation(s, Meta, labels, q_threshold=0.5)
    assert res["n_trajectories"] == 2 and res["n_tokens"] == 11
    assert res["token_auroc"] == pytest.approx(1.0)
    assert res["detected_frac"] == 1.0 and res["mean_abs_error"] == 0.0
    # Default threshold: midpoint of the mean last-token Q of label 1 (0.9) and label 0 ((0.1 + 0.1 + 0.2) / 3).
    auto = error_localisation(s, Meta, labels)
    assert auto["threshold"] == pytest.approx((0.9 + 0.4 / 3) / 2, rel=1e-5)
    assert error_localisation(s, Meta, np.array([1, 1, 1, 1])) is None


def test_evaluate_checkpoint_writes_metrics_plot_and_baselines(tmp_path_factory, tmp_path):
    store, ckpt = trained(tmp_path_factory)
    loaded = load_checkpoint(ckpt.path)
    m = evaluate_checkpoint(loaded, Store(store), "test", n_boot=200)
    write_evaluation(m, claim_output(tmp_path / "ev", "eval"))
    assert m["split"] == "test" and m["n_groups"] == len(loaded.split["test"])
    probe = m["probe"]
    assert probe["auroc"]["value"] > 0.9 and probe["pairwise_accuracy"]["value"] > 0.9
    assert len(probe["prefix"]["reward_auroc"]) == 10 and probe["prefix"]["fractions"][-1] == 1.0
    assert probe["prefix"]["reward_auroc"][-1] == pytest.approx(probe["auroc"]["value"])
    assert probe["prefix"]["q_auroc_mean"][-1] == pytest.approx(probe["q_auroc_mean"]["value"])
    # Early prefixes carry little signal: correct and incorrect differ only after the error.
    assert probe["prefix"]["reward_auroc"][0] < probe["prefix"]["reward_auroc"][-1]
    err = probe["error_localisation"]
    assert err["n_trajectories"] > 0 and err["token_auroc"] > 0.75
    assert set(m["baselines"]) == {"length", "logistic_last", "logistic_mean", "random"}
    assert m["baselines"]["length"]["selected_on"] == "valid"  # test split: direction picked on valid
    assert m["beats_baselines"] is True
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["probe"]["auroc"] == probe["auroc"] and saved["checkpoint"] == str(ckpt.path)
    assert (tmp_path / "ev" / "prefix_auroc.png").stat().st_size > 1000
    rows = metric_rows(m)
    assert rows[0][0] == "probe reward" and any(r[0] == "length" for r in rows)
    # Same seed, same numbers.
    again = evaluate_checkpoint(loaded, Store(store), "test", n_boot=200)
    assert again["probe"] == m["probe"] and again["baselines"] == m["baselines"]


def test_evaluate_all_split_and_foreign_store(tmp_path_factory, tmp_path):
    _store, ckpt = trained(tmp_path_factory)
    m = evaluate_checkpoint(ckpt, Store(_store), "all", n_boot=50, baselines=False)
    assert m["n_trajectories"] == 120 and "baselines" not in m
    states, groups, labels, errors = planted_arrays(n_groups=3, seed=5)  # same model, other prompts
    other = Store(make_store(tmp_path / "other", states, [f"other-{g}" for g in groups], labels, error_tokens=errors))
    with pytest.raises(ProbekitError, match="no trajectories in the 'valid' split"):
        evaluate_checkpoint(ckpt, other, "valid", n_boot=10)
    m2 = evaluate_checkpoint(ckpt, other, "all", n_boot=50)
    assert m2["n_trajectories"] == 12
    # baselines are fitted on the checkpoint's training store, then scored on the other store
    assert str(Store(_store).path) in m2["baselines"]["logistic_last"]["note"]
    assert m2["baselines"]["logistic_last"]["auroc"]["value"] is not None  # other directions planted: fitted, not expected to transfer
    assert m2["baselines"]["length"]["selected_on"] == f"train split of the training store {Store(_store).path}"
    assert m2["baselines_fitted_on"] == str(Store(_store).path)
    with pytest.raises(ProbekitError, match="--split"):
        evaluate_checkpoint(ckpt, Store(_store), "nonsense")


def test_plot_prefix_curves_draws_undefined_points_as_gaps(tmp_path):
    from probekit.eval.plots import plot_prefix_curves

    out = plot_prefix_curves([0.5, 1.0], {"λ=0 reward": [None, 0.6], "λ=0.5 Q": [0.55, 0.7]}, tmp_path / "f.png",
                             "title", {"length (full completion)": 0.64})
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # written under a temporary name, then renamed


# ---- streamed evaluation: per-trajectory summaries a block at a time -----------------------------
def _same_numbers(a, b, path="metrics"):
    """Equal structure, equal non-float leaves, floats equal up to float32 rounding."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), path
    else:
        assert a == b, path


def test_split_scores_gathered_block_by_block_equal_those_of_the_whole_split():
    """Per-trajectory summaries and the error-localisation tokens do not depend on where blocks are cut, and the
    localisation on the kept tokens alone, with the threshold of all trajectories, is the one on every token."""
    from probekit.eval.evaluate import FRACTIONS, SplitScores, known_error, midpoint_threshold

    rng = np.random.default_rng(0)
    n = 40
    T = rng.integers(3, 12, size=n)
    stride = [list(range(0, t, 1 + (i % 3))) + ([t - 1] if (t - 1) % (1 + (i % 3)) else []) for i, t in enumerate(T)]
    q = [rng.normal(size=len(p)).astype(np.float32) for p in stride]
    whole = _scores(stride, q, [rng.normal(size=len(p)) for p in stride])
    whole.q["kmeans"] = rng.normal(size=len(whole.reward)).astype(np.float32)
    labels = np.tile([1, 0, 0, -1], n // 4)

    class Meta:
        completion_tokens = T
        error_token = np.where(labels == 0, T // 2, -1)

    parts = [whole.select(np.arange(a, min(a + 7, n))) for a in range(0, n, 7)]
    one, blocks = (SplitScores.gather(p, np.arange(n), Meta, labels, ["mean", "kmeans"]) for p in ([whole], parts))
    np.testing.assert_array_equal(blocks.traj, np.arange(n))
    for k in ("reward", "mean", "kmeans"):
        np.testing.assert_array_equal(blocks.last[k], one.last[k])
        np.testing.assert_array_equal(blocks.prefix[k], one.prefix[k])
        np.testing.assert_array_equal(one.last[k], whole.last(whole.reward if k == "reward" else whole.q[k]))
        for f in (0.1, 0.5, 1.0):
            rows, i = prefix_rows(whole, T, f), FRACTIONS.index(f)
            values = whole.reward if k == "reward" else whole.q[k]
            np.testing.assert_array_equal(one.prefix[k][i][rows >= 0], values[rows[rows >= 0]])
            assert np.isnan(one.prefix[k][i][rows < 0]).all()
    kept = known_error(Meta, np.arange(n), labels)
    np.testing.assert_array_equal(blocks.errors.traj, np.flatnonzero(kept))
    assert len(blocks.errors.reward) == int(np.diff(whole.offsets)[kept].sum())  # only their tokens are kept
    full = error_localisation(whole, Meta, labels)
    streamed = error_localisation(blocks.errors, Meta, labels[blocks.errors.traj], midpoint_threshold(blocks.last["mean"], labels))
    assert streamed == full and full["n_trajectories"] == int(kept.sum())


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_streamed_evaluation_equals_the_in_memory_one(tmp_path, monkeypatch, pooling):
    """Memory (one block) and streamed from the shards in blocks of a few trajectories: the same metrics, AUROCs
    and baselines included, for a last-token and a pooled probe."""
    import probekit.probe.data as pdata
    from probekit.eval.evaluate import evaluate
    from probekit.eval.context import make_context
    from probekit.probe.scoring import Scorer

    path = planted_store(tmp_path / "s", n_groups=16)
    ckpt = fit(path, tmp_path / "ck", epochs=3, pooling=pooling)
    store = Store(path)
    ctx = make_context(store, ckpt.split, "valid", n_boot=200)
    memory = evaluate(Scorer.from_checkpoint(ckpt), ctx, pdata.MemoryRows(store, 2), layer=2)
    monkeypatch.setattr(pdata, "BLOCK_BYTES", 4 * store.hidden_size * 40)  # 40 rows: 3 or 4 trajectories a block
    blocks = []
    real = pdata.StreamRows.blocks
    monkeypatch.setattr(pdata.StreamRows, "blocks", lambda self, t: (blocks.append(b) or b for b in real(self, t)))
    streamed = evaluate(Scorer.from_checkpoint(ckpt), ctx, pdata.StreamRows(store, 2), layer=2)
    assert len(blocks) > 3 * store.manifest["shards"]["n"] and max(len(b.states) for b in blocks) <= 40 + 16
    assert streamed["probe"]["auroc"]["value"] == memory["probe"]["auroc"]["value"] > 0.8
    assert streamed["probe"]["error_localisation"]["n_trajectories"] > 0
    _same_numbers(streamed, memory)
