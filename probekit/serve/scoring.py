"""What the batcher's worker runs: one `RewardProbe.score` call over the texts of several requests, cut back per request.

Requests are merged only when their prompts are of one kind (plain prompts, or
text the chat template already produced: OpenRLHF sends those), since
`RewardProbe.score` renders a whole call one way. Scores do not depend on what
else is in the batch (`tests/test_reward_probe.py`: batch size and order do not
change results), so merging is invisible to clients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit.reward import RewardProbe


@dataclass(frozen=True)
class ScoreJob:
    """One request's texts: prompt i is followed by completion i (`rendered`: prompts are the chat template's output)."""

    prompts: list[str]
    completions: list[str]
    rendered: bool = False

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class JobRewards:
    """One request's share of a batch's `ScoreResult` (numpy arrays of its length)."""

    rewards: np.ndarray
    completion_tokens: np.ndarray
    truncated_tokens: np.ndarray
    contrastive: np.ndarray | None = None
    has_baseline: np.ndarray | None = None

    @property
    def n_truncated(self) -> int:
        return int((self.truncated_tokens > 0).sum())


class JobScorer:
    """`size` and `run` for `probekit.serve.batcher.Batcher` over one probe; both run on the batcher's one thread."""

    def __init__(self, rp: RewardProbe):
        self.rp = rp

    def size(self, job: ScoreJob) -> int:
        """The job's tokens as the probe reads them (after truncation); texts that do not encode fail here, alone."""
        return sum(len(e.input_ids) for e in self.rp.encode(job.prompts, job.completions, rendered=job.rendered))

    @staticmethod
    def key(job: ScoreJob) -> bool:
        return job.rendered

    def run(self, jobs: list[ScoreJob]) -> list[JobRewards]:
        prompts = [p for job in jobs for p in job.prompts]
        completions = [c for job in jobs for c in job.completions]
        result = self.rp.score(prompts, completions, rendered=jobs[0].rendered)  # its chunks bound the states held
        out, start = [], 0
        for job in jobs:
            cut = slice(start, start + len(job))
            out.append(JobRewards(rewards=result.rewards[cut], completion_tokens=result.completion_tokens[cut],
                                  truncated_tokens=result.truncated_tokens[cut],
                                  contrastive=None if result.contrastive is None else result.contrastive[cut],
                                  has_baseline=None if result.has_baseline is None else result.has_baseline[cut]))
            start = cut.stop
        return out
