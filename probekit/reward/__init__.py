"""A probe as a reward model for other people's pipelines: `RewardProbe` (text in, rewards and Q-values out),
contrastive-reward baselines (Shen et al. 2024), and file scoring (`probekit score`)."""

from probekit.reward.reward_probe import RewardProbe, ScoreResult

__all__ = ["RewardProbe", "ScoreResult"]
