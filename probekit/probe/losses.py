"""Training losses: Bradley-Terry preference loss and the goal-conditioned contrastive loss.

Total loss (Nath et al. 2024): L = L_BT + λ · L_contrastive. With λ = 0 the
contrastive term is not computed at all, so the objective is exactly the pure
Bradley-Terry reward-model loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean over pairs of −log σ(r_chosen − r_rejected − margin)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def contrastive(pos_cos: torch.Tensor, neg_cos: torch.Tensor) -> torch.Tensor:
    """Goal-conditioned contrastive loss on cosine similarities (Q-values).

    pos_cos [P, K]: cosines of (source, later goal) state pairs on the chosen
    completion; neg_cos [P, K]: cosines of (chosen state, rejected state) pairs.
    Per pair p: −log(mean_k σ(pos_pk)) − log(1 − mean_k σ(neg_pk)); mean over
    pairs. The log arguments are clamped to [EPS, 1] so the loss stays finite.
    """
    p = torch.sigmoid(pos_cos).mean(dim=-1)
    n = torch.sigmoid(neg_cos).mean(dim=-1)
    per_pair = -torch.log(p.clamp(EPS, 1.0)) - torch.log((1.0 - n).clamp(EPS, 1.0))
    return per_pair.mean()


def total_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    pos_cos: torch.Tensor | None = None,
    neg_cos: torch.Tensor | None = None,
    lam: float = 0.0,
    margin: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """BT + λ·contrastive, and the terms as floats for logging.

    When `lam == 0` the contrastive term is skipped (not computed) and the
    returned loss is the Bradley-Terry tensor itself.
    """
    bt = bradley_terry(r_chosen, r_rejected, margin)
    if lam == 0:
        return bt, {"bt": float(bt.detach()), "contrastive": 0.0, "total": float(bt.detach())}
    if pos_cos is None or neg_cos is None:
        raise ValueError("lam > 0 needs pos_cos and neg_cos")
    c = contrastive(pos_cos, neg_cos)
    total = bt + lam * c
    return total, {"bt": float(bt.detach()), "contrastive": float(c.detach()), "total": float(total.detach())}
