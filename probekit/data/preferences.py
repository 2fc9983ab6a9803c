"""TRL's preference format (`prompt`/`chosen`/`rejected`) as trajectories and pairs.

TRL's preference data sets (DPO, reward modelling; https://huggingface.co/docs/trl/dataset_formats) come in four
shapes, all read here, one JSON record per line:

    standard, explicit prompt        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    standard, implicit prompt        {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    conversational, explicit prompt  {"prompt": [{"role": "user", "content": ...}],
                                      "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}
    conversational, implicit prompt  {"chosen": [user, assistant], "rejected": [user, assistant]}

An implicit prompt is what `trl.extract_prompt` makes of it: the longest common prefix of the two (messages for
conversations; characters for strings, backing off one space so the completions keep their leading blank). Each
record becomes a chosen (label 1) and a rejected (label 0) trajectory of group `pref-{i}` (ids `pref-{i}-chosen`,
`pref-{i}-rejected`) and one pair, with the record's `margin` (a number, as TRL's reward trainer reads it) kept on
the pair; other fields go into both trajectories' `meta`.

A trajectory's prompt is one text that `extract` renders as the user's message (`--template chat`) or as is, so a
conversational prompt of one user message becomes that message's text; a longer one (a system message, earlier
turns) becomes an HH-RLHF-style transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:", the shape
`probekit data hh` writes), with the messages themselves kept in `meta.prompt_messages`. Each completion is one
assistant message. A record with identical chosen and rejected completions orders nothing and is skipped and
counted; any other bad record stops the conversion with its file and line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from probekit.data.schema import Pair, Trajectory, check_trajectory, pair_margin, require_records
from probekit.errors import ProbekitError, where
from probekit.io import iter_jsonl

FIELDS = ("prompt", "chosen", "rejected", "margin")
ROLES = {"user": "Human", "assistant": "Assistant"}  # the HH-RLHF transcript's speaker names; other roles are capitalised


def preference_pairs(path: str | Path, skipped: Counter | None = None) -> tuple[list[Trajectory], list[Pair]]:
    """Trajectories and pairs of a TRL preference file (see the module docstring); `skipped` counts ties by reason."""
    trajectories: list[Trajectory] = []
    pairs: list[Pair] = []
    for i, (lineno, obj) in enumerate(iter_jsonl(path)):
        loc = where(path, lineno)
        prompt, chosen, rejected, messages = split_preference(obj, loc)
        if chosen == rejected:
            if skipped is not None:
                skipped["identical completions"] += 1
            continue
        meta = {k: v for k, v in obj.items() if k not in FIELDS}
        if messages is not None:
            meta["prompt_messages"] = messages
        group = f"pref-{i}"
        for side, text, label in (("chosen", chosen, 1), ("rejected", rejected, 0)):
            trajectories.append(check_trajectory(Trajectory(f"{group}-{side}", group, prompt, text, label=label, meta=meta), loc))
        pairs.append(Pair(f"{group}-chosen", f"{group}-rejected", margin=pair_margin(obj, loc)))
    return require_records(trajectories, path, "preference records", skipped), pairs


def split_preference(obj: dict, loc: str) -> tuple[str, str, str, list[dict] | None]:
    """(prompt text, chosen text, rejected text, the prompt's messages when it was a conversation of more than one)."""
    for key in ("chosen", "rejected"):
        if key not in obj or obj[key] is None:
            raise ProbekitError(f"{loc}: missing field '{key}' (TRL's preference format has 'chosen' and 'rejected')")
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str) and (prompt is None or isinstance(prompt, str)):
        if prompt is None:
            prompt, chosen, rejected = _common_text_prefix(chosen, rejected, loc)
        return prompt, chosen, rejected, None
    if isinstance(chosen, str) or isinstance(rejected, str) or isinstance(prompt, str):
        raise ProbekitError(f"{loc}: 'prompt', 'chosen' and 'rejected' must all be strings or all be message lists, not a mix")
    chosen, rejected = _messages(chosen, "chosen", loc), _messages(rejected, "rejected", loc)
    if prompt is None:
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
    else:
        prompt = _messages(prompt, "prompt", loc)
    if not prompt:
        raise ProbekitError(f"{loc}: no prompt: give a 'prompt' field, or 'chosen' and 'rejected' conversations that start with the same messages")
    return _prompt_text(prompt), _reply(chosen, "chosen", loc), _reply(rejected, "rejected", loc), (prompt if len(prompt) > 1 else None)


def _common_text_prefix(chosen: str, rejected: str, loc: str) -> tuple[str, str, str]:
    """`trl.extract_prompt` on strings: the longest common prefix, less a space it ends in (the completions keep it)."""
    cut = 0
    while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
        cut += 1
    if cut == min(len(chosen), len(rejected)):
        raise ProbekitError(f"{loc}: 'chosen' and 'rejected' share no prompt to split off (one is the start of the other); give a 'prompt' field")
    if cut and chosen[cut - 1] == " ":
        cut -= 1
    if not chosen[:cut].strip():
        raise ProbekitError(f"{loc}: 'chosen' and 'rejected' differ from their first word, so no prompt is implicit; give a 'prompt' field")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _messages(value: Any, key: str, loc: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ProbekitError(f"{loc}: field '{key}' must be a string or a non-empty list of {{role, content}} messages")
    for n, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ProbekitError(f"{loc}: '{key}' message {n} must be an object with string 'role' and 'content'")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _reply(messages: list[dict], key: str, loc: str) -> str:
    """The one assistant message a completion is."""
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        what = "nothing" if not messages else f"{len(messages)} messages" if len(messages) > 1 else f"a '{messages[0]['role']}' message"
        raise ProbekitError(f"{loc}: '{key}' must be one assistant message after the prompt, got {what}")
    return messages[0]["content"]


def _prompt_text(messages: list[dict]) -> str:
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    turns = "".join(f"\n\n{ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages)
    return f"{turns}\n\nAssistant:"
