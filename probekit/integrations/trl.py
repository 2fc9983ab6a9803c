"""A probe as a TRL reward function: `reward_funcs=[reward_function("runs/probe")]` in `GRPOTrainer` (or RLOO, Online DPO).

TRL calls each custom reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)` once per
generation batch and expects one float (or None: "not applicable", which TRL turns into NaN and leaves out of the
sum) per completion; it logs the mean and std under `rewards/<f.__name__>/`. Prompts and completions come in one
of two shapes (trl/trainer/grpo_trainer.py, `_generate` and `_calculate_rewards`):

    plain           prompts: [str], completions: [str] (decoded with skip_special_tokens)
    conversational  prompts: [[{role, content}, ...]], completions: [[{"role": "assistant", "content": str}]]

The callable scores the whole batch in one `RewardProbe.score` call (one length-bucketed forward of the frozen
model, each prompt run once for its `num_generations` completions): plain text through `score`, conversations
through `split_messages` (a chat probe renders the prompt messages with its chat template, as TRL's policy saw
them). This module imports no TRL: the contract is the call signature, so the callable works with any TRL version
that has it and with trainers that copied it.

An empty (or all-whitespace) completion gets None: the probe has no completion token to read a reward at, and a
made-up number would enter the group's advantage. With a baseline folder (`probekit baseline`) the reward is the
contrastive one of Shen et al. 2024, r(x, y) - mean_j r(x, y_j^base), unless `contrastive=False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from probekit.errors import ProbekitError
from probekit.reward import RewardProbe
from probekit.reward.baseline import Baselines
from probekit.reward.reward_probe import DEFAULT_BATCH_SIZE

DEFAULT_NAME = "probekit_reward"


class ProbeReward:
    """The callable `reward_function` returns; `probe` is the `RewardProbe` it scores with."""

    def __init__(self, probe: RewardProbe, contrastive: bool, batch_size: int, name: str):
        if contrastive and probe.baseline is None:
            raise ProbekitError("contrastive=True needs a baseline: pass baseline=FOLDER (a `probekit baseline` output)")
        if batch_size < 1:
            raise ProbekitError(f"batch_size must be >= 1, got {batch_size}")
        self.probe, self.contrastive, self.batch_size = probe, contrastive, batch_size
        self.__name__ = name  # TRL names the reward by it in its logs (trl.trainer.utils.get_callable_name)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        """One reward per completion (None for an empty one); `kwargs` (TRL's dataset columns, trainer state) are unused."""
        if len(prompts) != len(completions):
            raise ProbekitError(f"{len(prompts)} prompts but {len(completions)} completions")
        conversational = bool(prompts) and not isinstance(prompts[0], str)
        texts = [_completion_text(c, i, conversational) for i, c in enumerate(completions)]
        keep = [i for i, t in enumerate(texts) if t.strip()]
        rewards: list[float | None] = [None] * len(texts)
        if not keep:
            return rewards
        if conversational:
            convs = [[*_messages(prompts[i], i), *map(dict, completions[i])] for i in keep]
            result = self.probe.score_messages(convs, batch_size=self.batch_size)
        else:
            result = self.probe.score([prompts[i] for i in keep], [texts[i] for i in keep], batch_size=self.batch_size)
        values = result.contrastive if self.contrastive else result.rewards
        for i, value in zip(keep, values):
            rewards[i] = float(value)
        return rewards


def reward_function(ckpt_or_probe: str | Path | RewardProbe, baseline: str | Path | Baselines | None = None, *,
                    contrastive: bool | None = None, device: str = "auto", batch_size: int = DEFAULT_BATCH_SIZE,
                    on_missing: str = "error", name: str = DEFAULT_NAME, **load_kwargs: Any) -> ProbeReward:
    """A TRL `reward_funcs` callable scoring with the probe in `ckpt_or_probe` (a checkpoint folder, a Hub id, or a
    loaded `RewardProbe`; `load_kwargs` go to `RewardProbe.load`: model=, dtype=, revision=).

    `contrastive` (default: whether a baseline is loaded) returns the reward minus each prompt's baseline mean;
    `on_missing` says what a prompt without a baseline gets ("error", or "zero": no penalty). `batch_size` texts run
    per forward chunk. `name` is what TRL logs the reward as.
    """
    if isinstance(ckpt_or_probe, RewardProbe):
        if load_kwargs:
            raise ProbekitError(f"{', '.join(sorted(load_kwargs))}: only for a checkpoint to load, not a loaded RewardProbe")
        probe = ckpt_or_probe
        if baseline is not None:
            probe.set_baseline(baseline, on_missing)
    else:
        probe = RewardProbe.load(ckpt_or_probe, device=device, baseline=baseline, on_missing=on_missing, **load_kwargs)
    return ProbeReward(probe, probe.baseline is not None if contrastive is None else contrastive, batch_size, name)


def _messages(prompt: Any, i: int) -> list[dict]:
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(m, dict) for m in prompt):
        raise ProbekitError(f"prompt {i + 1}: a conversational batch needs each prompt as a list of {{role, content}} messages")
    return [dict(m) for m in prompt]


def _completion_text(completion: Any, i: int, conversational: bool) -> str:
    """The text of a completion: the string itself, or the content of a conversational completion's last message
    (TRL's is one assistant message; after tool calls the last one is the final reply, the others join the prompt)."""
    if not conversational:
        if not isinstance(completion, str):
            raise ProbekitError(f"completion {i + 1} is {type(completion).__name__}, not a string (plain prompts take plain completions)")
        return completion
    if not isinstance(completion, (list, tuple)) or not completion or not all(isinstance(m, dict) for m in completion):
        raise ProbekitError(f"completion {i + 1}: a conversational completion is a list of messages ending with the assistant's")
    last = completion[-1]
    if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise ProbekitError(f"completion {i + 1}: its last message must be the assistant's, with string content")
    return last["content"]
