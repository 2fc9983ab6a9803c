"""The one scorer: what eval and filter used to compute by two paths, now computed once.

Before the redesign, eval ran φ unfolded with a torch cosine and filter ran the
folded φ with a faiss search. Both are reconstructed here as references; they
agree with each other, and the scorer matches them through both block sources
(a store's shards, and a row source's selected trajectories).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.store_factory import make_store

HIDDEN = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from probekit.probe.network import ProbeModel
    from probekit.store import Store

    rng = np.random.default_rng(0)
    states = [rng.normal(3.0, 2.0, size=(int(rng.integers(3, 9)), HIDDEN)).astype(np.float32) for _ in range(30)]
    store = Store(make_store(tmp_path_factory.mktemp("s") / "store", states, [f"g{i // 3}" for i in range(30)],
                             [i % 2 for i in range(30)], answers=[str(i % 2) for i in range(30)], shard_size=7))
    torch.manual_seed(0)
    model = ProbeModel(HIDDEN, "mlp", (16,), rep_size=6, head="mlp", head_hidden=5)
    model.set_normalization(rng.normal(3.0, 0.1, HIDDEN), rng.uniform(1.5, 2.5, HIDDEN))
    goals = {"mean": rng.normal(size=(1, 6)).astype(np.float32), "kmeans": rng.normal(size=(3, 6)).astype(np.float32)}
    return store, model.eval(), goals


def eval_path(model, goals, x):
    """The old eval path: unfolded φ, torch cosine, max over prototypes."""
    with torch.no_grad():
        z, r = model(torch.from_numpy(x))
        q = {k: (F.normalize(z, dim=-1) @ F.normalize(torch.from_numpy(g), dim=-1).T).max(dim=-1).values.numpy() for k, g in goals.items()}
    return r.numpy(), q


def filter_path(model, goals, x):
    """The old filter path: folded φ, faiss inner product on normalised vectors."""
    from probekit.probe.goals import GoalIndex

    with torch.no_grad():
        z = model.folded_encoder()(torch.from_numpy(x))
        r = model.reward(z).numpy()
    return r, {k: GoalIndex(g).q_values(z.numpy()) for k, g in goals.items()}


def test_old_paths_agree_and_the_scorer_matches_them(setup):
    from probekit.probe.data import MemoryRows, StreamRows
    from probekit.probe.scoring import Scorer, score_store, score_trajectories

    store, model, goals = setup
    x = store.load_layer(2)
    r_eval, q_eval = eval_path(model, goals, x)
    r_filt, q_filt = filter_path(model, goals, x)
    np.testing.assert_allclose(r_eval, r_filt, rtol=1e-5, atol=1e-5)
    for k in goals:
        np.testing.assert_allclose(q_eval[k], q_filt[k], atol=1e-5)

    scorer = Scorer(model, goals)
    assert scorer.kinds == ["mean", "kmeans"]
    all_traj = np.arange(len(store))
    for scores in (score_store(store, scorer, 2), score_trajectories(MemoryRows(store, 2), scorer, all_traj),
                   score_trajectories(StreamRows(store, 2), scorer, all_traj)):
        np.testing.assert_array_equal(scores.traj, all_traj)
        np.testing.assert_array_equal(scores.offsets, np.append(store.meta.row_start, store.n_rows))
        np.testing.assert_array_equal(scores.positions, store.positions())
        np.testing.assert_allclose(scores.reward, r_eval, rtol=1e-5, atol=1e-5)
        for k in goals:
            np.testing.assert_allclose(scores.q[k], q_eval[k], atol=1e-5)


def test_a_subset_of_trajectories_scores_like_the_whole_store(setup):
    from probekit.probe.data import StreamRows
    from probekit.probe.scoring import Scorer, score_store, score_trajectories

    store, model, goals = setup
    scorer = Scorer(model, goals, kinds=["kmeans"])
    whole = score_store(store, scorer, 2)
    pick = np.array([1, 4, 5, 17, 29])
    part = score_trajectories(StreamRows(store, 2), scorer, pick)
    rows = np.concatenate([np.arange(whole.offsets[i], whole.offsets[i + 1]) for i in pick])
    np.testing.assert_array_equal(part.traj, pick)
    np.testing.assert_allclose(part.q["kmeans"], whole.q["kmeans"][rows], atol=1e-6)
    np.testing.assert_allclose(part.last(part.reward), whole.last(whole.reward)[pick], atol=1e-6)
    assert list(part.q) == ["kmeans"]


def test_live_torch_states_score_like_stored_ones(setup):
    """Generation hands the scorer torch tensors straight from the model; same numbers as numpy input."""
    from probekit.probe.scoring import Scorer

    store, model, goals = setup
    x = store.load_layer(2)[:10]
    scorer = Scorer(model, goals)
    r1, q1 = scorer(x)
    r2, q2 = scorer(torch.from_numpy(x).to(torch.bfloat16).float())
    np.testing.assert_allclose(r1, r2, atol=0.05)
    r3, q3 = scorer(torch.from_numpy(x))
    np.testing.assert_array_equal(r1, r3)
    np.testing.assert_array_equal(q1["mean"], q3["mean"])


def test_eval_and_filter_read_the_same_q_values(setup, tmp_path):
    """End to end: eval's last-token Q AUROC equals the AUROC of filter's final_q column on the same trajectories."""
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store
    from probekit.io import iter_jsonl
    from probekit.metrics import point_auroc
    from probekit.outputs import claim_output
    from probekit.probe.checkpoint import save_checkpoint, store_info

    store, model, goals = setup
    split = {"train": [], "valid": [f"g{i}" for i in range(5)], "test": [f"g{i}" for i in range(5, 10)]}
    ckpt = save_checkpoint(claim_output(tmp_path / "ck", "fit"), model, {"layer": 2, "store": store_info(store)}, goals, split, {})
    ev = evaluate_checkpoint(ckpt, store, "all", n_boot=10, baselines=False)
    filter_store(ckpt, store, tmp_path / "f", FilterConfig(threshold="0", plots=False, random_seeds=1))
    recs_q = {rec["id"]: rec["final_q"] for _, rec in iter_jsonl(tmp_path / "f" / "decisions.jsonl")}
    final_q = np.array([recs_q[i] for i in store.meta.id])
    assert point_auroc(final_q, store.meta.label) == pytest.approx(ev["probe"]["q_auroc_mean"]["value"], abs=1e-12)
