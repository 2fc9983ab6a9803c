"""Turn a trajectory into token ids with known completion offsets.

The prompt and the completion are tokenised *separately* and concatenated, so
the completion's first token index is exact (no BPE merge across the
boundary) and a character offset in the completion (`error_char`) maps to a
token index through the tokenizer's offset mapping. A completion that carries
its exact token ids (`meta.completion_token_ids`, written by `probekit
generate`) is read with those ids: sampled tokens need not be what the
tokenizer makes of their decoded text, and the states must be of the tokens
the model produced.

A completion is scored without the end-of-turn or EOS marker that closes it
(`end_of_turn_markers`): RL frameworks send completions ending in `<|im_end|>`
or `</s>` (OpenRLHF's queries, TRL's decoded samples), while training data and
`probekit generate` (which stops at EOS without keeping it) have none, so
keeping the marker would read the reward at a position the probe never saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from probekit.data.schema import Trajectory
from probekit.errors import ItemError, ProbekitError

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


_SENTINEL = "\u2063probekit-completion\u2063"  # text no real completion holds: where the template's assistant turn ends


def end_of_turn_markers(tokenizer, template: str) -> tuple[str, ...]:
    """The texts that may close a completion: the tokenizer's EOS (and pad) token and, with the chat template, the
    marker the template writes after an assistant turn (`<|im_end|>`, `<end_of_turn>`), longest first."""
    markers = {t for t in (tokenizer.eos_token, tokenizer.pad_token) if isinstance(t, str) and t}
    if template == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
        after = text.split(_SENTINEL, 1)[1].strip() if _SENTINEL in text else ""
        if after:
            markers.add(after)
    return tuple(sorted(markers, key=lambda m: (-len(m), m)))


def strip_end_of_turn(completion: str, markers: tuple[str, ...]) -> str:
    """`completion` without the markers (and the whitespace after them) that close it; unchanged when none does."""
    text = completion
    while True:
        tail = text.rstrip()
        marker = next((m for m in markers if tail.endswith(m)), None)
        if marker is None:
            return text
        text = tail[: -len(marker)]


def template_record(tokenizer, template: str) -> dict:
    """How prompts are rendered, for a store's manifest and a checkpoint: the template's name, the sha256 of the
    tokenizer's chat template (None without one), whether the tokenizer adds special tokens to a raw prompt, and
    the end-of-turn markers stripped from completions."""
    chat = getattr(tokenizer, "chat_template", None)
    chat = chat if isinstance(chat, str) else None
    return {
        "name": template,
        "chat_template_sha256": hashlib.sha256(chat.encode("utf-8")).hexdigest() if chat else None,
        "raw_prompt_special_tokens": template == "raw",
        "completion_special_tokens": False,
        "end_of_turn_markers": list(end_of_turn_markers(tokenizer, template)),
    }


RENDERED = "rendered"  # a chat prompt already rendered by its template (OpenRLHF's `prompts`): tokenised as it stands


def prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    """The prompt's token ids: through the chat template, as raw text with the tokenizer's special tokens, or
    (`RENDERED`) the chat template's output given as text, which tokenises to the ids "chat" makes of its prompt."""
    if template == RENDERED:
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
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


def encode(traj: Trajectory, tokenizer, template: str, max_length: int, end_markers: tuple[str, ...] = ()) -> Encoded:
    """Encode prompt + completion (without the `end_markers` that close it), keeping the last `max_length` tokens.

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
        comp = tokenizer(strip_end_of_turn(traj.completion, end_markers), add_special_tokens=False, return_offsets_mapping=True)
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


@dataclass(frozen=True)
class Rendering:
    """How text becomes token ids: the resolved template, the length limit and the markers stripped from completions."""

    template: str
    max_length: int
    end_markers: tuple[str, ...]

    @classmethod
    def of(cls, tokenizer, template: str, max_length: int) -> Rendering:
        return cls(template, int(max_length), end_of_turn_markers(tokenizer, template))


def encode_all(trajectories: Sequence[Trajectory], tokenizer, rendering: Rendering, source: object, first: int = 0) -> list[Encoded]:
    """Each trajectory's tokens; a bad one is one ProbekitError naming `source` and its record number (from `first` + 1)."""
    out = []
    for i, t in enumerate(trajectories):
        try:
            out.append(encode(t, tokenizer, rendering.template, rendering.max_length, rendering.end_markers))
        except ProbekitError as exc:
            raise ItemError(first + i, str(exc), "record", source) from None
    return out
