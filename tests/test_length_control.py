"""Length-controlled AUROC: the metric on hand-made numbers, and fitted probes on stores where length is or is not the signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probekit_cli.tables import metric_rows
from probekit.config import FitConfig
from probekit.errors import ProbekitError
from probekit.eval.evaluate import evaluate_checkpoint
from probekit.eval.length_control import beats_length, ols_line, quantile_edges, residuals
from probekit.eval.context import make_context
from probekit.metrics import auroc_ci, bootstrap_counts, stratified_auroc, weighted_auroc
from probekit.pipeline import fit_probe
from probekit.store import Store
from tests.helpers import fast_config, planted_arrays, trained
from tests.store_factory import make_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the metric --------------------------------------------------------------------------
def test_stratified_auroc_hand_values():
    # Stratum 0: 2 positives, 1 negative, one of the two pairs right (AUROC 0.5, 2 pairs);
    # stratum 1: 1 positive above 3 negatives (AUROC 1.0, 3 pairs); stratum 2 has one class (no pairs).
    scores = np.array([0.3, 0.1, 0.2, 5.0, 4.0, 4.5, 4.9, 9.0])
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 1])
    strata = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    w = np.ones((1, 8))
    assert stratified_auroc(scores, labels, strata, w)[0] == pytest.approx((0.5 * 2 + 1.0 * 3) / 5)
    # Most positives sit in the low-scoring stratum, yet each stratum ranks them on top: perfect within, poor overall.
    scores2 = np.array([1.0, 1.0, 1.0, 0.0, 21.0, 20.0, 20.0, 20.0])
    labels2 = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    strata2 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    assert roc_auc_score(labels2, scores2) == pytest.approx(7 / 16)
    assert stratified_auroc(scores2, labels2, strata2, np.ones((1, 8)))[0] == 1.0
    # A score equal to length, each stratum one length: every same-stratum pair ties.
    T = np.repeat([8, 12, 18], 10)
    y = np.tile([1, 0], 15)
    assert stratified_auroc(T.astype(float), y, np.searchsorted([10, 15], T, side="right"), np.ones((1, 30)))[0] == 0.5
    # No stratum with both classes: undefined.
    assert np.isnan(stratified_auroc(scores2, labels2, np.arange(8), np.ones((1, 8)))[0])


def test_stratified_auroc_is_the_share_of_same_stratum_pairs_ranked_right():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=120).astype(float)  # ties
    labels = rng.integers(0, 2, size=120)
    strata = rng.integers(0, 4, size=120)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    same = strata[pos][:, None] == strata[neg][None, :]
    d = scores[pos][:, None] - scores[neg][None, :]
    explicit = ((d > 0) + 0.5 * (d == 0))[same].mean()
    assert stratified_auroc(scores, labels, strata, np.ones((1, 120)))[0] == pytest.approx(explicit)
    # One stratum: the plain AUROC.
    assert stratified_auroc(scores, labels, np.zeros(120), np.ones((1, 120)))[0] == pytest.approx(roc_auc_score(labels, scores))
    # Integer weights = repeated items.
    w = rng.integers(0, 3, size=120)
    rep = np.repeat(np.arange(120), w)
    assert stratified_auroc(scores, labels, strata, w[None])[0] == pytest.approx(
        stratified_auroc(scores[rep], labels[rep], strata[rep], np.ones((1, len(rep))))[0])


def test_stratified_interval_resamples_groups_like_the_raw_auroc():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(9), 6)
    labels = np.tile([1, 1, 1, 0, 0, 0], 9)
    strata = rng.integers(0, 3, size=54)
    scores = labels + 2 * strata + rng.normal(size=54)
    counts = bootstrap_counts(9, 80, seed=4)
    res = auroc_ci(scores, labels, groups, counts, strata=strata)
    assert res["value"] == pytest.approx(stratified_auroc(scores, labels, strata, np.ones((1, 54)))[0])
    explicit = []
    for row in counts:  # each resample: the groups drawn, repeated as often as drawn
        rows = np.concatenate([np.flatnonzero(groups == g) for g in range(9) for _ in range(row[g])])
        explicit.append(stratified_auroc(scores[rows], labels[rows], strata[rows], np.ones((1, len(rows))))[0])
    lo, hi = np.nanpercentile(explicit, [2.5, 97.5])
    assert res["lo"] == pytest.approx(lo) and res["hi"] == pytest.approx(hi)
    same = strata[labels == 1][:, None] == strata[labels == 0][None, :]
    assert res["n_strata"] == 3 and res["n_pairs"] == int(same.sum())
    # Without strata the result is the raw AUROC's, unchanged.
    assert auroc_ci(scores, labels, groups, counts)["value"] == pytest.approx(roc_auc_score(labels, scores))
    none = auroc_ci(scores, labels, groups, counts, strata=np.where(labels == 1, 0, 1))  # no stratum holds both classes
    assert none["value"] is None and none["n_strata"] == 0


def test_line_residuals_edges_and_verdict():
    x = np.log(np.array([5.0, 10.0, 20.0, 40.0]))
    a, b = ols_line(x, 2.0 - 3.0 * x)
    assert a == pytest.approx(2.0) and b == pytest.approx(-3.0)
    assert ols_line(np.full(3, 2.0), np.array([1.0, 2.0, 6.0])) == (3.0, 0.0)  # no spread in length: the mean
    # A score that is an exact function of log length leaves rounding noise only, which must tie.
    T = np.arange(5, 60, dtype=float)
    s = 0.7 * np.log(T) + 0.1
    r = residuals(s, np.log(T), *ols_line(np.log(T), s), scale=np.abs(s).max())
    assert (r == 0).all()
    assert weighted_auroc(r, T > 30, np.ones((1, len(T))))[0] == 0.5
    assert quantile_edges(np.arange(1, 101), 4).tolist() == [25.75, 50.5, 75.25]
    assert quantile_edges(np.array([3, 3, 3, 3, 9]), 4).tolist() == [3.0]  # repeated edges merge: 2 strata
    lo = lambda v: {"lo": v}  # noqa: E731
    assert beats_length(lo(0.55), lo(0.6)) is True
    assert beats_length(lo(0.55), lo(0.5)) is False and beats_length(lo(0.4), lo(0.9)) is False
    assert beats_length(lo(None), lo(0.9)) is None


# ---- fitted probes on planted stores ----------------------------------------------------------
LENGTHS = (8, 12, 18, 27)
P_CORRECT = (0.1, 0.3, 0.7, 0.9)


def length_only_store(path, n_groups: int = 80, per: int = 4, hidden: int = 4, seed: int = 0) -> Store:
    """Correctness depends on completion length only (P(label 1) rises with length); feature 0 of every state is log length."""
    rng = np.random.default_rng(seed)
    states, groups, labels = [], [], []
    for g in range(n_groups):
        for _ in range(per):
            k = int(rng.integers(len(LENGTHS)))
            x = 0.3 * rng.normal(size=(LENGTHS[k], hidden))
            x[:, 0] = 2.0 * np.log(LENGTHS[k])
            states.append(x.astype(np.float32))
            groups.append(f"g{g:02d}")
            labels.append(int(rng.random() < P_CORRECT[k]))
    return Store(make_store(path, states, groups, labels))


def test_a_probe_that_learned_length_does_not_beat_length(tmp_path):
    store = length_only_store(tmp_path / "s")
    ckpt = fit_probe(store, tmp_path / "ck", fast_config(widths=(), test_frac=0.3, epochs=40, lr=1e-2, patience=40))
    m = evaluate_checkpoint(ckpt, store, "test", n_boot=300)
    auroc = m["probe"]["auroc"]
    assert auroc["value"] > 0.75 and auroc["lo"] > 0.6  # raw: the probe ranks well, by length
    lc = auroc["length_controlled"]
    for name in ("stratified", "residualised"):
        assert abs(lc[name]["value"] - 0.5) < 0.1 and lc[name]["lo"] < 0.5 < lc[name]["hi"], (name, lc[name])
    assert lc["beats_length"] is False and m["beats_length"] is False
    # Strata are the four lengths (edges from the training split): within each, nothing but noise is left.
    assert lc["stratified"]["n_strata"] == 4
    train_T = store.meta.completion_tokens[np.isin(store.meta.group, ckpt.split["train"])]
    assert m["length_control"]["edges"] == quantile_edges(train_T, 5).tolist() and m["length_control"]["fitted_on"] == "train split"
    q = m["probe"]["q_auroc_mean"]
    assert q["value"] > 0.7 and q["length_controlled"]["stratified"]["lo"] < 0.5 < q["length_controlled"]["stratified"]["hi"]
    assert q["length_controlled"]["beats_length"] is False
    # The check: length itself through the same controls is exactly chance (one length per stratum; log length is its own fit).
    length = m["baselines"]["length"]["auroc"]
    assert length["value"] > 0.75
    assert length["length_controlled"]["stratified"]["value"] == 0.5 and length["length_controlled"]["residualised"]["value"] == 0.5
    assert length["length_controlled"]["residualised"]["slope"] == pytest.approx(1.0)  # longer = better here
    rows = {r[0]: r for r in metric_rows(m)}
    assert rows["probe reward, log length regressed out"][3].startswith("does not beat length")
    assert rows["length, within length strata"][1] == "0.500 [0.50, 0.50]"


def test_a_probe_of_a_direction_independent_of_length_beats_length(tmp_path_factory):
    store, ckpt = trained(tmp_path_factory)  # correctness planted in a direction; lengths independent of labels
    m = evaluate_checkpoint(ckpt, Store(store), "test", n_boot=300)
    for auroc in (m["probe"]["auroc"], m["probe"]["q_auroc_mean"]):
        lc = auroc["length_controlled"]
        assert lc["stratified"]["value"] > 0.85 and lc["residualised"]["value"] > 0.85
        assert lc["stratified"]["lo"] > 0.5 and lc["residualised"]["lo"] > 0.5
        assert lc["beats_length"] is True
    assert m["beats_length"] is True
    rows = {r[0]: r for r in metric_rows(m)}
    assert rows["probe reward, log length regressed out"][3] == "beats length"


def test_controls_are_fitted_on_the_training_store_when_evaluating_another(tmp_path_factory, tmp_path):
    train_path, ckpt = trained(tmp_path_factory)
    states, groups, labels, errors = planted_arrays(n_groups=6, seed=7)
    states = [np.concatenate([s, s]) for s in states]  # other store, twice as long: its own quantiles would differ
    other = Store(make_store(tmp_path / "other", states, [f"o-{g}" for g in groups], labels, error_tokens=errors))
    m = evaluate_checkpoint(ckpt, other, "all", n_boot=100)
    train = Store(train_path)
    train_T = train.meta.completion_tokens[np.isin(train.meta.group, ckpt.split["train"])]
    assert m["length_control"]["edges"] == quantile_edges(train_T, 5).tolist()
    assert m["length_control"]["fitted_on"] == f"train split of the training store {train.path}"
    lc = m["probe"]["auroc"]["length_controlled"]
    assert lc["stratified"]["n_strata"] == 1  # every evaluated completion is longer than the training ones: one stratum
    assert lc["stratified"]["value"] == pytest.approx(m["probe"]["auroc"]["value"])


def test_length_bins_option(tmp_path_factory):
    store, ckpt = trained(tmp_path_factory)
    m = evaluate_checkpoint(ckpt, Store(store), "test", n_boot=50, length_bins=2, baselines=False)
    assert len(m["length_control"]["edges"]) == 1 and m["length_control"]["bins"] == 2
    ctx = make_context(Store(store), ckpt.split, "test", n_boot=10, length_bins=3)
    assert len(ctx.length.edges) == 2
    with pytest.raises(ProbekitError, match="--length-bins 1"):
        FitConfig().vary(length_bins=1).validate()
    saved = json.loads(json.dumps(m))  # JSON-ready
    assert saved["probe"]["auroc"]["length_controlled"]["residualised"]["slope"] == pytest.approx(
        m["probe"]["auroc"]["length_controlled"]["residualised"]["slope"])
