"""Small goal-conditioned reward probes trained on a frozen LM's cached states.

- `model.ProbeModel`: φ (encoder) and r (reward head) on top of cached hidden states.
- `losses`: Bradley-Terry and the goal-conditioned contrastive loss of Nath et al. (2024).
- `data`: row sources (in memory or streamed), group splits, contrastive position sampling.
- `train.fit`: the training loop; `checkpoint`: saving, loading, compatibility checks.

Heavy imports (torch) stay inside the submodules, so importing this package is cheap.
"""
