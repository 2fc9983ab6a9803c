"""Self-evaluation confidence of a step, the official code's c: the frozen model judges its own step in a few-shot choice prompt.

The official code (vaskarnathscale/goal-conditioned-rm at 46e3a96,
decoding/src/generate_code_llama.py `get_line_confidence`, prompts in
decoding/src/prompts/helpsteer.py `evaluate_prompt` / `choice_prefix`)
appends "# Is the above: / # (A) Helpful / # (B) Unhelpful / # The above
sentence is:" under the step, decodes greedily and reads, at the first
generated token that is A or B, the probability of A among the top-5 tokens
(tool.py `extract_confidence_score`; its division by P(A) + P(B) is commented
out). probekit ends the prompt at the "(" before the choice and reads the next
token's logits of the two choice letters: c = softmax over those two, i.e.
P(A) / (P(A) + P(B)), which is defined whatever else the model ranks first.

A prompt is a text file with the placeholders {prompt} (the prompt's text)
and {steps} (the completion so far, the candidate step last); the default
below is a math version of the official few-shot prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probekit.errors import ProbekitError
from probekit.extract.forward import position_ids_from_mask

CHOICES = ("A", "B")  # (A) = the step is good: its probability is c
PLACEHOLDERS = ("{prompt}", "{steps}")

DEFAULT_PROMPT = """Q: Tom has 3 apples and buys 2 more. How many apples does he have?
A:
Tom starts with 3 apples and buys 2, so he has 3 + 2 = 5 apples.
# Is the above step:
# (A) Correct
# (B) Incorrect
# The above step is: (A)

Q: A box holds 4 pens. How many pens are in 3 boxes?
A:
Each box holds 4 pens, so 3 boxes hold 4 + 3 = 7 pens.
# Is the above step:
# (A) Correct
# (B) Incorrect
# The above step is: (B)

Q: Sara had 10 stickers and gave away 4. How many are left?
A:
She gave away 4 of 10, so 10 - 4 = 6 are left.
# Is the above step:
# (A) Correct
# (B) Incorrect
# The above step is: (A)

Q: {prompt}
A:
{steps}
# Is the above step:
# (A) Correct
# (B) Incorrect
# The above step is: ("""


def read_prompt(path: str | None) -> str:
    """The self-evaluation prompt: the default, or the text of `path`, which must hold both placeholders."""
    if path is None:
        return DEFAULT_PROMPT
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbekitError(f"{path}: cannot read the self-evaluation prompt ({exc.__class__.__name__}: {exc})") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ProbekitError(f"{path}: the self-evaluation prompt lacks the placeholder {' and '.join(missing)}")
    return text


def fill(template: str, prompt: str, steps: str) -> str:
    """The prompt for one candidate (plain replacement: a few-shot text may hold other braces)."""
    return template.replace("{prompt}", prompt.strip()).replace("{steps}", steps.rstrip("\n"))


def choice_ids(tokenizer) -> tuple[int, int]:
    """The token ids of the two choice letters; each must be one token."""
    ids = []
    for letter in CHOICES:
        toks = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ProbekitError(f"--self-eval: the tokenizer splits the choice '{letter}' into {len(toks)} tokens; it must be one")
        ids.append(toks[0])
    return ids[0], ids[1]


@torch.inference_mode()
def confidence(loaded, texts: list[str], batch_size: int = 16) -> np.ndarray:
    """c of each filled prompt: softmax over the logits of the choices (A, B) at its next token, A's share."""
    tokenizer, model, device = loaded.tokenizer, loaded.model, loaded.device
    a, b = choice_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.empty(len(texts), np.float64)
    for start in range(0, len(texts), batch_size):
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start:start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # left padding: every row ends at -1
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        pair = torch.softmax(logits[:, [a, b]].float(), dim=-1)[:, 0]
        out[start:start + len(rows)] = pair.cpu().numpy()
    return out
