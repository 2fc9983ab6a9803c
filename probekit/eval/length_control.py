"""Length-controlled AUROC: does a score rank correct above incorrect among completions of similar length?

On the recorded studies completion length alone ranks solutions about as
well as any frozen probe, so a raw AUROC cannot tell a probe that learned
correctness from one that learned length. Two controls answer that, each
fitted on the TRAIN split of the store the probe was fitted on (where the
baselines are fitted), never on the evaluated trajectories:

- stratified: completion tokens are cut into `length_bins` quantile bins of
  the training split; the AUROC within each bin that has both classes is
  averaged with weights = the bin's number of (positive, negative) pairs
  (`metrics.stratified_auroc`: the share of same-bin pairs ranked correctly);
- residualised: the score is regressed on log(completion tokens) by ordinary
  least squares over the training split; the AUROC of score − fitted line on
  the evaluated trajectories.

Both carry the group-bootstrap interval of `metrics.auroc_ci`, on the same
resamples as the raw AUROC. `beats_length` is True when both lower bounds are
above 0.5: the score still ranks correctly once length is held fixed, in
either sense. A score that is a function of length alone comes out near 0.5
on both (the length baseline is reported through the same code as a check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit.metrics import auroc_ci, split_mask

NO_FIT_STORE = "not fitted: the store the probe was trained on is not available"
# Residuals are compared at this precision relative to the scores' scale: a score that is an exact
# linear function of log length leaves residuals of pure rounding noise, which must tie (AUROC 0.5).
RESIDUAL_DIGITS = 9


def log_tokens(store) -> np.ndarray:
    """log(completion tokens) per trajectory of `store` (at least 1 token, so every value is finite)."""
    return np.log(np.maximum(store.meta.completion_tokens.astype(np.float64), 1.0))


def ols_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line y ≈ a + b·x (slope 0 when x does not vary)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if np.ptp(x) == 0:
        return float(y.mean()), 0.0
    a, b = np.linalg.lstsq(np.column_stack([np.ones_like(x), x]), y, rcond=None)[0]
    return float(a), float(b)


def residuals(scores: np.ndarray, x: np.ndarray, intercept: float, slope: float, scale: float) -> np.ndarray:
    """score − (a + b·x), rounded to RESIDUAL_DIGITS relative to `scale` (rounding noise ties)."""
    return np.round((np.asarray(scores, np.float64) - (intercept + slope * x)) / (scale or 1.0), RESIDUAL_DIGITS)


def quantile_edges(tokens: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges at the 1/n, …, (n−1)/n quantiles of `tokens` (repeated edges merged, so bins may be fewer)."""
    return np.unique(np.quantile(np.asarray(tokens, np.float64), np.linspace(0, 1, n_bins + 1)[1:-1]))


def beats_length(stratified: dict, residualised: dict) -> bool | None:
    """Both lower bounds above 0.5; None when either interval is undefined."""
    los = (stratified.get("lo"), residualised.get("lo"))
    return None if any(lo is None for lo in los) else bool(min(los) > 0.5)


@dataclass(frozen=True)
class LengthControl:
    """The length strata and training trajectories of one evaluation context (`EvalContext.length`)."""

    n_bins: int
    edges: np.ndarray  # inner edges; stratum of T = number of edges <= T
    train_traj: np.ndarray  # indices into the training store
    fitted_on: str
    note: str | None = None  # set when the controls cannot be fitted

    @classmethod
    def fit(cls, ctx) -> LengthControl:
        """Quantile edges from the train split of `ctx.fit_store` (its trajectories with stored states)."""
        n_bins, store = ctx.length_bins, ctx.fit_store
        if store is None:
            return cls(n_bins, np.zeros(0), np.zeros(0, np.int64), "", NO_FIT_STORE)
        train = np.flatnonzero(split_mask(store, ctx.split.get("train", [])) & (store.meta.stored_tokens > 0))
        fitted_on = "train split" if ctx.same_store else f"train split of the training store {store.path}"
        if ctx.same_store and ctx.which in ("train", "all"):
            fitted_on += "; evaluated on data it was fitted on"
        if len(train) < 2:
            return cls(n_bins, np.zeros(0), train, fitted_on, "not fitted: the training split has fewer than 2 trajectories")
        return cls(n_bins, quantile_edges(store.meta.completion_tokens[train], n_bins), train, fitted_on)

    def strata(self, tokens: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, tokens, side="right")

    def describe(self) -> dict:
        """What the controls were fitted on, for metrics.json."""
        if self.note:
            return {"note": self.note}
        return {"bins": self.n_bins, "edges": self.edges.tolist(), "fitted_on": self.fitted_on, "n_train": int(len(self.train_traj)),
                "stratified": "AUROC within completion-length strata, mean weighted by each stratum's positive-negative pair count",
                "residualised": "AUROC of score minus its least-squares line on log(completion tokens) over the train split",
                "beats_length": "both 95% lower bounds above 0.5"}

    def controlled(self, ctx, traj_scores: np.ndarray, fit_scores: np.ndarray) -> dict:
        """Stratified and residualised AUROC of a score (per trajectory of ctx.store; per trajectory of ctx.fit_store)."""
        if self.note:
            return {"note": self.note}
        labels = ctx.labels
        lab = labels >= 0
        s = np.asarray(traj_scores, np.float64)[ctx.traj][lab]
        y, gid = labels[lab], ctx.group_ids[lab]
        strat = auroc_ci(s, y, gid, ctx.counts, strata=self.strata(ctx.store.meta.completion_tokens[ctx.traj][lab]))
        train_s = np.asarray(fit_scores, np.float64)[self.train_traj]
        ok = np.isfinite(train_s)
        x_train = log_tokens(ctx.fit_store)[self.train_traj][ok]
        a, b = ols_line(x_train, train_s[ok])
        scale = float(np.abs(train_s[ok]).max(initial=0.0))
        resid = residuals(s, log_tokens(ctx.store)[ctx.traj][lab], a, b, scale)
        res = {**auroc_ci(resid, y, gid, ctx.counts), "intercept": a, "slope": b}
        return {"stratified": strat, "residualised": res, "beats_length": beats_length(strat, res)}
