"""The filter's options from the official evaluation and Q-Probe, on hand-made data and against transcriptions.

* --skip-frac: the official `generation_percentile` slice, max(5, int(len * pct)), transcribed from
  `get_accuracy` in examples/eval_rm.py (and rm_dense_eval.py) of vaskarnathscale/goal-conditioned-rm.
* The vote tests: McNemar's exact p against scipy's binomial test, the official t-test against its
  per-question proportions transcribed from the same function.
* --weighting softmax: weights against a direct softmax, and its two limits (best-of-n, majority).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from probekit.filter.early_stop import apply_threshold, min_signal, skip_positions
from probekit.filter.significance import mcnemar_exact_p, official_ttest, share_correct, vote_tests
from probekit.filter.voting import Ballot, Softmax, accuracy

# ---- --skip-frac: the official slice --------------------------------------------------------------


def _official_start(length: int, pct: float) -> int:
    """Where the official evaluation's slice of a solution's cosine similarities starts (its hard-coded 5 included)."""
    return max(5, int(length * pct))


def test_skip_positions_is_the_official_slice_start_including_float_rounding():
    # 0.29 * 100 = 28.999999999999996 and 0.7 * 10 = 7.000000000000001: int() floors the float product, and so must we
    lengths = np.arange(1, 400)
    for pct in (0.0, 0.05, 0.1, 0.29, 0.3, 0.5, 0.7, 0.99):
        expected = [_official_start(int(n), pct) for n in lengths]
        assert skip_positions(lengths, 5, pct).tolist() == expected, pct
    assert skip_positions(np.array([100]), 5, 0.29).tolist() == [28]
    assert skip_positions(np.array([10, 40]), 0, 0.25).tolist() == [2, 10]  # skip_first below the share: the share rules
    assert skip_positions(np.array([10, 40]), 12, 0.25).tolist() == [12, 12]


def test_per_trajectory_skip_drops_where_the_official_evaluation_does():
    """Kept and drop position under max(5, int(pct * len)) equal the official rule: a solution is kept iff the min of
    its sliced similarities is >= the threshold, else it stops at the slice's first value below it."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 60, size=200)
    cos = [rng.normal(0.3, 0.3, size=n) for n in lengths]
    offsets = np.r_[0, np.cumsum(lengths)]
    positions = np.concatenate([np.arange(n) for n in lengths])
    signal = np.concatenate(cos)
    for pct, thr in ((0.0, 0.0), (0.2, -0.1), (0.5, 0.05)):
        skip = skip_positions(lengths, 5, pct)
        res = apply_threshold(offsets, positions, signal, lengths, thr, skip)
        for i, c in enumerate(cos):
            start = _official_start(len(c), pct)
            sliced = c[start:]
            assert res.kept[i] == (np.min(sliced) >= thr)
            if not res.kept[i]:
                assert res.first_drop_position[i] == start + np.where(sliced < thr)[0][0]
                assert res.saved_tokens[i] == len(c) - res.first_drop_position[i] - 1
        np.testing.assert_array_equal(min_signal(offsets, positions, signal, skip), [np.min(c[_official_start(len(c), pct):]) for c in cos])


# ---- the vote tests ------------------------------------------------------------------------------


def test_mcnemar_exact_p_by_hand_and_against_scipys_binomial_test():
    assert mcnemar_exact_p(0, 6) == 2 / 64
    assert mcnemar_exact_p(9, 1) == 2 * (1 + 10) / 1024  # n = 10: C(10, 0) + C(10, 1)
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    from scipy.stats import binomtest

    for a in range(0, 25, 3):
        for b in range(0, 25, 4):
            if a + b:
                assert mcnemar_exact_p(a, b) == pytest.approx(binomtest(min(a, b), a + b, 0.5).pvalue, rel=1e-12)


def _groups_fixed_and_broken(n_fixed: int, n_broken: int, n_both: int):
    """Groups of 3 solutions (answers "r" right / "w" wrong) and a kept mask: filtering fixes n_fixed groups
    (plain "w" wins, the kept "r" alone votes), breaks n_broken (plain "r", kept "w"), and leaves n_both right."""
    groups, answers, labels, kept = [], [], [], []
    for kind, n in (("fixed", n_fixed), ("broken", n_broken), ("both", n_both)):
        for g in range(n):
            ans = {"fixed": ["r", "w", "w"], "broken": ["w", "r", "r"], "both": ["r", "r", "w"]}[kind]
            keep = {"fixed": [1, 0, 0], "broken": [1, 0, 0], "both": [1, 1, 1]}[kind]
            groups += [f"{kind}{g}"] * 3
            answers += ans
            labels += [int(a == "r") for a in ans]
            kept += keep
    return Ballot(groups, answers, labels), np.array(kept, bool)


def test_vote_tests_count_the_problems_each_vote_gets_right_and_test_the_discordant_ones():
    ballot, kept = _groups_fixed_and_broken(6, 1, 2)
    out = vote_tests(ballot, kept, np.ones(ballot.n_groups, bool))
    paired = out["paired"]
    assert (paired["n_problems"], paired["both_correct"], paired["only_filtered_correct"], paired["only_majority_correct"],
            paired["both_wrong"]) == (9, 2, 6, 1, 0)
    assert paired["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)
    assert accuracy(ballot.vote(kept)) == pytest.approx(8 / 9) and accuracy(ballot.vote()) == pytest.approx(3 / 9)


def _official_proportions(groups, correct, kept):
    """Per question, the official evaluation's proportion_correct_filtered and proportion_correct (every solution answers)."""
    filtered, plain = [], []
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        num_correct = sum(correct[i] for i in idx)
        plain.append(num_correct / len(idx))
        k = [i for i in idx if kept[i]]
        filtered.append(num_correct / len(idx) if not k else sum(correct[i] for i in k) / len(k))  # all filtered: all of them
    return np.array(filtered), np.array(plain)


def test_official_ttest_is_the_official_call_on_the_official_proportions_and_welch_beside_it():
    from scipy.stats import t as student_t
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(3)
    groups = [f"g{g:02d}" for g in range(30) for _ in range(8)]
    correct = (rng.random(len(groups)) < np.repeat(rng.uniform(0.1, 0.9, 30), 8)).astype(int)
    answers = [("42" if c else str(rng.integers(0, 4))) for c in correct]
    kept = rng.random(len(groups)) < np.where(correct == 1, 0.8, 0.4)
    kept[:8] = False  # g00: every solution dropped, both sides fall back to all of them
    ballot = Ballot(groups, answers, correct)
    x, y = _official_proportions(groups, correct.tolist(), kept.tolist())
    np.testing.assert_allclose(share_correct(ballot, kept), x)
    np.testing.assert_allclose(share_correct(ballot, None), y)

    out = official_ttest(ballot, kept, np.ones(30, bool))
    ref = ttest_ind(x, y)  # the official call, scipy's default equal_var=True
    assert out["n_problems"] == 30 and out["student"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert out["student"]["statistic"] == pytest.approx(ref.statistic) and out["student"]["df"] == 58
    vx, vy = x.var(ddof=1) / 30, y.var(ddof=1) / 30  # Welch by hand
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / 29 + vy**2 / 29)
    assert out["welch"]["statistic"] == pytest.approx(t) == pytest.approx(out["student"]["statistic"])  # equal sizes: same t
    assert out["welch"]["df"] == pytest.approx(df) and out["welch"]["p_value"] == pytest.approx(2 * student_t.sf(abs(t), df))
    assert out["mean_share_correct_filtered"] == pytest.approx(x.mean()) and out["mean_share_correct"] == pytest.approx(y.mean())


def test_official_ttest_with_one_side_without_spread_is_defined_and_quiet(recwarn):
    """Every kept solution right (filtered shares all 1) is the common case: the test is defined, and scipy's
    precision-loss warning about the exactly zero variance is not passed on."""
    from scipy.stats import ttest_ind

    ref = ttest_ind([1.0, 1, 1, 1], [1 / 3, 1 / 3, 1 / 3, 2 / 3]).pvalue  # warns here, in the reference call
    recwarn.clear()
    groups = [g for g in ("a", "b", "c", "d") for _ in range(3)]
    answers = ["r", "w", "w"] * 3 + ["r", "r", "w"]
    ballot = Ballot(groups, answers, [int(a == "r") for a in answers])
    out = official_ttest(ballot, np.array([1, 0, 0] * 4, bool), np.ones(4, bool))
    assert out["student"]["p_value"] == pytest.approx(ref) and out["welch"]["p_value"] is not None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_official_ttest_is_undefined_without_spread_or_problems():
    ballot, kept = _groups_fixed_and_broken(3, 0, 0)  # every filtered share 1, every plain share 1/3
    out = official_ttest(ballot, kept, np.ones(3, bool))
    assert out["student"]["p_value"] is None and out["welch"]["statistic"] is None and out["n_problems"] == 3
    assert official_ttest(ballot, kept, np.array([True, False, False]))["student"]["p_value"] is None


# ---- --weighting softmax -------------------------------------------------------------------------


def test_softmax_weights_are_a_softmax_over_each_groups_voters():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), 5).astype(str)
    answers = rng.integers(0, 3, size=60).astype(str).astype(object)
    answers[rng.random(60) < 0.1] = None
    ballot = Ballot(groups, answers, rng.integers(0, 2, size=60))
    scores, kept = rng.normal(0, 3, size=60), rng.random(60) < 0.6
    for beta in (0.3, 1.0, 7.0):
        w = ballot.softmax_weights(Softmax(scores, beta), kept)
        voters, _ = ballot.voters(kept)
        for g in range(12):
            v = np.flatnonzero(voters & (ballot.group == g))
            e = np.exp(scores[v] / beta)
            np.testing.assert_allclose(w[v], e / e.sum(), rtol=1e-12)
        assert (w[~voters] == 0).all()


def test_softmax_by_hand_and_its_expected_best_of_n():
    ballot = Ballot(["g"] * 3, ["A", "B", "B"], [1, 0, 0])
    scores = np.array([2.0, 0.0, 0.0])
    p_a = math.exp(2) / (math.exp(2) + 2)  # 0.787 at beta 1
    assert ballot.answer_of(ballot.softmax_vote(Softmax(scores, 1.0)).chosen[0]) == "A"
    assert ballot.expected_best_of_n(Softmax(scores, 1.0))[0] == pytest.approx(p_a)
    # beta 10: A weighs exp(0.2) / (exp(0.2) + 2) = 0.38 < 0.5, so the two B votes win
    assert ballot.answer_of(ballot.softmax_vote(Softmax(scores, 10.0)).chosen[0]) == "B"
    assert ballot.expected_best_of_n(Softmax(scores, 10.0))[0] == pytest.approx(math.exp(0.2) / (math.exp(0.2) + 2))
    # NaN scores weigh nothing; a group scored only NaN weighs its voters equally (the majority vote)
    nan = np.array([np.nan, 0.0, 0.0])
    assert ballot.softmax_weights(Softmax(nan, 1.0)).tolist() == [0.0, 0.5, 0.5]
    assert ballot.softmax_weights(Softmax(np.full(3, np.nan), 1.0)) == pytest.approx([1 / 3] * 3)


def test_softmax_tends_to_argmax_best_of_n_for_small_beta_and_to_majority_for_large_beta():
    rng = np.random.default_rng(2)
    n_groups, per = 40, 7
    groups = np.repeat(np.arange(n_groups), per).astype(str)
    answers = rng.integers(0, 3, size=n_groups * per).astype(str)
    labels = (rng.random(n_groups * per) < 0.5).astype(int)
    ballot = Ballot(groups, answers, labels)
    scores = rng.normal(size=n_groups * per)
    best = ballot.best_of_n(scores)
    sharp = Softmax(scores, 1e-6)
    np.testing.assert_array_equal(ballot.softmax_vote(sharp).chosen, best.chosen)
    np.testing.assert_allclose(ballot.expected_best_of_n(sharp), best.correct.astype(float), atol=1e-9)
    flat = Softmax(scores, 1e9)
    counts = np.zeros((n_groups, ballot.n_answers), int)
    np.add.at(counts, (ballot.group, ballot.answer), 1)
    unique_top = np.sort(counts, axis=1)[:, -1] > np.sort(counts, axis=1)[:, -2]  # a count tie is broken by tiny score gaps
    assert unique_top.sum() > 20
    np.testing.assert_array_equal(ballot.softmax_vote(flat).chosen[unique_top], ballot.vote().chosen[unique_top])
    right = ballot.is_correct(ballot.group, ballot.answer)
    np.testing.assert_allclose(ballot.expected_best_of_n(flat), np.bincount(ballot.group, weights=right) / per, atol=1e-6)
