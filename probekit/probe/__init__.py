"""Small goal-conditioned reward probes trained on a frozen LM's cached states, and the one scorer that reads them.

- `network.ProbeModel`: φ (encoder) and r (reward head) on top of cached hidden states.
- `losses`: Bradley-Terry and the goal-conditioned contrastive loss of Nath et al. (2024).
- `data`: row sources (in memory or streamed), group splits, contrastive position sampling.
- `train.prepare` / `train.train`: the training loop; `checkpoint`: saving, loading, compatibility checks.
- `goals`: goal prototypes (the mean preferred state, faiss k-means) and the index that scores against them.
- `scoring.Scorer`: rewards and per-token Q-values of stored states; every command that scores uses it.

Heavy imports (torch) stay inside the submodules, so importing this package is cheap.
"""
