"""Anthropic HH-RLHF (harmless-base) preference pairs as trajectories.

Each record holds two whole dialogues that share everything but the last
Assistant turn. The shared dialogue up to and including the last
"\\n\\nAssistant:" is the prompt and the two last turns are the completions,
so a probe's preference accuracy compares two answers to the same context.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from probekit.data.schema import Pair, Trajectory, check_trajectory, require_records
from probekit.errors import ProbekitError, where
from probekit.io import iter_jsonl

ASSISTANT = "\n\nAssistant:"


def split_last_turn(dialogue: str) -> tuple[str, str] | None:
    """(prompt up to and including the last "\\n\\nAssistant:", that turn's text without leading blanks)."""
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:].lstrip()


def hh_pairs(path: str | Path, skipped: Counter | None = None) -> tuple[list[Trajectory], list[Pair]]:
    """Chosen (label 1) and rejected (label 0) trajectories of group `hh-{i}`, and their pairs.

    Pairs are skipped, and counted into `skipped` by reason when given, if
    either completion is empty (4 in the harmless-base test split) or if the
    two prompts differ (5 there: one side has an extra "Assistant:" inside its
    last turn, so there is no common context to compare the answers in).
    """
    trajectories: list[Trajectory] = []
    pairs: list[Pair] = []
    for i, (lineno, obj) in enumerate(iter_jsonl(path)):
        loc = where(path, lineno)
        sides = {}
        for key in ("chosen", "rejected"):
            if not isinstance(obj.get(key), str):
                raise ProbekitError(f"{loc}: missing or non-string field '{key}'")
            split = split_last_turn(obj[key])
            if split is None:
                raise ProbekitError(f"{loc}: '{key}' has no '\\n\\nAssistant:' turn")
            sides[key] = split
        (chosen_prompt, chosen), (rejected_prompt, rejected) = sides["chosen"], sides["rejected"]
        reason = "empty completion" if not (chosen.strip() and rejected.strip()) else None
        reason = reason or ("prompts differ" if chosen_prompt != rejected_prompt else None)
        if reason:
            if skipped is not None:
                skipped[reason] += 1
            continue
        for key, label in (("chosen", 1), ("rejected", 0)):
            trajectories.append(check_trajectory(Trajectory(f"hh-{i}-{key}", f"hh-{i}", chosen_prompt, sides[key][1], label=label), loc))
        pairs.append(Pair(f"hh-{i}-chosen", f"hh-{i}-rejected"))
    return require_records(trajectories, path, "pairs", skipped), pairs
