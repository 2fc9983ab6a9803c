"""Training losses: Bradley-Terry preference loss and the goal-conditioned contrastive loss.

Total loss (Nath et al. 2024): L = L_BT + λ · L_contrastive. With λ = 0 the
contrastive term is not computed at all, so the objective is exactly the pure
Bradley-Terry reward-model loss.

L_contrastive is the σ-cosine loss (`contrastive`) unless an ablation picks
another (`--contrastive`): `info_nce` over the batch's goals, or the σ-cosine
loss plus `token_goal`, a per-token term where first errors are known.

The σ-cosine loss comes in two shapes (`--contrastive-pairs`): `paired`, K
(source, goal) cosines per preference pair with a −log per pair before the
mean over pairs (probekit's), and `kxk`, the official code's
(vaskarnathscale/goal-conditioned-rm, openrlhf/models/loss.py,
`ContrastiveGoalLoss.forward`): every K×K source/goal and chosen/rejected
combination, and one −log of the mean over the whole micro-batch.
`pair_cosines` builds either, with the official `cosine_avg` option;
`contrastive` takes the −log per pair (`example`: the official code at its
released micro-batch of 1) or once per batch (`batch`), `--contrastive-reduce`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def bradley_terry(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Mean over pairs of −log σ(r_chosen − r_rejected − margin); `margin` is one number or one per pair ([P]: TRL's
    and the official code's per-pair `margin` field)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin).mean()


def pair_cosines(a: torch.Tensor, b: torch.Tensor, pairs: str = "paired", agg: str = "cosine") -> torch.Tensor:
    """Cosines between the K states `a` [P, K, d] and the K states `b` [P, K, d] of each preference pair.

    `paired`: cos(a_k, b_k), [P, K]; `kxk`: every cos(a_i, b_j), [P, K, K]
    (the official code's unsqueeze(2)/unsqueeze(1)). `cosine_avg` first
    averages b over its K states (the official `--contrastive_strategy
    cosine_avg`), giving [P, K] either way ([P, K, 1] for kxk).
    """
    if agg == "cosine_avg":
        b = b.mean(dim=1, keepdim=True)
    if pairs == "kxk":
        return F.cosine_similarity(a.unsqueeze(2), b.unsqueeze(1), dim=-1)
    return F.cosine_similarity(a, b, dim=-1)


def contrastive(pos_cos: torch.Tensor, neg_cos: torch.Tensor, reduce: str = "example") -> torch.Tensor:
    """Goal-conditioned contrastive loss on cosine similarities (Q-values).

    pos_cos [P, ...]: cosines of (source, goal) state pairs on the chosen
    completion; neg_cos [P, ...]: cosines of (chosen state, rejected state)
    pairs (`pair_cosines`, either shape; the two may hold different counts,
    the official --sim_samples and --unsim_samples). `example`: per pair p,
    −log(mean σ(pos_p)) − log(1 − mean σ(neg_p)), then the mean over pairs,
    which is the official code's loss at its released micro-batch of 1 with
    gradients accumulated over the batch; `batch`: −log(mean σ(pos)) −
    log(1 − mean σ(neg)) with each mean over every element of the batch (the
    official code with the whole batch in one micro-batch). The log
    arguments are clamped to [EPS, 1] so the loss stays finite (the official
    code does not clamp).
    """
    if reduce == "batch":
        p, n = torch.sigmoid(pos_cos).mean(), torch.sigmoid(neg_cos).mean()
    else:
        p = torch.sigmoid(pos_cos).mean(dim=tuple(range(1, pos_cos.dim())))
        n = torch.sigmoid(neg_cos).mean(dim=tuple(range(1, neg_cos.dim())))
    return (-torch.log(p.clamp(EPS, 1.0)) - torch.log((1.0 - n).clamp(EPS, 1.0))).mean()


def info_nce(source: torch.Tensor, goal: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over in-batch goals: each source must pick its own goal among the batch's.

    source, goal [P, K, rep]: the (source, goal) rows of each pair's chosen
    completion. For each k, the logits of source (p, k) are its cosines to the
    goals (p', k) of every pair p', divided by `temperature`; the target is
    p' = p. Mean cross-entropy over pairs and k (0 for a batch of one pair).
    """
    s = F.normalize(source, dim=-1).transpose(0, 1)  # [K, P, rep]
    g = F.normalize(goal, dim=-1).transpose(0, 1)
    logits = s @ g.transpose(1, 2) / temperature  # [K, P, P]
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def token_goal(cos: torch.Tensor, on_goal: torch.Tensor) -> torch.Tensor:
    """Process-reward-style term: per-token σ(cosine to the goal) against on/off-goal labels.

    cos: cosines of tokens of rejected completions with a known first error to
    their chosen completion's final state; on_goal: True before the error,
    False at and after it. Binary cross-entropy of σ(cos) (the official loss's
    probability) with the labels, mean over tokens; 0 when there are none.
    """
    if cos.numel() == 0:
        return cos.sum()
    return F.binary_cross_entropy_with_logits(cos, on_goal.to(cos.dtype))


def total_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    pos_cos: torch.Tensor | None = None,
    neg_cos: torch.Tensor | None = None,
    lam: float = 0.0,
    margin: float | torch.Tensor = 0.0,
    contrastive_term: torch.Tensor | None = None,
    reduce: str = "example",
) -> tuple[torch.Tensor, dict[str, float]]:
    """BT + λ·contrastive, and the terms as floats for logging.

    When `lam == 0` the contrastive term is skipped (not computed) and the
    returned loss is the Bradley-Terry tensor itself. `contrastive_term` is an
    ablation's contrastive loss, computed by the caller, in place of the
    σ-cosine one on (pos_cos, neg_cos) reduced as `reduce` says (`contrastive`).
    """
    bt = bradley_terry(r_chosen, r_rejected, margin)
    if lam == 0:
        return bt, {"bt": float(bt.detach()), "contrastive": 0.0, "total": float(bt.detach())}
    if contrastive_term is None and (pos_cos is None or neg_cos is None):
        raise ValueError("lam > 0 needs pos_cos and neg_cos")
    c = contrastive(pos_cos, neg_cos, reduce) if contrastive_term is None else contrastive_term
    total = bt + lam * c
    return total, {"bt": float(bt.detach()), "contrastive": float(c.detach()), "total": float(total.detach())}
