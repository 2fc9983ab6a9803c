"""Baselines reported beside every probe result, on the same split and bootstrap resamples.

- length: completion length as the score, in the direction (longer or shorter
  = better) that does best on a *selection* split: train when evaluating
  valid (or train/all), valid when evaluating test;
- logistic_last / logistic_mean: a pointwise logistic-regression probe
  (standardised features, sklearn) on the same cached states — the last-token
  state, or the mean over the stored states of the completion — trained on the
  train split's labels (or on chosen = 1 / rejected = 0 when unlabelled);
- random: uniform random scores (AUROC ≈ 0.5, with its bootstrap interval).

`beats` compares the probe with them: `beats_baselines` is False when the
probe's 95% interval does not clear the best trivial baseline (length, random).
"""

from __future__ import annotations

import numpy as np

from probekit.evaluate import EvalContext

TRIVIAL = ("length", "random")


def _selection_split(which: str) -> str:
    return "valid" if which == "test" else "train"


def _split_traj_pairs(ctx: EvalContext, name: str) -> tuple[np.ndarray, np.ndarray]:
    from probekit.probe.data import split_mask, split_pairs

    store = ctx.store
    groups = ctx.split.get(name, [])
    mask = split_mask(store, groups)
    pairs = split_pairs(store, store.pairs(), groups)
    return np.flatnonzero(mask), pairs


def _direction_score(store, traj: np.ndarray, pairs: np.ndarray, sign: float) -> float | None:
    """How well sign·length ranks on a selection set: AUROC on labels, else pairwise accuracy."""
    from sklearn.metrics import roc_auc_score

    T = store.meta.completion_tokens.astype(np.float64) * sign
    labels = store.meta.label[traj].astype(int)
    lab = labels >= 0
    if lab.any() and len(set(labels[lab].tolist())) == 2:
        return float(roc_auc_score(labels[lab], T[traj][lab]))
    if len(pairs):
        d = T[pairs[:, 0]] - T[pairs[:, 1]]
        return float(((d > 0) + 0.5 * (d == 0)).mean())
    return None


def length_baseline(ctx: EvalContext) -> dict:
    store = ctx.store
    sel_name = _selection_split(ctx.which)
    traj, pairs = _split_traj_pairs(ctx, sel_name)
    if len(traj) == 0 and sel_name == "valid":
        sel_name = "train"
        traj, pairs = _split_traj_pairs(ctx, sel_name)
    longer, shorter = _direction_score(store, traj, pairs, 1.0), _direction_score(store, traj, pairs, -1.0)
    if longer is None:
        direction, selected_on = "longer", None
    else:
        direction, selected_on = ("shorter" if shorter > longer else "longer"), sel_name
    sign = 1.0 if direction == "longer" else -1.0
    res = ctx.summary(sign * store.meta.completion_tokens.astype(np.float64))
    return {"direction": direction, "selected_on": selected_on, **res}


def random_baseline(ctx: EvalContext) -> dict:
    rng = np.random.default_rng(ctx.seed + 12345)
    return {**ctx.summary(rng.random(len(ctx.store))), "note": "uniform random scores"}


def trajectory_features(source, traj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last-token state, mean of stored states) per trajectory of `traj` (sorted unique), float32 [n, hidden]."""
    traj = np.unique(np.asarray(traj, dtype=np.int64))
    pos = {int(t): i for i, t in enumerate(traj)}
    last = np.zeros((len(traj), source.hidden_size), np.float32)
    mean = np.zeros_like(last)
    for sel, offs, states in source.blocks(traj):
        idx = np.asarray([pos[int(t)] for t in sel])
        last[idx] = states[offs[1:] - 1]
        sums = np.add.reduceat(states.astype(np.float64), offs[:-1], axis=0)
        mean[idx] = (sums / np.diff(offs)[:, None]).astype(np.float32)
    return last, mean


def logistic_baselines(ctx: EvalContext, source, C: float = 1.0) -> dict:
    """Logistic-regression probes (last-token and mean-pooled states) trained on the train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store = ctx.store
    train_traj, train_pairs = _split_traj_pairs(ctx, "train")
    labels = store.meta.label[train_traj].astype(int)
    fit_traj, fit_y, how = train_traj[labels >= 0], labels[labels >= 0], "train labels"
    if len(set(fit_y.tolist())) < 2 and len(train_pairs):
        chosen, rejected = np.unique(train_pairs[:, 0]), np.unique(train_pairs[:, 1])
        both = np.intersect1d(chosen, rejected)
        chosen, rejected = np.setdiff1d(chosen, both), np.setdiff1d(rejected, both)
        fit_traj = np.concatenate([chosen, rejected])
        fit_y = np.concatenate([np.ones(len(chosen), int), np.zeros(len(rejected), int)])
        how = "train pairs (chosen = 1, rejected = 0)"
    if len(set(fit_y.tolist())) < 2:
        note = "not fitted: the train split has no labels or pairs of both kinds"
        return {"logistic_last": {"note": note}, "logistic_mean": {"note": note}}
    feats_traj = np.unique(np.concatenate([fit_traj, ctx.traj]))
    last, mean = trajectory_features(source, feats_traj)
    where = np.searchsorted(feats_traj, fit_traj)
    out = {}
    for name, X in (("logistic_last", last), ("logistic_mean", mean)):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        clf.fit(X[where], fit_y)
        scores = np.full(len(store), np.nan)
        scores[feats_traj] = clf.decision_function(X)
        note = f"fitted on {len(fit_traj)} {how}"
        if ctx.which in ("train", "all"):
            note += "; evaluated on data it was fitted on"
        out[name] = {**ctx.summary(scores), "note": note}
    return out


def run_baselines(ctx: EvalContext, source) -> dict:
    """All baselines on the evaluation context's split."""
    out = {"length": length_baseline(ctx)}
    out.update(logistic_baselines(ctx, source))
    out["random"] = random_baseline(ctx)
    return out


def _best(baselines: dict, names, metric: str) -> float | None:
    vals = [b[metric]["value"] for n, b in baselines.items() if n in names and b and metric in b and b[metric]["value"] is not None]
    return max(vals) if vals else None


def beats(probe: dict, baselines: dict) -> dict:
    """`beats_baselines` / `beats_logistic`: does the probe's 95% CI lower bound clear the best baseline?

    Uses AUROC when the split has labels of both kinds, else pairwise accuracy;
    None when neither can be computed.
    """
    metric = "auroc" if probe["auroc"]["value"] is not None else "pairwise_accuracy"
    lo = probe[metric]["lo"]
    out = {"compared_on": metric}
    for key, names in (("beats_baselines", TRIVIAL), ("beats_logistic", ("logistic_last", "logistic_mean"))):
        best = _best(baselines, names, metric)
        out[key] = None if lo is None or best is None else bool(lo > best)
    return out
