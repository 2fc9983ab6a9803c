"""Is the filtered vote better than the plain one? Two tests across the report's problems.

* Paired: McNemar's exact test on per-problem vote correctness. Both votes
  answer the same problems, so only the problems on which they disagree carry
  evidence; under "no difference" each of those goes either way with
  probability 1/2, and the two-sided p-value is the exact binomial tail
  (integer arithmetic: no approximation at small counts).
* The official evaluation's test (`_print_filter_results` in examples/eval_rm.py,
  examples/metrics.py and examples/experiments/eval/rm_dense_eval.py of
  vaskarnathscale/goal-conditioned-rm): `scipy.stats.ttest_ind(proportion_correct_filtered,
  proportion_correct)` over problems, where a problem's proportion is its share
  of correct solutions among those kept (all of them when none is kept) and
  among all. Here the shares are over the vote's voters (kept solutions with
  an answer; all with an answer when none is kept), so answerless solutions,
  which the official count includes as wrong, are left out. scipy's
  `equal_var` defaults to True, so the call is Student's pooled t-test; it is
  reported as called and as Welch's (equal_var=False).
  With as many problems on each side the statistic is the same, only the
  degrees of freedom differ. It treats the two sets of proportions as
  independent samples although they are paired, and it tests the share of
  correct solutions, not the vote: read it for comparison with the paper, the
  McNemar test for the vote.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from probekit.filter.voting import Ballot

OFFICIAL_TTEST = "scipy.stats.ttest_ind as the official evaluation calls it (Student: equal_var defaults to True)"


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: 2 P(X <= min) for X ~ Binomial(n, 1/2), at most 1."""
    n = only_first + only_second
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1))
    return 1.0 if n == 0 else min(1.0, 2 * tail / 2**n)


def share_correct(ballot: Ballot, kept: np.ndarray | None) -> np.ndarray:
    """float [G]: per group, the share of label-1 trajectories among its voters (NaN when it has none)."""
    voters, _ = ballot.voters(kept)
    n = np.bincount(ballot.group[voters], minlength=ballot.n_groups)
    good = np.bincount(ballot.group[voters & (ballot.labels == 1)], minlength=ballot.n_groups)
    return np.divide(good, n, out=np.full(ballot.n_groups, np.nan), where=n > 0)


def _ttest(x: np.ndarray, y: np.ndarray, equal_var: bool) -> dict:
    """statistic, df and p of scipy's two-sample t-test; None for all three where it is undefined (under two problems,
    or no spread on either side: scipy would warn and answer NaN or an infinite statistic)."""
    if len(x) < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return {"statistic": None, "df": None, "p_value": None}
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        # One side without spread (every kept solution right: shares all 1) is common and exact: its variance is 0.0,
        # which scipy's moment check flags as precision loss although nothing was lost.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        res = ttest_ind(x, y, equal_var=equal_var)
    return {"statistic": float(res.statistic), "df": float(res.df), "p_value": float(res.pvalue)}


def official_ttest(ballot: Ballot, kept: np.ndarray, group_mask: np.ndarray) -> dict:
    """The official t-test of per-problem share correct, filtered vs all, on the masked groups that have voters."""
    filtered, plain = share_correct(ballot, kept)[group_mask], share_correct(ballot, None)[group_mask]
    ok = np.isfinite(filtered) & np.isfinite(plain)
    x, y = filtered[ok], plain[ok]
    return {"n_problems": int(ok.sum()),
            "mean_share_correct_filtered": float(x.mean()) if len(x) else None,
            "mean_share_correct": float(y.mean()) if len(y) else None,
            "student": {**_ttest(x, y, True), "test": OFFICIAL_TTEST},
            "welch": {**_ttest(x, y, False), "test": "scipy.stats.ttest_ind(equal_var=False)"}}


def vote_tests(ballot: Ballot, kept: np.ndarray, group_mask: np.ndarray) -> dict:
    """Filtered vs plain majority vote on the masked groups: the paired McNemar test and the official t-test."""
    f, m = ballot.vote(kept).correct[group_mask], ballot.vote(None).correct[group_mask]
    only_f, only_m = int((f & ~m).sum()), int((~f & m).sum())
    paired = {"test": "McNemar exact, two-sided (binomial on the problems where the votes disagree)", "n_problems": len(f),
              "both_correct": int((f & m).sum()), "only_filtered_correct": only_f, "only_majority_correct": only_m,
              "both_wrong": int((~f & ~m).sum()), "p_value": mcnemar_exact_p(only_f, only_m)}
    return {"paired": paired, "official_ttest": official_ttest(ballot, kept, group_mask)}
