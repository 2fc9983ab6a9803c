"""Metric primitives with group-bootstrap intervals, and the split helpers that pick a store's trajectories.

Pure numpy: no probe, no torch, nothing above the ground floor, so the
trainer (`probekit.probe.train`) and the evaluation wing (`probekit.eval`)
share one AUROC, one pairwise accuracy and one bootstrap.

Intervals resample GROUPS (prompts), not trajectories: answers to one prompt
are correlated, and a trajectory-level bootstrap would be too narrow.
"""

from __future__ import annotations

import numpy as np

from probekit.errors import ProbekitError

SPLIT_NAMES = ("train", "valid", "test")
_BOOT_CHUNK = 100


def pairwise_correct(diff: np.ndarray) -> np.ndarray:
    """Per pair, 1 when score(chosen) > score(rejected), 1/2 on a tie, else 0 (diff = chosen − rejected)."""
    diff = np.asarray(diff, dtype=np.float64)
    return (diff > 0) + 0.5 * (diff == 0)


def bootstrap_counts(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_groups] multiplicities of each group in each bootstrap resample (seeded)."""
    rng = np.random.default_rng(seed)
    if n_groups == 0:
        return np.zeros((n_boot, 0), dtype=np.int32)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.int32)


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties 1/2) under each row of item weights [B, n] -> [B] (NaN if one class missing)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_at = np.add.reduceat(w * y, starts, axis=1)
    neg_at = np.add.reduceat(w * ~y, starts, axis=1)
    neg_below = np.cumsum(neg_at, axis=1) - neg_at
    num = (pos_at * (neg_below + 0.5 * neg_at)).sum(axis=1)
    den = pos_at.sum(axis=1) * neg_at.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return None, None
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def point_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """AUROC of label 1 vs 0 (Mann-Whitney, ties 1/2), None unless the labels are exactly the two classes 0 and 1.

    Rank-based (`weighted_auroc` with unit weights), so ±inf scores rank as the
    extremes they are: a solution the filter can never drop (minimum signal
    +inf) ranks above every finite one. NaN has no rank and is refused.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if set(np.unique(labels).tolist()) != {0, 1}:
        return None
    if np.isnan(scores).any():
        raise ValueError("AUROC of NaN scores: a score is missing")
    return float(weighted_auroc(scores, labels, np.ones((1, len(scores))))[0])


def stratified_auroc(scores: np.ndarray, labels: np.ndarray, strata: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC within each stratum, averaged with weights = the stratum's positive-negative pair count, per row of `weights`.

    Pair-count weights make the mean the fraction of SAME-stratum (positive,
    negative) pairs that are ranked correctly (ties 1/2), so a stratum with
    one class adds nothing and a large stratum counts as much as its pairs.
    NaN when no stratum has both classes.
    """
    labels = np.asarray(labels).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    num = np.zeros(len(weights))
    den = np.zeros(len(weights))
    for s in np.unique(strata):
        m = strata == s
        w = weights[:, m]
        n_pairs = (w * labels[m]).sum(axis=1) * (w * ~labels[m]).sum(axis=1)
        num += np.where(n_pairs > 0, np.nan_to_num(weighted_auroc(scores[m], labels[m], w)) * n_pairs, 0.0)
        den += n_pairs
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def auroc_ci(scores, labels, group_ids, counts: np.ndarray, strata: np.ndarray | None = None) -> dict:
    """AUROC with a group-bootstrap 95% interval; `counts` from `bootstrap_counts` over the group ids.

    With `strata`, the AUROC is `stratified_auroc` (within strata, pair-weighted),
    on the same resamples; the result also counts the strata with both classes
    (`n_strata`) and the same-stratum pairs (`n_pairs`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    out = {"value": None, "lo": None, "hi": None, "n_pos": n_pos, "n_neg": n_neg}
    if strata is None:
        statistic = weighted_auroc
    else:
        strata = np.asarray(strata)
        both = [s for s in np.unique(strata) if 0 < labels[strata == s].sum() < (strata == s).sum()]
        out["n_strata"] = len(both)
        out["n_pairs"] = int(sum((labels[strata == s] == 1).sum() * (labels[strata == s] == 0).sum() for s in both))
        statistic = lambda sc, lab, w: stratified_auroc(sc, lab, strata, w)  # noqa: E731
        if not both:
            return out
    if n_pos == 0 or n_neg == 0:
        return out
    out["value"] = point_auroc(scores, labels) if strata is None else float(statistic(scores, labels, np.ones((1, len(scores))))[0])
    group_ids = np.asarray(group_ids, dtype=np.int64)
    boots = [statistic(scores, labels, counts[i:i + _BOOT_CHUNK][:, group_ids]) for i in range(0, len(counts), _BOOT_CHUNK)]
    out["lo"], out["hi"] = percentile_interval(np.concatenate(boots) if boots else np.zeros(0))
    return out


def pairwise_ci(diff, pair_group_ids, counts: np.ndarray) -> dict:
    """Pairwise accuracy (`pairwise_correct`) with a group-bootstrap 95% interval."""
    diff = np.asarray(diff, dtype=np.float64)
    out = {"value": None, "lo": None, "hi": None, "n": int(len(diff))}
    if len(diff) == 0:
        return out
    correct = pairwise_correct(diff)
    out["value"] = float(correct.mean())
    g = np.asarray(pair_group_ids, dtype=np.int64)
    G = counts.shape[1]
    sums = np.bincount(g, weights=correct, minlength=G)
    ns = np.bincount(g, minlength=G).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ sums) / (counts @ ns)
    out["lo"], out["hi"] = percentile_interval(boot)
    return out


def group_mean_band(values: np.ndarray, group_ids: np.ndarray, counts: np.ndarray, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Per column of `values` [n, T] (NaN = no value), the mean over rows and its group-bootstrap interval.

    The figures' bands (mean Q along trajectories, accuracy along the filter
    frontier) resample GROUPS like every interval here: each resample weighs a
    row by its group's multiplicity in `counts` (from `bootstrap_counts`), and
    a column's mean is over that resample's rows that have a value there. A
    column no row reaches has NaN everywhere; one a resample misses entirely
    is left out of that column's percentiles. Returns "mean", "lo", "hi" and
    "n" (rows with a value) per column.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    has = np.isfinite(values)
    filled = np.where(has, values, 0.0)
    n = has.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, filled.sum(axis=0) / np.maximum(n, 1), np.nan)
    lo, hi = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    if len(counts) and len(values):
        w = counts[:, np.asarray(group_ids, dtype=np.int64)].astype(np.float64)  # [B, n] row weights per resample
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (w @ filled) / (w @ has)  # [B, T]; NaN where a resample has no row with a value
        for t in np.flatnonzero(n > 0):
            interval = percentile_interval(boot[:, t], alpha)
            lo[t], hi[t] = (np.nan, np.nan) if interval[0] is None else interval
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


# ---- which trajectories an evaluation reads ---------------------------------------
def split_groups(store, split: dict, which: str) -> list[str]:
    """Group names of split `which` ("all": every group of the store)."""
    if which == "all":
        return sorted(set(store.meta.group.astype(str).tolist()))
    if which not in SPLIT_NAMES:
        raise ProbekitError(f"--split must be train, valid, test or all, got '{which}'")
    return list(split.get(which, []))


def split_mask(store, groups) -> np.ndarray:
    """Boolean mask over the store's trajectories whose group is in `groups`."""
    return np.isin(store.meta.group.astype(str), np.asarray(sorted(groups), dtype=str)) if groups else np.zeros(len(store), bool)


def split_pairs(store, pairs: np.ndarray, groups) -> np.ndarray:
    """The pairs whose (chosen) trajectory's group is in `groups`: a pair goes where its group goes."""
    if len(pairs) == 0:
        return pairs
    return pairs[split_mask(store, groups)[pairs[:, 0]]]
