"""Baselines reported beside every probe result, on the same trajectories and bootstrap resamples.

- length: completion length as the score, in the direction (longer or shorter
  = better) that does best on a *selection* split of the store the probe was
  fitted on: its valid split when evaluating test, else its train split; its
  length-controlled AUROC (`probekit.eval.length_control`) is the check that the
  controls remove length (near 0.5);
- logistic_last / logistic_mean: a pointwise logistic-regression probe
  (standardised features, sklearn) on the same cached states — the last-token
  state, or the mean over the stored states of the completion — fitted on the
  training store's train split labels (or on chosen = 1 / rejected = 0 when
  unlabelled), then applied to the evaluated store;
- random: uniform random scores (AUROC ≈ 0.5, with its bootstrap interval).

Fitting where the probe was fitted keeps a cross-store evaluation fair: the
probe saw only its training store, and so do the baselines. When that store
is gone, the fitted baselines are reported as not fitted rather than fitted on
the evaluation data.

`beats` compares the probe with them: `beats_baselines` is False when the
probe's 95% interval does not clear the best trivial baseline (length, random).
"""

from __future__ import annotations

import numpy as np

from probekit.eval.context import EvalContext
from probekit.eval.length_control import log_tokens
from probekit.metrics import pairwise_correct, point_auroc, split_mask, split_pairs

TRIVIAL = ("length", "random")
NO_FIT_STORE = "not fitted: the store the probe was trained on is not available"


def _fit_split(ctx: EvalContext, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(trajectories, pairs) of split `name` of the training store."""
    store, groups = ctx.fit_store, ctx.split.get(name, [])
    return np.flatnonzero(split_mask(store, groups)), split_pairs(store, store.pairs(), groups)


def _direction_score(store, traj: np.ndarray, pairs: np.ndarray, sign: float) -> float | None:
    """How well sign·length ranks on a selection set: AUROC on labels, else pairwise accuracy."""
    T = store.meta.completion_tokens.astype(np.float64) * sign
    labels = store.meta.label[traj].astype(int)
    lab = labels >= 0
    auroc = point_auroc(T[traj][lab], labels[lab]) if lab.any() else None
    if auroc is not None:
        return auroc
    return float(pairwise_correct(T[pairs[:, 0]] - T[pairs[:, 1]]).mean()) if len(pairs) else None


def length_baseline(ctx: EvalContext) -> dict:
    if ctx.fit_store is None:
        return {"note": NO_FIT_STORE}
    sel_name = "valid" if ctx.which == "test" and ctx.same_store else "train"
    traj, pairs = _fit_split(ctx, sel_name)
    if len(traj) == 0 and sel_name == "valid":
        sel_name = "train"
        traj, pairs = _fit_split(ctx, sel_name)
    longer, shorter = _direction_score(ctx.fit_store, traj, pairs, 1.0), _direction_score(ctx.fit_store, traj, pairs, -1.0)
    if longer is None:
        return {"note": f"not fitted: the {sel_name} split of the training store has no labels or pairs to choose a direction on"}
    direction = "shorter" if shorter > longer else "longer"
    sign = 1.0 if direction == "longer" else -1.0
    selected_on = sel_name if ctx.same_store else f"{sel_name} split of the training store {ctx.fit_store.path}"
    # log length ranks as length does; through the length controls it must come out near 0.5 (a check of them)
    return {"direction": direction, "selected_on": selected_on,
            **ctx.summary(sign * log_tokens(ctx.store), sign * log_tokens(ctx.fit_store))}


def random_baseline(ctx: EvalContext) -> dict:
    rng = np.random.default_rng(ctx.seed + 12345)
    return {**ctx.summary(rng.random(len(ctx.store))), "note": "uniform random scores"}


def trajectory_features(source, traj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(last-token state, mean of stored states) per trajectory of `traj` (sorted unique), float32 [n, hidden].

    Per-trajectory summaries, read a block of the row source at a time: memory is the two [n, hidden]
    outputs plus one block, whatever the store's size.
    """
    traj = np.unique(np.asarray(traj, dtype=np.int64))
    last = np.zeros((len(traj), source.hidden_size), np.float32)
    mean = np.zeros_like(last)
    for block in source.blocks(traj):
        idx = np.searchsorted(traj, block.trajectories)
        states, offs = np.asarray(block.states, np.float32), block.offsets
        last[idx] = states[offs[1:] - 1]
        mean[idx] = segment_means(states, offs)
    return last, mean


def segment_means(states: np.ndarray, offsets: np.ndarray, run_rows: int = 4096) -> np.ndarray:
    """float32 mean of each segment `states[offsets[i]:offsets[i+1]]`, summed in float64.

    The float64 copy is made for runs of whole segments of about `run_rows` rows, not for the whole block
    (which would double the block's memory); each segment's sum is the same computation either way.
    """
    out = np.empty((len(offsets) - 1, states.shape[1]), np.float32)
    i = 0
    while i < len(out):
        j = min(max(int(np.searchsorted(offsets, offsets[i] + run_rows, side="right")) - 1, i + 1), len(out))
        sums = np.add.reduceat(states[offsets[i]:offsets[j]].astype(np.float64), offsets[i:j] - offsets[i], axis=0)
        out[i:j] = (sums / np.diff(offsets[i:j + 1])[:, None]).astype(np.float32)
        i = j
    return out


def _logistic_training_set(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, str]:
    """(trajectories, labels, how) of the training store's train split for the logistic probes."""
    train_traj, train_pairs = _fit_split(ctx, "train")
    labels = ctx.fit_store.meta.label[train_traj].astype(int)
    fit_traj, fit_y, how = train_traj[labels >= 0], labels[labels >= 0], "train labels"
    if len(set(fit_y.tolist())) < 2 and len(train_pairs):
        chosen, rejected = np.unique(train_pairs[:, 0]), np.unique(train_pairs[:, 1])
        both = np.intersect1d(chosen, rejected)
        chosen, rejected = np.setdiff1d(chosen, both), np.setdiff1d(rejected, both)
        fit_traj = np.concatenate([chosen, rejected])
        fit_y = np.concatenate([np.ones(len(chosen), int), np.zeros(len(rejected), int)])
        how = "train pairs (chosen = 1, rejected = 0)"
    return fit_traj, fit_y, how


def logistic_baselines(ctx: EvalContext, source, fit_source=None, C: float = 1.0) -> dict:
    """Logistic-regression probes (last-token and mean-pooled states) fitted on the training store's train split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if ctx.fit_store is None:
        return {"logistic_last": {"note": NO_FIT_STORE}, "logistic_mean": {"note": NO_FIT_STORE}}
    fit_source = source if fit_source is None else fit_source
    fit_traj, fit_y, how = _logistic_training_set(ctx)
    if len(set(fit_y.tolist())) < 2:
        note = "not fitted: the train split has no labels or pairs of both kinds"
        return {"logistic_last": {"note": note}, "logistic_mean": {"note": note}}
    if ctx.same_store:  # read each trajectory's states once for fitting and scoring
        feats_traj = np.unique(np.concatenate([fit_traj, ctx.traj]))
        fit_feats = eval_feats = trajectory_features(source, feats_traj)
        fit_at, eval_traj = np.searchsorted(feats_traj, fit_traj), feats_traj
    else:
        order = np.argsort(fit_traj)
        fit_traj, fit_y = fit_traj[order], fit_y[order]
        fit_feats, eval_feats = trajectory_features(fit_source, fit_traj), trajectory_features(source, ctx.traj)
        fit_at, eval_traj = np.arange(len(fit_traj)), ctx.traj
    out = {}
    for i, name in enumerate(("logistic_last", "logistic_mean")):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        clf.fit(fit_feats[i][fit_at], fit_y)
        scores = np.full(len(ctx.store), np.nan)
        scores[eval_traj] = clf.decision_function(eval_feats[i])
        note = f"fitted on {len(fit_traj)} {how}" + ("" if ctx.same_store else f" of the training store {ctx.fit_store.path}")
        if ctx.same_store and ctx.which in ("train", "all"):
            note += "; evaluated on data it was fitted on"
        out[name] = {**ctx.summary(scores), "note": note}
    return out


def run_baselines(ctx: EvalContext, source, fit_source=None) -> dict:
    """All baselines on the evaluation context's trajectories."""
    out = {"length": length_baseline(ctx)}
    out.update(logistic_baselines(ctx, source, fit_source))
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
