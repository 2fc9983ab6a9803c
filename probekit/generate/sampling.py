"""Token sampling that is reproducible per sequence, whatever else is in the batch.

Each sequence owns a `torch.Generator` seeded from (seed, prompt index, sample
index) and draws exactly one uniform number per step, turned into a token by
the inverse CDF of its temperature- and top-p-shaped distribution. So a
sequence's tokens do not depend on the batch it was decoded in or on which
other sequences were stopped early: online filtering, resumption and
fallback re-generation all see the same samples as an unfiltered run.
"""

from __future__ import annotations

import hashlib

import torch


def sequence_generator(seed: int, prompt_index: int, sample_index: int) -> torch.Generator:
    """The generator of one (prompt, sample) sequence."""
    digest = hashlib.sha256(f"{seed}/{prompt_index}/{sample_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_next(logits: torch.Tensor, generators: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    """Next token of each row of logits [B, V], one uniform draw per row from its own generator (greedy at temperature 0).

    NaN-safe at any tiny positive temperature: a row whose logits/temperature overflows (to inf, where softmax would
    compute inf - inf) or rounds the temperature to 0 gets its greedy token, which is the limit of its distribution
    (every other token's probability underflows to 0 long before); the other rows are sampled as usual.
    """
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(logits.device)  # draw even when greedy: same stream
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled, sorted_p, order, cum = _shaped(logits, temperature, top_p)
    target = u * cum[:, -1]
    idx = torch.searchsorted(cum, target[:, None]).clamp(max=cum.shape[1] - 1)
    sampled = order.gather(1, idx).squeeze(1)
    overflowed = ~torch.isfinite(scaled.amax(dim=-1))
    return torch.where(overflowed, logits.argmax(dim=-1), sampled)


def token_logprob(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probability of each row's token under the distribution `sample_next` draws from (renormalised over the nucleus).

    What the official step score's p multiplies: the released code reads HF generate's processed scores, i.e. the
    temperature- and top-p-shaped distribution. At temperature 0 (greedy) it is the model's own softmax.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    scaled, sorted_p, order, cum = _shaped(logits, temperature, top_p)
    p = torch.zeros_like(sorted_p).scatter(1, order, sorted_p).gather(1, tokens[:, None]).squeeze(1)
    overflowed = ~torch.isfinite(scaled.amax(dim=-1))  # sampled greedily (see sample_next): probability 1 in the limit
    return torch.where(overflowed, torch.zeros_like(p), torch.log(p / cum[:, -1]))


def _shaped(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, ...]:
    """(logits/temperature, the probabilities sorted best first with those outside the nucleus zeroed, their order, their cumsum)."""
    scaled = logits / temperature
    probs = torch.softmax(scaled, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(dim=-1)
    if top_p < 1:
        keep = (cum - sorted_p) < top_p  # the smallest prefix whose mass reaches top_p (the top token always stays)
        sorted_p = sorted_p * keep
        cum = sorted_p.cumsum(dim=-1)
    return scaled, sorted_p, order, cum
