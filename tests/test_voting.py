"""Majority / weighted / best-of-n voting and the token-budget baselines on hand-made groups."""

from __future__ import annotations

import numpy as np
import pytest

from probekit.errors import ProbekitError
from probekit.filter.voting import Ballot, accuracy, length_budget_drops, random_budget_drops, sigmoid

# g1: majority "2" is wrong, the label-1 answer is "1".
# g2: "5" vs "7" tie (one vote each): the earliest voter ("5", label 0) wins -> wrong.
# g3: single trajectory, correct.
# g4: "9" twice (one without answer in between), correct; the None answer does not vote.
GROUPS = ["g1", "g1", "g1", "g2", "g2", "g3", "g4", "g4", "g4"]
ANSWERS = ["1", "2", "2", "5", "7", "3", "9", None, "9"]
LABELS = [1, 0, 0, 0, 1, 1, 1, 0, 1]


def _ballot():
    return Ballot(GROUPS, ANSWERS, LABELS)


def _by_group(ballot, result):
    return {g: (ballot.answer_of(result.chosen[i]), bool(result.correct[i])) for i, g in enumerate(ballot.group_names)}


def test_plain_majority_vote():
    b = _ballot()
    res = b.vote()
    assert _by_group(b, res) == {"g1": ("2", False), "g2": ("5", False), "g3": ("3", True), "g4": ("9", True)}
    assert accuracy(res) == 0.5
    assert b.n_without_answer == 1
    assert not res.fallback.any()


def test_tie_break_is_earliest_voter_in_store_order():
    b = Ballot(["g", "g", "g", "g"], ["7", "5", "5", "7"], [1, 0, 0, 1])
    assert b.answer_of(b.vote().chosen[0]) == "7"
    b = Ballot(["g", "g", "g", "g"], ["5", "7", "7", "5"], [0, 1, 1, 0])
    assert b.answer_of(b.vote().chosen[0]) == "5"


def test_filtered_vote_and_fallback():
    b = _ballot()
    kept = np.array([1, 0, 0, 0, 1, 1, 0, 1, 0], bool)  # g4: only the answerless one kept -> fallback
    res = b.vote(kept)
    assert _by_group(b, res) == {"g1": ("1", True), "g2": ("7", True), "g3": ("3", True), "g4": ("9", True)}
    assert res.fallback.tolist() == [False, False, False, True]
    # all dropped everywhere: the vote over all trajectories is the plain vote
    none_kept = b.vote(np.zeros(9, bool))
    assert none_kept.fallback.all()
    np.testing.assert_array_equal(none_kept.chosen, b.vote().chosen)


def test_weighted_vote_and_best_of_n():
    b = _ballot()
    rewards = np.array([5.0, -1.0, -1.0, 0.0, 0.1, 0.0, 0.0, 9.0, 0.0])
    w = b.weighted_vote(rewards)
    # g1: "1" has sigmoid(5)=0.993 > 2*sigmoid(-1)=0.538; g2: "7" 0.525 > 0.5
    assert _by_group(b, w)["g1"] == ("1", True) and _by_group(b, w)["g2"] == ("7", True)
    bon = b.best_of_n(rewards)
    # g4: the answerless trajectory has the top reward but cannot be picked
    assert bon.chosen_trajectory.tolist() == [0, 4, 5, 6]
    assert accuracy(bon) == 1.0
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_correct_means_any_label1_answer_and_group_masks():
    b = Ballot(["a", "a", "b"], ["1", "2", "3"], [1, 1, 0])
    res = b.vote()
    assert res.correct.tolist() == [True, False]  # "1" is a label-1 answer; group b has none
    assert b.group_has_correct.tolist() == [True, False]
    assert accuracy(res, b.group_mask(["a"])) == 1.0
    assert accuracy(res, b.group_mask(["b"])) == 0.0


def test_no_answers_is_an_error():
    with pytest.raises(ProbekitError, match="store has no answers"):
        Ballot(["a", "b"], [None, None], [1, 0])


def test_random_budget_is_exact_and_seeded():
    L = np.array([10, 20, 30, 40, 50])
    cand = np.array([1, 1, 1, 1, 0], bool)
    d1, s1 = random_budget_drops(L, cand, 37, np.random.default_rng(0), skip_first=2)
    d2, s2 = random_budget_drops(L, cand, 37, np.random.default_rng(0), skip_first=2)
    np.testing.assert_array_equal(s1, s2)
    assert s1.sum() == 37 and not d1[4] and (s1[~d1] == 0).all()
    assert (s1 <= np.maximum(L - 3, 0)).all()  # cut at position >= skip_first
    d, s = random_budget_drops(L, cand, 0, np.random.default_rng(0))
    assert not d.any() and s.sum() == 0
    d, s = random_budget_drops(L, cand, 10_000, np.random.default_rng(0), skip_first=2)
    assert d.tolist() == [True, True, True, True, False] and s.sum() == (L[:4] - 3).sum()


def test_length_cap_matches_budget():
    L = np.array([10, 20, 30, 40])
    dropped, saved, cap = length_budget_drops(L, np.ones(4, bool), 30)  # cap 25: 5 + 15 = 20, cap 20: 10 + 20 = 30
    assert cap == 20 and saved.sum() == 30 and dropped.tolist() == [False, False, True, True]
    dropped, saved, cap = length_budget_drops(L, np.ones(4, bool), 0)
    assert not dropped.any()
