"""The server's two request formats, checked field by field, and their answers.

**OpenRLHF's remote reward model** (POST /get_reward), as its own server speaks it
(`openrlhf/cli/serve_rm.py`, https://github.com/OpenRLHF/OpenRLHF, read at commit
3c3be62 of 2026-08-13) and its trainer sends it (`openrlhf/utils/agent.py`,
`SingleTurnAgentExecutor._fetch_rewards_via_http`):

    {"query": [full text], "prompts": [prompt], "labels": [label]}
    -> {"rewards": [float], "scores": [float], "extra_logs": {name: [float]}}

Each query is the decoded prompt + response tokens (`skip_special_tokens=False`,
so it usually ends in the end-of-turn/EOS marker) and each prompt the chat
template's output text, which the query starts with. The trainer uses `rewards`
as the RL reward and `scores` for dynamic filtering and logging (`scores`
falling back to `rewards`), and logs every `extra_logs` entry per sample; it
ignores other keys, and probekit ignores `labels` (the probe's goal is its own).
Here `rewards` is the contrastive reward when the server has a baseline
(Shen et al. 2024's reward for PPO) and the probe's reward otherwise; `scores`
is always the probe's reward; `extra_logs` holds `probe_reward`,
`contrastive_reward` (with a baseline) and `truncated_tokens`.

**Plain JSON** (POST /score), either prompts and completions or chat messages:

    {"prompts": [str], "completions": [str], "rendered": false}
    {"messages": [[{"role", "content"}, ..., {"role": "assistant", "content"}]]}
    -> {"rewards": [float], "completion_tokens": [int], "truncated_tokens": [int], "n_truncated": int,
        "contrastive_rewards": [float], "has_baseline": [bool]}          (the last two with a baseline)

`rendered: true` says the prompts are already the chat template's output. A
text longer than the checkpoint's max length loses tokens from the prompt's
left side, as in training, and is counted in `truncated_tokens`/`n_truncated`.

Anything else is a `ClientError`: a 4xx status and one line naming the field or item.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from probekit.serve.scoring import JobRewards, ScoreJob


class ClientError(Exception):
    """A request the server cannot score as sent: its HTTP status (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object; anything else is a 400 saying what it is."""
    if not body.strip():
        raise ClientError(400, "empty body: send a JSON object")
    try:
        obj = json.loads(body.decode("utf-8"))  # JSON on the wire is UTF-8 (RFC 8259); json.loads would guess UTF-16 too
    except UnicodeDecodeError:
        raise ClientError(400, "body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ClientError(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ClientError(400, "body is not JSON this server reads: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ClientError(400, f"body must be a JSON object, not {_kind(obj)}")
    return obj


def openrlhf_job(body: dict) -> ScoreJob:
    """The job of a /get_reward body: each query split into its prompt and the completion after it."""
    queries, prompts = _strings(body, "query"), _strings(body, "prompts")
    _same_length("query", queries, "prompts", prompts)
    labels = body.get("labels")
    if labels is not None:
        if not isinstance(labels, list):
            raise ClientError(400, f"'labels' must be a list (or absent), not {_kind(labels)}")
        _same_length("query", queries, "labels", labels)
    completions = []
    for i, (query, prompt) in enumerate(zip(queries, prompts)):
        if not query.startswith(prompt):
            raise ClientError(400, f"query[{i}] does not start with prompts[{i}]: send the prompt the query was generated from")
        completions.append(query[len(prompt):])
    return ScoreJob(prompts, completions, rendered=True)


SCORE_FIELDS = ("prompts", "completions", "rendered", "messages")


def score_job(body: dict, split_messages: Callable[[list], tuple[list[str], list[str]]], chat: bool) -> ScoreJob:
    """The job of a /score body; `split_messages` turns conversations into (prompts, completions), rendered when `chat`."""
    unknown = sorted(set(body) - set(SCORE_FIELDS))
    if unknown:
        raise ClientError(400, f"unknown field '{unknown[0]}': /score takes {', '.join(SCORE_FIELDS)}")
    if "messages" in body:
        if "prompts" in body or "completions" in body:
            raise ClientError(400, "send either 'messages' or 'prompts' and 'completions', not both")
        conversations = body["messages"]
        if not isinstance(conversations, list):
            raise ClientError(400, f"'messages' must be a list of conversations, not {_kind(conversations)}")
        for i, conv in enumerate(conversations):  # the structure is split_messages' to check, the text is checked here
            for m in conv if isinstance(conv, list) else ():
                for key in ("role", "content"):
                    if isinstance(m, dict) and isinstance(m.get(key), str):
                        _text(m[key], f"messages[{i}]: a message's '{key}'")
        prompts, completions = split_messages(conversations)
        return ScoreJob(prompts, completions, rendered=chat)
    prompts, completions = _strings(body, "prompts"), _strings(body, "completions")
    _same_length("prompts", prompts, "completions", completions)
    rendered = body.get("rendered", False)
    if not isinstance(rendered, bool):
        raise ClientError(400, f"'rendered' must be true or false, not {_kind(rendered)}")
    return ScoreJob(prompts, completions, rendered=rendered)


def openrlhf_response(r: JobRewards) -> dict:
    raw = _floats(r.rewards)
    logs: dict[str, list] = {"probe_reward": raw, "truncated_tokens": r.truncated_tokens.tolist()}
    rewards = raw
    if r.contrastive is not None:
        rewards = logs["contrastive_reward"] = _floats(r.contrastive)
    return {"rewards": rewards, "scores": raw, "extra_logs": logs, "n_truncated": r.n_truncated}


def score_response(r: JobRewards) -> dict:
    out: dict[str, Any] = {"rewards": _floats(r.rewards), "completion_tokens": r.completion_tokens.tolist(),
                           "truncated_tokens": r.truncated_tokens.tolist(), "n_truncated": r.n_truncated}
    if r.contrastive is not None:
        out["contrastive_rewards"] = _floats(r.contrastive)
        out["has_baseline"] = r.has_baseline.tolist()
    return out


# ---- checks ----------------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """A JSON value's type as a client would name it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _text(value: Any, where: str) -> None:
    """A string the tokenizer can take: not a lone surrogate (`"\\ud800"` is valid JSON but no Unicode text)."""
    if not isinstance(value, str):
        raise ClientError(400, f"{where} must be a string, not {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientError(400, f"{where} is not valid Unicode text (it holds a lone surrogate escape)") from None


def _strings(body: dict, name: str) -> list[str]:
    if name not in body:
        raise ClientError(400, f"missing field '{name}'")
    values = body[name]
    if not isinstance(values, list):
        raise ClientError(400, f"'{name}' must be a list of strings, not {_kind(values)}")
    for i, v in enumerate(values):
        _text(v, f"{name}[{i}]")
    return values


def _same_length(a: str, xs: list, b: str, ys: list) -> None:
    if len(xs) != len(ys):
        raise ClientError(400, f"'{a}' has {len(xs)} item{'s' * (len(xs) != 1)} but '{b}' has {len(ys)}: send one per item")


def _floats(values) -> list[float]:
    return [float(v) for v in values]
