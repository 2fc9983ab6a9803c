"""`FilterConfig`: how `filter` drops solutions and chooses its threshold, validated in one place.

Kept apart from the filter's driver (as TRL keeps a trainer's config beside
it), and free of torch, so the CLI derives its options without loading a
model stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from probekit.config import GOAL_KINDS, Config, check_choice, option
from probekit.errors import ProbekitError
from probekit.filter.thresholds import check_threshold_range, parse_thresholds
from probekit.probe.scoring import SIGNALS

WEIGHTINGS = ("argmax", "softmax")


@dataclass(frozen=True)
class FilterConfig(Config):
    """How solutions are dropped and how the threshold is chosen."""

    threshold: str = option("auto", "Drop threshold: auto (the default: candidates are 0 and the 0%, 5%, ..., 95% quantiles of the "
                                    "per-trajectory minimum signal on the selection groups; the one with the best filtered-vote accuracy "
                                    "there is chosen, ties: more tokens saved, and reported on the other groups), a number (a Q "
                                    "threshold is a cosine in (-1, 1]; negative values are normal, as a solution's minimum Q is often "
                                    "below 0) or a comma list (0.1,0.2), chosen among as auto chooses.")
    skip_first: int = option(5, "Never drop at token positions below this (the official evaluation skips the first 5 tokens).")
    skip_frac: float = option(0.0, "Nor below floor(F x the solution's completion tokens): the official generation_percentile, which skips "
                                   "max(5, int(F x length)) tokens (--skip-first 5 --skip-frac F is that rule). Offline only: "
                                   "online stopping cannot know the final length.")
    goal: str = option("mean", "Goal prototype(s) for Q: mean (the paper's mean preferred representation) or kmeans (best cosine to any k-means prototype).")
    signal: str = option("q", "Per-token score compared with the threshold: q (cosine to the goal, in [-1, 1]) or reward (the reward head).")
    valid_frac: float = option(0.3, "Share of the store's groups used to choose the threshold when none of the checkpoint's validation groups are in the store.")
    seed: int = option(0, "Seed of the validation split, of the random-drop baseline and of the plotted trajectories.")
    random_seeds: int = option(5, "Seeds averaged for the random-drop baseline.")
    plots: bool = option(True, "Write frontier.png and q_curves.png.")
    weighting: str = option("argmax", "Best-of-n and weighted votes: argmax (best-of-n by reward, votes weighted by sigmoid(reward), as recorded) "
                                      "or softmax (also reports Q-Probe's: votes weighted by softmax(score/beta) within a problem, and "
                                      "best-of-n as the expected accuracy of one solution drawn by those weights).")
    beta: float = option(1.0, "Temperature of --weighting softmax: toward 0 it is best-of-n by argmax, large it is the plain majority vote.")
    weight_by: str = option("reward", "Score of --weighting softmax: reward (the reward head at the last token) or q "
                                      "(Q toward --goal at the last token, as Q-Probe weights).")

    def validate(self) -> None:
        """Check every option (a threshold the signal cannot cross included)."""
        check_choice("--signal", self.signal, SIGNALS)
        check_choice("--goal", self.goal, GOAL_KINDS)
        if self.skip_first < 0:
            raise ProbekitError(f"--skip-first {self.skip_first}: must be >= 0")
        if self.random_seeds < 1:
            raise ProbekitError(f"--random-seeds {self.random_seeds}: must be >= 1")
        if not 0.0 < self.valid_frac < 1.0:
            raise ProbekitError(f"--valid-frac {self.valid_frac}: must be between 0 and 1")
        if not 0.0 <= self.skip_frac < 1.0:
            raise ProbekitError(f"--skip-frac {self.skip_frac}: must be in [0, 1)")
        check_choice("--weighting", self.weighting, WEIGHTINGS)
        check_choice("--weight-by", self.weight_by, SIGNALS)
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ProbekitError(f"--beta {self.beta}: must be a positive number")
        if self.weighting == "argmax" and (self.beta != 1.0 or self.weight_by != "reward"):
            raise ProbekitError("--beta and --weight-by apply only with --weighting softmax")
        check_threshold_range(self.thresholds(), self.signal)

    def thresholds(self) -> list[float] | None:
        """The parsed --threshold: sorted unique values, or None for auto."""
        return parse_thresholds(self.threshold)
