"""The per-token stop rules of generation: end of sequence, a stop string, and online early stopping by Q-value.

They sit below the scheduler that applies them row by row
(`probekit.generate.decoding`) and the steering search, as vLLM keeps its
stop checks under its scheduler, so both decoders stop for the same reasons;
and so does the one limit checked before any decoding, the model's context
(`check_context`), which `generate` and `steer` apply to the same prompts alike.
"""

from __future__ import annotations

import numpy as np

from probekit.errors import ProbekitError
from probekit.filter.thresholds import check_threshold_range
from probekit.outputs import checkpoint_inputs
from probekit.probe.scoring import Scorer


def check_context(prompts, contexts: list[list[int]], loaded, max_new_tokens: int) -> None:
    """Refuse, before any work, a prompt that cannot fit the model's context together with the new tokens.

    Past `max_position_embeddings` a model has no trained positions, so a
    decoder would go on producing tokens from states it was never trained on
    (and a probe would score them) with exit 0; every decoder checks here.
    """
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if not limit:
        return
    for p, ids in zip(prompts, contexts):
        if len(ids) + max_new_tokens > limit:
            raise ProbekitError(f"prompt '{p.id}': {len(ids)} tokens + --max-new-tokens {max_new_tokens} exceed the model's context of {limit} tokens")


class OnlineStop:
    """The filter's drop rule, applied as tokens are produced (see `probekit.generate.generation`)."""

    def __init__(self, ckpt, threshold: float, skip_first: int = 5, goal: str = "mean", chosen_on: str = "given"):
        check_threshold_range([threshold], "q")
        if skip_first < 0:
            raise ProbekitError(f"--skip-first {skip_first}: must be >= 0")
        self.scorer = Scorer.from_checkpoint(ckpt, kinds=[goal])
        self.ckpt = ckpt  # `generate` checks it against the model it loads (`probekit.probe.checkpoint.check_model`)
        self.layer, self.goal, self.threshold, self.skip_first = ckpt.single_layer("online filtering"), goal, float(threshold), int(skip_first)
        self.checkpoint, self.chosen_on = str(ckpt.path), chosen_on
        self.inputs = checkpoint_inputs(ckpt)  # what a generate --out may not hold: the checkpoint and its training store

    def drops(self, stored_states: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """bool [n]: which sequences stop at this token (states as stored, positions in the completion)."""
        q = self.scorer.q_values(stored_states)
        return (positions >= self.skip_first) & (q[self.goal] < self.threshold)


def eos_ids(loaded) -> list[int]:
    """Every token id that ends a sample: the tokenizer's EOS and the generation config's (chat models list several)."""
    ids = set()
    for source in (loaded.tokenizer.eos_token_id, getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)):
        if source is None:
            continue
        ids |= set(source) if isinstance(source, (list, tuple)) else {int(source)}
    return sorted(ids)


def hit_stop(tokenizer, tokens: list[int], stop: str | None, window: int = 8) -> bool:
    """Whether the last token completed the stop string (only the last few tokens are decoded: the stop is short)."""
    if not stop:
        return False
    tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
    return stop in tail and stop not in tokenizer.decode(tokens[-window:-1], skip_special_tokens=True)
