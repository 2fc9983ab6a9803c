"""Turn a trajectory into token ids with known completion offsets.

The prompt and the completion are tokenised *separately* and concatenated, so
the completion's first token index is exact (no BPE merge across the
boundary) and a character offset in the completion (`error_char`) maps to a
token index through the tokenizer's offset mapping. A completion that carries
its exact token ids (`meta.completion_token_ids`, written by `probekit
generate`) is read with those ids: sampled tokens need not be what the
tokenizer makes of their decoded text, and the states must be of the tokens
the model produced.
"""

from __future__ import annotations

from dataclasses import dataclass

from probekit.data.schema import Trajectory
from probekit.errors import ProbekitError

TEMPLATES = ("auto", "chat", "raw")
COMPLETION_IDS = "completion_token_ids"  # meta field: the completion's exact token ids (written by `probekit generate`)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one (possibly truncated) trajectory."""

    input_ids: list[int]
    completion_start: int  # index in input_ids of the first kept completion token
    completion_tokens: int  # tokens of the full completion, before truncation
    truncated_tokens: int  # tokens cut from the left (prompt first, then completion)
    completion_cut: int  # of those, completion tokens cut (kept ones start at this position)
    error_token: int  # index in the full completion of the first wrong token, -1 if none


def resolve_template(template: str, tokenizer) -> str:
    """'auto' is 'chat' when the tokenizer has a chat template (instruct models), else 'raw'."""
    if template not in TEMPLATES:
        raise ProbekitError(f"unknown template '{template}' (choose from {', '.join(TEMPLATES)})")
    if template == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ProbekitError("--template chat: this tokenizer has no chat template; use --template raw")
    return template


def prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    if template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def _given_ids(traj: Trajectory, ids: object, vocab_size: int) -> list[int]:
    """The completion's token ids as recorded by `probekit generate` (decoding then re-encoding need not give them back)."""
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
        raise ProbekitError(f"trajectory '{traj.id}': meta.{COMPLETION_IDS} must be a list of token ids below the vocabulary size {vocab_size}")
    if traj.error_char is not None:
        raise ProbekitError(f"trajectory '{traj.id}': error_char cannot be mapped onto given meta.{COMPLETION_IDS}; drop one of them")
    return list(ids)


def encode(traj: Trajectory, tokenizer, template: str, max_length: int) -> Encoded:
    """Encode prompt + completion, keeping the last `max_length` tokens.

    Truncation cuts the prompt's left side first (the reward is read at the
    completion's end, so the end must survive); only when the completion alone
    is longer than `max_length` is its beginning cut too.
    """
    p_ids = prompt_ids(tokenizer, traj.prompt, template)
    given = traj.meta.get(COMPLETION_IDS)
    error_token = -1
    if given is not None:
        c_ids = _given_ids(traj, given, len(tokenizer))
    else:
        comp = tokenizer(traj.completion, add_special_tokens=False, return_offsets_mapping=True)
        c_ids = list(comp["input_ids"])
        if traj.error_char is not None and c_ids:
            error_token = next((i for i, (_, end) in enumerate(comp["offset_mapping"]) if end > traj.error_char), len(c_ids) - 1)
    if not c_ids:
        raise ProbekitError(f"trajectory '{traj.id}': completion encodes to zero tokens")
    cut = max(0, len(p_ids) + len(c_ids) - max_length)
    prompt_cut = min(cut, len(p_ids))
    completion_cut = cut - prompt_cut
    ids = p_ids[prompt_cut:] + c_ids[completion_cut:]
    return Encoded(
        input_ids=ids,
        completion_start=len(p_ids) - prompt_cut,
        completion_tokens=len(c_ids),
        truncated_tokens=cut,
        completion_cut=completion_cut,
        error_token=error_token,
    )
