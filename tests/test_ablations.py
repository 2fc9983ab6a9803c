"""Ablation axes of `fit` and `sweep`: each on a planted store where only it can find the signal.

Every store below hides the label in one structure (two layers, the average
of the tokens, the first-error position, labels across prompts); the new
option must beat today's default there by a margin, with a fixed seed. The
defaults themselves are covered by the existing tests, which run unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit.config import FitConfig
from probekit.errors import ProbekitError
from probekit.pipeline import fit_probe
from probekit.probe.checkpoint import load_checkpoint
from probekit.store import Store
from tests.store_factory import make_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H = 8


def quick(**kw) -> FitConfig:
    return FitConfig().vary(**{**dict(widths=(32,), rep_size=16, epochs=10, lr=3e-3, n_boot=20, baselines=False), **kw})


def fit(store: Path, out: Path, **kw):
    return fit_probe(Store(store), out, quick(**kw))


def valid(ckpt) -> dict:
    return ckpt.metrics["valid"]["probe"]


# ---- planted stores ------------------------------------------------------------------
def split_layer_store(path: Path, n: int = 240, seed: int = 0) -> Path:
    """Label = c > 0; layer 1 holds a, layer 2 holds c − a along one direction: only both layers together tell c."""
    rng = np.random.default_rng(seed)
    u = np.eye(H)[1]
    first, second, groups, labels = [], [], [], []
    for i in range(n):
        T = int(rng.integers(4, 9))
        a, c = rng.normal(size=2)
        first.append((rng.normal(size=(T, H)) * 0.5 + 3 * a * u).astype(np.float32))
        second.append((rng.normal(size=(T, H)) * 0.5 + 3 * (c - a) * u).astype(np.float32))
        groups.append(f"g{i // 4:02d}")
        labels.append(int(c > 0))
    return make_store(path, first, groups, labels, layer=1, more_layers={2: second})


def averaged_store(path: Path, n: int = 160, seed: int = 0) -> Path:
    """Every token but the last leans weakly toward ±u with the label; the last token is pure noise."""
    rng = np.random.default_rng(seed)
    u = np.eye(H)[1]
    states, groups, labels = [], [], []
    for i in range(n):
        y = i % 2
        x = rng.normal(size=(16, H))
        x[:-1] += 0.6 * (2 * y - 1) * u
        states.append(x.astype(np.float32))
        groups.append(f"g{i // 4:02d}")
        labels.append(y)
    return make_store(path, states, groups, labels)


def error_position_store(path: Path, n: int = 160, seed: int = 0) -> Path:
    """Incorrect completions differ everywhere along v (easy for the reward) and, only after their first error, along w."""
    rng = np.random.default_rng(seed)
    v, w = np.eye(H)[2], np.eye(H)[3]
    states, groups, labels, errors = [], [], [], []
    for i in range(n):
        y = i % 2
        x = rng.normal(size=(16, H)) * 0.5
        err = -1
        if not y:
            err = int(rng.integers(4, 12))
            x += 3 * v
            x[err:] += 1.5 * w
        states.append(x.astype(np.float32))
        groups.append(f"g{i // 4:02d}")
        labels.append(y)
        errors.append(err)
    return make_store(path, states, groups, labels, error_tokens=errors)


def one_label_groups_store(path: Path, n_groups: int = 120, seed: int = 0) -> Path:
    """Two answers per prompt; only one prompt in ten has both labels, so within-prompt pairs are few."""
    rng = np.random.default_rng(seed)
    hidden = 32
    u = np.eye(hidden)[1]
    states, groups, labels = [], [], []
    for i in range(2 * n_groups):
        g = i // 2
        y = i % 2 if g % 10 == 0 else g % 2
        x = rng.normal(size=(int(rng.integers(4, 9)), hidden))
        x[-1] += (2 * y - 1) * u
        states.append(x.astype(np.float32))
        groups.append(f"g{g:03d}")
        labels.append(y)
    return make_store(path, states, groups, labels)


# ---- each axis helps where its structure carries the signal ---------------------------------
def test_two_layers_beat_one_when_the_signal_is_split_across_them(tmp_path):
    store = split_layer_store(tmp_path / "s")
    opts = dict(lam=0.0, widths=(), epochs=20, lr=1e-2)
    single = valid(fit(store, tmp_path / "single", **opts))["auroc"]["value"]
    concat = fit(store, tmp_path / "concat", features="concat", **opts)
    mix = fit(store, tmp_path / "mix", features="mix", **opts)
    assert single < 0.7
    assert valid(concat)["auroc"]["value"] > single + 0.2
    assert valid(mix)["auroc"]["value"] > single + 0.2
    assert concat.config["layers"] == [1, 2] and mix.config["model"]["n_layers"] == 2 and mix.config["model"]["mix"]
    weights = mix.metrics["train"]["layer_weights"]
    assert set(weights) == {"1", "2"} and sum(weights.values()) == pytest.approx(1.0)


def test_pooled_rewards_beat_the_last_token_when_the_label_is_in_the_average(tmp_path):
    store = averaged_store(tmp_path / "s")
    last = valid(fit(store, tmp_path / "last", lam=0.0))["auroc"]["value"]
    for pooling in ("mean", "attention"):
        ckpt = fit(store, tmp_path / pooling, lam=0.0, pooling=pooling)
        assert valid(ckpt)["auroc"]["value"] > last + 0.3, pooling
        assert valid(ckpt)["pairwise_accuracy"]["value"] > 0.9, pooling


def test_token_level_contrastive_localises_known_errors_better_than_the_official_loss(tmp_path):
    store = error_position_store(tmp_path / "s")
    official = valid(fit(store, tmp_path / "official", lam=1.0))["error_localisation"]["token_auroc"]
    token = valid(fit(store, tmp_path / "token", lam=1.0, contrastive="token"))["error_localisation"]["token_auroc"]
    assert token > official + 0.1
    assert token > 0.9


def test_cross_group_pairs_use_the_prompts_whose_answers_agree(tmp_path):
    store = one_label_groups_store(tmp_path / "s")
    group = fit(store, tmp_path / "group", lam=0.0)
    cross = fit(store, tmp_path / "cross", lam=0.0, pairs="cross")
    assert cross.metrics["train"]["n_train_pairs"] > 10 * group.metrics["train"]["n_train_pairs"]
    assert cross.metrics["train"]["n_valid_pairs"] == group.metrics["train"]["n_valid_pairs"]  # validation keeps the store's pairs
    assert valid(cross)["auroc"]["value"] > valid(group)["auroc"]["value"] + 0.2
    capped = fit(store, tmp_path / "capped", lam=0.0, pairs="cross", max_pairs=50, epochs=1)
    assert capped.metrics["train"]["n_train_pairs"] == 50


def test_cross_pairs_are_every_label_pair_of_the_given_trajectories():
    from probekit.probe.data import cross_pairs

    labels = np.array([1, 0, 1, 0, 0, -1, 1])
    pairs = cross_pairs(labels, np.array([0, 1, 2, 3, 4, 5]), cap=100, seed=0)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (0, 3), (0, 4), (2, 1), (2, 3), (2, 4)]
    sub = cross_pairs(labels, np.arange(7), cap=4, seed=0)
    assert len(sub) == 4 and len(set(map(tuple, sub.tolist()))) == 4
    assert all(labels[c] == 1 and labels[r] == 0 for c, r in sub)
    assert np.array_equal(sub, cross_pairs(labels, np.arange(7), cap=4, seed=0))


# ---- one computation: training, scoring, eval and filter agree ----------------------------
@pytest.fixture(scope="module")
def mixed_pooled(tmp_path_factory):
    """A probe over two mixed layers with attention pooling, and its store."""
    root = tmp_path_factory.mktemp("mp")
    store = split_layer_store(root / "s", n=60)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt = fit(store, root / "ck", features="mix", pooling="attention", epochs=3, goal_prototypes=2)
    torch.set_num_threads(old)
    return Store(store), ckpt


def test_scorer_rewards_are_the_pooled_rewards_of_each_prefix(mixed_pooled):
    from probekit.probe.data import MemoryRows, StreamRows
    from probekit.probe.scoring import Scorer, score_store, score_trajectories

    store, ckpt = mixed_pooled
    model = ckpt.model
    scorer = Scorer.from_checkpoint(ckpt)
    everything = np.arange(len(store))
    scores = [score_store(store, scorer, ckpt.layers), score_trajectories(MemoryRows(store, (1, 2)), scorer, everything),
              score_trajectories(StreamRows(store, (1, 2)), scorer, everything)]
    x = np.concatenate([store.load_layer(1), store.load_layer(2)], axis=1)
    with torch.no_grad():  # the training path: unfolded φ, pooled per trajectory
        z = model.encode(torch.from_numpy(x))
        for i in (0, 7, 33):
            start, end = int(store.meta.row_start[i]), int(store.meta.row_end[i])
            for t in (start, end - 1):  # a prefix's reward is the pooled reward of that prefix alone
                want = float(model.reward(model.pool(z[start:t + 1], torch.tensor([0, t + 1 - start]))[-1]))
                for s in scores:
                    assert s.reward[t] == pytest.approx(want, abs=1e-5)
        goal = torch.nn.functional.normalize(torch.from_numpy(ckpt.goals["mean"]), dim=-1)
        q = (torch.nn.functional.normalize(z, dim=-1) @ goal.T)[:, 0].numpy()
    for s in scores:
        np.testing.assert_allclose(s.q["mean"], q, atol=1e-5)  # Q stays per token
        np.testing.assert_allclose(s.reward, scores[0].reward, atol=1e-6)
    # Without trajectory bounds a pooled probe has no reward to give; Q it still gives.
    with pytest.raises(ValueError, match="offsets"):
        scorer(x[:4])
    np.testing.assert_allclose(scorer.q_values(x[:4])["mean"], q[:4], atol=1e-5)


def test_eval_and_filter_agree_for_a_multi_layer_pooled_probe(mixed_pooled, tmp_path):
    from probekit.eval.evaluate import evaluate_checkpoint
    from probekit.filter.config import FilterConfig
    from probekit.filter.filtering import filter_store
    from probekit.io import iter_jsonl
    from probekit.metrics import point_auroc

    store, ckpt = mixed_pooled
    ev = evaluate_checkpoint(ckpt, store, "all", n_boot=10, baselines=False)
    assert ev["layers"] == [1, 2]
    # The store has no answers to vote on: give the filter its own copy with answers.
    filter_store(ckpt, with_answers(store, tmp_path / "s"), tmp_path / "f", FilterConfig(threshold="0", plots=False, random_seeds=1))
    recs = {r["id"]: r for _, r in iter_jsonl(tmp_path / "f" / "decisions.jsonl")}
    labels = store.meta.label
    reward = np.array([recs[i]["reward"] for i in store.meta.id])
    final_q = np.array([recs[i]["final_q"] for i in store.meta.id])
    assert point_auroc(reward, labels) == pytest.approx(ev["probe"]["auroc"]["value"], abs=1e-12)
    assert point_auroc(final_q, labels) == pytest.approx(ev["probe"]["q_auroc_mean"]["value"], abs=1e-12)


def with_answers(store: Store, path: Path) -> Store:
    """The same states and labels as `store`, with an answer per trajectory (its label), at `path`."""
    n = len(store)
    per = [store.trajectory_states(i, 1) for i in range(n)]
    second = [store.trajectory_states(i, 2) for i in range(n)]
    copy = make_store(path, per, list(store.meta.group), list(store.meta.label), answers=[str(x) for x in store.meta.label],
                      layer=1, more_layers={2: second})
    return Store(copy)


def test_multi_layer_and_pooled_fits_stream_like_they_load(tmp_path):
    store = split_layer_store(tmp_path / "s", n=48)
    opts = dict(features="mix", pooling="mean", epochs=2, lam=0.5, contrastive="infonce")
    a = fit(store, tmp_path / "a", **opts)
    b = fit(store, tmp_path / "b", memory_budget_mb=1e-6, **opts)
    assert a.metrics["train"]["row_source"] == "memory" and b.metrics["train"]["row_source"] == "stream"
    assert a.metrics["train"]["history"] == b.metrics["train"]["history"]
    # Equal, except the length regression's coefficients: a pooled probe's training rewards (that regression's
    # input) pool rows read in blocks that differ between the two sources, so they agree to float rounding only.
    assert_same(a.metrics["valid"]["probe"], b.metrics["valid"]["probe"])


def assert_same(x, y, path: str = "") -> None:
    """Equal nested metrics; floats under a 'residualised' fit's intercept/slope to float rounding."""
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x:
            assert_same(x[k], y[k], f"{path}/{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            assert_same(u, v, f"{path}[{i}]")
    elif "residualised/" in path and path.rsplit("/", 1)[-1] in ("intercept", "slope"):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-8), path
    else:
        assert x == y, path


# ---- checkpoints: new options recorded, old checkpoints load with the old defaults ----------
def test_checkpoint_records_the_options_and_an_old_style_checkpoint_loads_with_the_defaults(mixed_pooled, tmp_path):
    import shutil

    store, ckpt = mixed_pooled
    loaded = load_checkpoint(ckpt.path)
    assert loaded.layers == (1, 2) and loaded.model.pooling == "attention" and loaded.model.mix
    fit_cfg = FitConfig.from_dict(loaded.config["fit"])
    assert (fit_cfg.probe.features, fit_cfg.probe.pooling) == ("mix", "attention")
    x = torch.randn(6, 2 * H)
    with torch.no_grad():
        assert torch.equal(loaded.model.encode(x), ckpt.model.encode(x))

    # A checkpoint written before the ablation options: a one-layer, last-token probe without the new keys.
    old = fit(store.path, tmp_path / "plain", epochs=1)
    shutil.copytree(old.path, tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["layers"]
    for key in ("n_layers", "mix", "pooling"):
        del cfg["model"][key]
    for group, key in (("probe", "features"), ("probe", "feature_layers"), ("probe", "pooling"), ("loss", "contrastive"),
                       ("loss", "temperature"), ("split", "pairs"), ("split", "max_pairs")):
        del cfg["fit"][group][key]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    back = load_checkpoint(tmp_path / "old")
    assert back.layers == (1,) and back.model.pooling == "last" and not back.model.mix and back.model.n_layers == 1
    assert FitConfig.from_dict(back.config["fit"]) == FitConfig.from_dict(old.config["fit"])
    with torch.no_grad():
        x = torch.randn(5, H)
        assert torch.equal(back.model(x)[1], old.model(x)[1])


def test_online_filtering_and_steering_refuse_multi_layer_probes(mixed_pooled):
    _store, ckpt = mixed_pooled
    with pytest.raises(ProbekitError, match=r"layers \[1, 2\].*one-layer"):
        ckpt.single_layer("online filtering")


# ---- options: validation, the CLI and the sweep -----------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(features="stack"), "--features"),
    (dict(feature_layers=(1, 2)), "--feature-layers"),
    (dict(features="concat", feature_layers=(1, 1)), "distinct"),
    (dict(features="mix", layer=3), "--layer"),
    (dict(pooling="max"), "--pooling"),
    (dict(contrastive="triplet"), "--contrastive"),
    (dict(temperature=0.0), "--temperature"),
    (dict(pairs="all"), "--pairs"),
    (dict(max_pairs=0), "--max-pairs"),
])
def test_bad_ablation_options_are_refused(change, message):
    with pytest.raises(ProbekitError, match=message):
        FitConfig().vary(**change).validate()


def test_several_layers_need_a_store_with_several_layers(tmp_path):
    from probekit.probe.train import prepare

    store = averaged_store(tmp_path / "s", n=16)
    with pytest.raises(ProbekitError, match="at least two layers"):
        prepare(Store(store), quick(features="mix"))
    with pytest.raises(ProbekitError, match="layer 5 not in this store"):
        prepare(Store(store), quick(features="concat", feature_layers=(2, 5)))


def test_cli_fit_and_sweep_take_the_ablation_options(tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401
    from probekit_cli.app import app

    store = split_layer_store(tmp_path / "s", n=48)
    runner = CliRunner()
    res = runner.invoke(app, ["fit", "--store", str(store), "--out", str(tmp_path / "ck"), "--features", "concat", "--feature-layers", "1,2",
                              "--pooling", "mean", "--pairs", "cross", "--epochs", "1", "--n-boot", "10", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["fit"]["probe"]["feature_layers"] == [1, 2] and cfg["fit"]["split"]["pairs"] == "cross" and cfg["model"]["pooling"] == "mean"
    res = runner.invoke(app, ["sweep", "--store", str(store), "--out", str(tmp_path / "sw"), "--lam", "0.5", "--k", "2", "--seeds", "0",
                              "--layers", "1", "--features", "single,mix", "--pooling", "last,mean", "--contrastive", "official,infonce",
                              "--epochs", "1", "--rep-size", "4", "--n-boot", "10", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    runs = out["runs"]
    # features × pooling × (λ = 0 once + λ = 0.5 per contrastive variant)
    assert len(runs) == 2 * 2 * (1 + 2)
    assert {r["contrastive"] for r in runs if r["lam"] == 0} == {None}
    assert {r["layer"] for r in runs if r["features"] == "mix"} == {"1+2"} and {r["layer"] for r in runs if r["features"] == "single"} == {1}
    assert len({r["checkpoint"] for r in runs}) == len(runs)
    assert out["options"]["axes"]["pooling"] == ["last", "mean"] and out["options"]["axes"]["pairs"] == ["group"]
    mix_mean = next(r for r in runs if r["features"] == "mix" and r["pooling"] == "mean" and r["contrastive"] == "infonce")
    ck = load_checkpoint(mix_mean["checkpoint"])
    assert ck.config["fit"]["loss"]["contrastive"] == "infonce" and ck.model.mix and ck.model.pooling == "mean"
    assert {b["layer"] for b in out["baselines"]} == {1, "1+2"}  # the baselines read what each probe reads


def test_one_at_a_time_runs_the_default_and_each_single_axis_change(tmp_path):
    from typer.testing import CliRunner

    import probekit_cli.main  # noqa: F401
    from probekit_cli.app import app
    from probekit.config import SweepConfig

    axes = {"features": ("single", "mix"), "pooling": ("last", "mean"), "contrastive": ("official", "infonce"), "pairs": ("group", "cross")}
    grid = SweepConfig(template=quick(), lams=(0.5,), seeds=(0,), axes=axes).runs([1])
    study = SweepConfig(template=quick(), lams=(0.5,), seeds=(0,), axes=axes, one_at_a_time=True)
    runs = study.runs([1])
    assert len(grid) == 2 * 2 * 2 * (1 + 2)
    named = sorted((r["lam"], tuple(study.changed(r))) for r in runs)
    # λ = 0: the default and one run per changed axis but the contrastive one (it has no contrastive term); λ = 0.5: all four
    assert named == sorted([(0.0, ()), (0.0, ("features",)), (0.0, ("pooling",)), (0.0, ("pairs",)),
                            (0.5, ()), (0.5, ("features",)), (0.5, ("pooling",)), (0.5, ("contrastive",)), (0.5, ("pairs",))])
    assert all(r in grid for r in runs)
    # the template, not the library default, is the reference: a mean-pooling template makes "last" the change
    pooled = SweepConfig(template=quick(pooling="mean"), lams=(0.0,), seeds=(0,), axes={"pooling": ("mean", "last")}, one_at_a_time=True)
    assert [pooled.changed(r) for r in pooled.runs([1])] == [[], ["pooling"]]

    store = split_layer_store(tmp_path / "s", n=48)
    res = CliRunner().invoke(app, ["sweep", "--store", str(store), "--out", str(tmp_path / "sw"), "--lam", "0.5", "--k", "2", "--seeds", "0",
                                   "--layers", "1", "--features", "single,mix", "--pooling", "last,mean", "--one-at-a-time",
                                   "--epochs", "1", "--rep-size", "4", "--n-boot", "10", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["options"]["one_at_a_time"] is True
    assert sorted((r["lam"], r["features"], r["pooling"]) for r in out["runs"]) == [
        (0.0, "mix", "last"), (0.0, "single", "last"), (0.0, "single", "mean"),
        (0.5, "mix", "last"), (0.5, "single", "last"), (0.5, "single", "mean")]


# ---- the new pieces by hand ------------------------------------------------------------------
def test_info_nce_and_token_goal_hand_values():
    import math

    from probekit.probe import losses

    e = torch.eye(3)
    src, goal = e[:2, None, :], e[:2, None, :]  # two pairs, K = 1, each source aligned with its own goal only
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 1))
    assert losses.info_nce(src, goal, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert losses.info_nce(src, goal.flip(0), 0.5).item() == pytest.approx(-math.log(1 / (math.exp(2) + 1)), rel=1e-6)
    cos, on = torch.tensor([0.5, -0.5]), torch.tensor([True, False])
    assert losses.token_goal(cos, on).item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-6)
    assert losses.token_goal(cos[:0], on[:0]).item() == 0.0


def test_attention_pooling_is_a_softmax_of_the_query_over_each_prefix():
    from probekit.probe.network import ProbeModel

    torch.manual_seed(0)
    model = ProbeModel(H, "linear", rep_size=4, pooling="attention")
    with torch.no_grad():
        model.query.copy_(torch.tensor([3.0, -1.0, 0.5, 2.0]))
    z = torch.randn(7, 4)
    offsets = torch.tensor([0, 3, 7])
    got = model.pool(z, offsets)
    for start, end in ((0, 3), (3, 7)):
        for t in range(start, end):
            w = torch.softmax(z[start:t + 1] @ model.query / 2.0, dim=0)  # √rep = 2
            assert torch.allclose(got[t], (w[:, None] * z[start:t + 1]).sum(0), atol=1e-6)
    mean = ProbeModel(H, "linear", rep_size=4, pooling="mean").pool(z, offsets)
    assert torch.allclose(mean[6], z[3:7].mean(0), atol=1e-6) and torch.allclose(mean[1], z[:2].mean(0), atol=1e-6)


def test_a_sweep_resumes_runs_saved_before_the_ablation_options(tmp_path, monkeypatch):
    import probekit.sweep as sweep_mod
    from probekit.config import SweepConfig
    from probekit.sweep import run_sweep

    store = averaged_store(tmp_path / "s", n=24)
    opts = SweepConfig(template=quick(epochs=1, baselines=False), lams=(0.0,), seeds=(0,))
    first = run_sweep(store, tmp_path / "sw", opts)
    cfg_path = Path(first["runs"][0]["checkpoint"]) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["fit"]["probe"]["pooling"], cfg["fit"]["split"]["pairs"]
    cfg_path.write_text(json.dumps(cfg))
    calls = []
    real_fit = sweep_mod.fit_probe
    monkeypatch.setattr(sweep_mod, "fit_probe", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = run_sweep(store, tmp_path / "sw", opts)
    assert calls == [] and [r["auroc"] for r in again["runs"]] == [r["auroc"] for r in first["runs"]]
    run_sweep(store, tmp_path / "sw", SweepConfig(template=quick(epochs=1, baselines=False), lams=(0.0,), seeds=(0,), axes={"pooling": ("mean",)}))
    assert calls == [1]  # another pooling is another run
