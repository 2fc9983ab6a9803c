"""The official code's step score and beam selection (`steer --step-score official`), as plain functions over numbers.

Transcribed from vaskarnathscale/goal-conditioned-rm at 46e3a96 (`decoding/`):

* `conf_weight` is `get_cp_ratio` (decoding/src/utils/tool.py): `--conf_ratio r`
  is a log2-odds, the weight of the confidence is 2^r / (2^r + 1), so the
  released default r = 0 weighs confidence and probability equally;
  `--not_use_conf` sets r = -inf (weight 0), `--not_use_logprob` r = +inf.
* `step_score` is `Beam.cal_score` with `normalized_p` and
  `aggregate_conf_and_prob` (decoding/src/utils/Beam.py, tool.py):
  c^w · (p^(1/max(1, n)))^(1-w), p the step's probability under the sampling
  distribution and n its token count.
* `path_score`: `Beam.advance` multiplies the step scores along the path and
  ranks by their geometric mean over the path's steps; the cosine of the
  step's mean state to the goal is then added, weight 1 there
  (`_calc_gs_rm_cossim`), for the current step only (an ended beam, carried
  into later steps, is ranked without it).
* `select` is `Beam.advance._sample`: deterministic top-k of the unique
  candidates while the step's temperature (`temperature_at`: bs_temperature ·
  decay^step) is below 5e-3; otherwise draws without replacement with
  weights score^(1/T), optionally by rejection (`--reject_sample`: a drawn
  candidate is kept with probability its "latest" score, the accumulated
  confidence and length-normalised probability combined, and only if its
  score beats min(bs_min_score, the k-th best score - 1e-5); at most 100
  draws), and with `--unbiased` weights divided by the candidate's
  length-normalised LM probability (an importance correction: candidates
  were drawn from the LM).

Where probekit reconstructs what the released code intends: its `unbiased`
weights s^(1/T) / mean_j(p_j s_j^(1/T)) share one denominator, so the
correction cancels in `random.choices` and makes `np.random.choice` fail
(weights not summing to 1); probekit divides each weight by its own p. A
score below 0 (the added cosine can make one) raised to 1/T is complex in
Python; probekit gives it weight 0 (a floor of 1e-12). When rejection keeps
no candidate the released code stops the search; probekit keeps the best.
"""

from __future__ import annotations

import math

import numpy as np

GREEDY_BELOW = 5e-3  # the official code's threshold: a step temperature below it selects deterministically
MAX_DRAWS = 100  # rejection sampling gives up after this many draws (official)
WEIGHT_FLOOR = 1e-12  # a score at or below 0 gets (almost) no weight instead of a complex power


def conf_weight(conf_ratio: float) -> float:
    """Weight of the confidence in the step score from the official log2-odds `--conf_ratio` (`get_cp_ratio`)."""
    if math.isinf(conf_ratio):
        return 1.0 if conf_ratio > 0 else 0.0
    odds = 2.0 ** conf_ratio
    return odds / (odds + 1.0)


def step_score(conf: float, log_p: float, n_tokens: int, weight: float) -> float:
    """c^w · (p^(1/max(1, n)))^(1-w) for a step of probability exp(log_p) over n tokens (`Beam.cal_score`)."""
    p_norm = math.exp(log_p / max(1, n_tokens))
    return conf ** weight * p_norm ** (1.0 - weight)


def path_score(log_step_scores: float, steps: int) -> float:
    """The geometric mean of a path's step scores from the sum of their logs (`Beam.advance`: acc_cp ** (1 / length))."""
    return math.exp(log_step_scores / max(1, steps))


def temperature_at(temperature: float, decay: float, step: int) -> float:
    """The selection temperature at a step (0-based): decayed geometrically when decay >= 0 (`calculate_temperature`)."""
    return temperature * decay ** step if decay >= 0 and step else temperature


def select(scores: np.ndarray, k: int, *, groups: np.ndarray | None = None, temperature: float = 0.0, latest: np.ndarray | None = None,
           lm_prob: np.ndarray | None = None, unbiased: bool = False, reject: bool = False, min_score: float = 0.6,
           rng: np.random.Generator | None = None) -> list[int]:
    """Indices of the candidates kept, in the order chosen (`Beam.advance._sample`).

    `scores`: what candidates are ranked by; `groups`: duplicates share a group
    (None: every candidate its own), only the first of a group is ranked, and
    a drawn candidate removes its group; `latest`: the acceptance probability
    of rejection sampling; `lm_prob`: the length-normalised LM probability the
    unbiased weights are divided by. Deterministic below `GREEDY_BELOW`.
    """
    scores = np.asarray(scores, np.float64)
    groups = np.arange(len(scores)) if groups is None else np.asarray(groups)
    first = np.unique(groups, return_index=True)[1]
    unique = np.sort(first)
    if temperature < GREEDY_BELOW:
        order = unique[np.argsort(-scores[unique], kind="stable")]
        return [int(i) for i in order[:k]]
    n_pick = min(k, len(unique))
    log_w = np.log(np.maximum(scores, WEIGHT_FLOOR)) / temperature  # in logs: s^(1/T) underflows at a small T
    if unbiased:
        log_w = log_w - np.log(np.asarray(lm_prob, np.float64))
    threshold = np.sort(scores[unique])[::-1][n_pick - 1] - 1e-5
    remaining = np.ones(len(scores), bool)
    chosen: list[int] = []
    draws = 0
    while len(chosen) < n_pick and remaining.any() and (not reject or draws < MAX_DRAWS):
        draws += 1
        w = np.where(remaining, np.exp(log_w - log_w[remaining].max()), 0.0)
        i = int(rng.choice(len(scores), p=w / w.sum()))
        if reject and not (rng.uniform() < latest[i] and scores[i] > min(min_score, threshold)):
            continue
        chosen.append(i)
        remaining &= groups != groups[i]
    if not chosen:
        chosen = [int(unique[np.argmax(scores[unique])])]
    return chosen
