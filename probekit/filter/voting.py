"""Majority voting over sampled solutions, with and without Q-value filtering.

Definitions (all vectorised over trajectories; the only Python loops are over
a handful of seeds/thresholds, never over tokens or trajectories):

* A *group* is one problem; its trajectories are sampled solutions.
* Only trajectories with an `answer` vote; the others are counted and reported.
* Majority vote: the answer with the most voters wins. Ties are broken
  deterministically: the tied answer whose earliest voter comes first in store
  order wins.
* Filtered vote: only *kept* trajectories vote. If no kept trajectory of a group
  can vote (all dropped, or the kept ones have no answer), every trajectory of
  the group with an answer votes instead: the official evaluation's fallback.
  Such groups are counted as `fallback_groups`.
* Weighted vote: each voter adds sigmoid(reward) to its answer.
* Best-of-n: the voter with the highest reward is picked (ties: earliest).
* Softmax weighting (Q-Probe, Li et al. 2024, reweights its k samples by
  softmax(Q/β) instead of taking the argmax): each voter weighs
  softmax(score/β) over its group's voters. The softmax vote sums those
  weights per answer; softmax best-of-n is the expected correctness of one
  voter drawn by them: exact and seed-free, where a sampled draw would add
  noise to a comparison that has none to gain from it. β → 0 gives argmax
  best-of-n, large β the plain majority vote.
* Correctness: a group's chosen answer is correct if it equals the answer of
  ANY label-1 trajectory of the group (dropped or not). Groups without a
  label-1 trajectory, or without any answer at all, can never be correct.
* A group with a single trajectory votes alone (its one answer wins) and is
  counted like every other group.

Token-budget baselines (for comparing a filter at equal compute):

* random: shuffle the candidate trajectories, cut each at a uniformly random
  position (at or after `skip_first`), and drop them in that order until the
  saved tokens reach the budget; the last one is cut so the budget is met
  exactly.
* length: a generation cap C; every trajectory longer than C tokens is dropped
  after its C-th token (saved = length - C). C is chosen so the saved tokens
  are as close to the budget as possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from probekit.errors import ProbekitError

NO_ANSWER_ERROR = "store has no answers: voting needs the `answer` field"


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


@dataclass
class VoteResult:
    chosen: np.ndarray  # int64 [G]: answer code chosen per group, -1 = no vote possible
    correct: np.ndarray  # bool [G]
    fallback: np.ndarray  # bool [G]: the group fell back to voting over all its trajectories
    chosen_trajectory: np.ndarray  # int64 [G]: for best-of-n, the picked trajectory (-1 none); else the earliest voter of the winner


class Softmax(NamedTuple):
    """Q-Probe's weighting: within a group, each voter weighs softmax(score / beta)."""

    scores: np.ndarray  # float [n]: per-trajectory score (reward or Q at the last token)
    beta: float


class Ballot:
    """Groups, answers and labels of n trajectories, encoded once for repeated votes."""

    @classmethod
    def of_trajectories(cls, trajectories) -> "Ballot":
        """The ballot of trajectory records (`probekit.data.schema.Trajectory`), e.g. generated samples: a sample
        without an answer (stopped early) does not vote, one without a label counts as ungraded."""
        return cls([t.group for t in trajectories], [t.answer or "" for t in trajectories],
                   [-1 if t.label is None else t.label for t in trajectories], require_answers=False)

    def __init__(self, groups, answers, labels, require_answers: bool = True):
        groups = np.asarray(groups, dtype=object)
        answers = np.asarray(answers, dtype=object)
        labels = np.asarray(labels).astype(np.int64)
        n = len(groups)
        if len(answers) != n or len(labels) != n:
            raise ValueError("groups, answers and labels must have the same length")
        self.n = n
        self.group_names, self.group = np.unique(groups.astype(str), return_inverse=True)
        self.group = self.group.astype(np.int64)
        self.n_groups = len(self.group_names)
        self.has_answer = np.array([a is not None and a != "" for a in answers], dtype=bool) if n else np.zeros(0, bool)
        if require_answers and n and not self.has_answer.any():
            raise ProbekitError(NO_ANSWER_ERROR)
        ans = np.where(self.has_answer, answers, "").astype(str)
        self.answer_names, codes = np.unique(ans, return_inverse=True)
        self.answer = np.where(self.has_answer, codes, -1).astype(np.int64)
        self.n_answers = max(len(self.answer_names), 1)
        self.labels = labels
        good = self.has_answer & (labels == 1)
        self._correct_keys = np.unique(self._key(self.group[good], self.answer[good]))
        self.group_size = np.bincount(self.group, minlength=self.n_groups)
        self.group_has_correct = np.zeros(self.n_groups, bool)
        self.group_has_correct[self.group[good]] = True

    def _key(self, group: np.ndarray, answer: np.ndarray) -> np.ndarray:
        return group.astype(np.int64) * self.n_answers + answer.astype(np.int64)

    @property
    def n_without_answer(self) -> int:
        return int((~self.has_answer).sum())

    def answer_of(self, code: int) -> str | None:
        return None if code < 0 else str(self.answer_names[code])

    def is_correct(self, group: np.ndarray, answer: np.ndarray) -> np.ndarray:
        ok = answer >= 0
        out = np.zeros(len(group), bool)
        out[ok] = np.isin(self._key(group[ok], answer[ok]), self._correct_keys)
        return out

    def voters(self, kept: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(voter mask [n], fallback mask [G]) for a kept mask (None = everyone votes)."""
        if kept is None:
            return self.has_answer.copy(), np.zeros(self.n_groups, bool)
        kept = np.asarray(kept, dtype=bool)
        voters = self.has_answer & kept
        has_voter = np.bincount(self.group[voters], minlength=self.n_groups) > 0
        group_can_vote = np.bincount(self.group[self.has_answer], minlength=self.n_groups) > 0
        fallback = ~has_voter & group_can_vote
        voters |= self.has_answer & fallback[self.group]
        return voters, fallback

    def vote(self, kept: np.ndarray | None = None, weights: np.ndarray | None = None) -> VoteResult:
        """Majority (or weighted, with `weights` [n]) vote per group over the kept trajectories."""
        voters, fallback = self.voters(kept)
        idx = np.flatnonzero(voters)
        chosen = np.full(self.n_groups, -1, np.int64)
        first_voter = np.full(self.n_groups, -1, np.int64)
        if len(idx):
            keys = self._key(self.group[idx], self.answer[idx])
            uniq, inv = np.unique(keys, return_inverse=True)
            w = np.ones(len(idx)) if weights is None else np.asarray(weights, np.float64)[idx]
            total = np.bincount(inv, weights=w, minlength=len(uniq))
            first = np.full(len(uniq), self.n, np.int64)
            np.minimum.at(first, inv, idx)
            ugroup, uanswer = uniq // self.n_answers, uniq % self.n_answers
            order = np.lexsort((first, -total, ugroup))  # by group, most votes, earliest voter
            head = order[np.r_[True, ugroup[order][1:] != ugroup[order][:-1]]]
            chosen[ugroup[head]] = uanswer[head]
            first_voter[ugroup[head]] = first[head]
        groups = np.arange(self.n_groups)
        return VoteResult(chosen, self.is_correct(groups, chosen), fallback, first_voter)

    def weighted_vote(self, rewards: np.ndarray, kept: np.ndarray | None = None) -> VoteResult:
        """Each voter adds sigmoid(reward) to its answer."""
        return self.vote(kept, weights=sigmoid(rewards))

    def best_of_n(self, scores: np.ndarray, kept: np.ndarray | None = None) -> VoteResult:
        """Pick the highest-scoring voter of each group (ties: earliest in store order)."""
        voters, fallback = self.voters(kept)
        idx = np.flatnonzero(voters)
        chosen = np.full(self.n_groups, -1, np.int64)
        picked = np.full(self.n_groups, -1, np.int64)
        if len(idx):
            s = np.asarray(scores, np.float64)[idx]
            s = np.where(np.isnan(s), -np.inf, s)
            order = np.lexsort((idx, -s, self.group[idx]))
            g = self.group[idx][order]
            head = order[np.r_[True, g[1:] != g[:-1]]]
            picked[self.group[idx[head]]] = idx[head]
            chosen[self.group[idx[head]]] = self.answer[idx[head]]
        groups = np.arange(self.n_groups)
        return VoteResult(chosen, self.is_correct(groups, chosen), fallback, picked)

    def softmax_weights(self, softmax: Softmax, kept: np.ndarray | None = None) -> np.ndarray:
        """float [n]: softmax(score / beta) over each group's voters, 0 for non-voters.

        A non-finite score weighs 0, as NaN never wins best-of-n; a group whose voters all
        score so weighs them equally (its vote is then the plain majority).
        """
        voters, _ = self.voters(kept)
        z = np.asarray(softmax.scores, np.float64) / softmax.beta
        z = np.where(voters & np.isfinite(z), z, -np.inf)
        top = np.full(self.n_groups, -np.inf)
        np.maximum.at(top, self.group, z)
        scored = np.isfinite(top)[self.group]
        e = np.where(scored, np.exp(z - np.where(scored, top[self.group], 0.0)), voters.astype(np.float64))
        total = np.bincount(self.group, weights=e, minlength=self.n_groups)[self.group]
        return np.divide(e, total, out=np.zeros(self.n), where=total > 0)

    def softmax_vote(self, softmax: Softmax, kept: np.ndarray | None = None) -> VoteResult:
        """Each voter adds its softmax weight to its answer."""
        return self.vote(kept, weights=self.softmax_weights(softmax, kept))

    def expected_best_of_n(self, softmax: Softmax, kept: np.ndarray | None = None) -> np.ndarray:
        """float [G]: the chance that one voter drawn by its softmax weight has a correct answer (0 without voters)."""
        right = self.is_correct(self.group, self.answer)
        return np.bincount(self.group, weights=self.softmax_weights(softmax, kept) * right, minlength=self.n_groups)

    def group_mask(self, names) -> np.ndarray:
        """bool [G]: which groups are in `names`."""
        return np.isin(self.group_names, np.asarray(list(names), dtype=str))


def accuracy(result: VoteResult, group_mask: np.ndarray | None = None) -> float:
    correct = result.correct if group_mask is None else result.correct[group_mask]
    return float(correct.mean()) if len(correct) else float("nan")


# ---- token-budget baselines ------------------------------------------------


def random_budget_drops(
    completion_tokens: np.ndarray, candidates: np.ndarray, budget: int, rng: np.random.Generator, skip_first: int | np.ndarray = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Drop random candidates at random cut points (at or after `skip_first`, one or one per trajectory)
    until exactly `budget` tokens are saved.

    Returns (dropped bool [n], saved int64 [n]). If the random cuts of all
    candidates save too little, cuts are moved earlier (same random order) to
    meet the budget; if even the earliest allowed cuts cannot, all candidates
    are dropped at their earliest cut.
    """
    L = np.asarray(completion_tokens, np.int64)
    n = len(L)
    dropped = np.zeros(n, bool)
    saved = np.zeros(n, np.int64)
    cand = np.flatnonzero(np.asarray(candidates, bool))
    if budget <= 0 or len(cand) == 0:
        return dropped, saved
    perm = rng.permutation(cand)
    lo = np.minimum(np.broadcast_to(skip_first, n)[perm], np.maximum(L[perm] - 1, 0))
    hi = np.maximum(L[perm] - 1, lo)
    cut = lo + np.floor(rng.random(len(perm)) * (hi - lo + 1)).astype(np.int64)
    s = np.maximum(L[perm] - 1 - cut, 0)
    cs = np.cumsum(s)
    k = int(np.searchsorted(cs, budget, side="left"))  # first index where the budget is reached
    if k >= len(perm):
        # every candidate is dropped and the random cuts still save too little: move cuts
        # earlier (in the same random order) until the budget is met or all are at their earliest cut
        dropped[perm] = True
        most = np.maximum(L[perm] - 1 - lo, 0)
        extra = most - s
        need = budget - (int(cs[-1]) if len(cs) else 0)
        ce = np.cumsum(extra)
        add = np.minimum(extra, np.maximum(need - (ce - extra), 0))
        saved[perm] = s + add
        return dropped, saved
    take = perm[: k + 1]
    dropped[take] = True
    saved[take] = s[: k + 1]
    saved[perm[k]] = budget - (cs[k - 1] if k > 0 else 0)  # exact budget: shorten the last cut
    return dropped, saved


def length_budget_drops(completion_tokens: np.ndarray, candidates: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Cap generation at C tokens with C matching the budget; returns (dropped, saved, C).

    Trajectories longer than C are dropped after their C-th token (saved =
    length - C). C in [1, max length] minimises |saved - budget| (ties: larger C).
    """
    L = np.asarray(completion_tokens, np.int64)
    n = len(L)
    cand = np.asarray(candidates, bool)
    dropped = np.zeros(n, bool)
    saved = np.zeros(n, np.int64)
    lens = np.sort(L[cand])
    if budget <= 0 or len(lens) == 0:
        return dropped, saved, int(lens[-1]) if len(lens) else 0
    caps = np.arange(1, int(lens[-1]) + 1)
    suffix = np.r_[np.cumsum(lens[::-1])[::-1], 0]  # suffix[i] = sum(lens[i:])
    first_longer = np.searchsorted(lens, caps, side="right")
    totals = suffix[first_longer] - (len(lens) - first_longer) * caps
    err = np.abs(totals - budget)
    cap = int(caps[np.flatnonzero(err == err.min())[-1]])
    dropped = cand & (L > cap)
    saved[dropped] = L[dropped] - cap
    return dropped, saved, cap
