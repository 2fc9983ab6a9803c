"""`probekit score`: rewards of every completion in a JSONL file, streamed in chunks, written as JSONL plus a summary.

One record per line, in any of the formats other tools write:

* probekit trajectories (`data/README.md`): {"id", "prompt", "completion", ...};
* TRL's prompt-completion format, plain ({"prompt": str, "completion": str}) or
  conversational ({"prompt": [messages], "completion": [one assistant message]});
* chat data: {"messages": [..., {"role": "assistant", "content": ...}]}, the last message the completion.

Every record becomes a conversation and goes through `RewardProbe.split_messages`,
so a plain prompt and the same prompt as a user message score alike. Records are
read, scored and written `chunk` at a time: memory holds one chunk of states,
whatever the file's size.

Outputs (one set: `probekit.outputs.OutputDir.commit_set`):
    scores.jsonl  {"record", "id", "reward", "completion_tokens", "truncated_tokens"}, with a baseline
                  "contrastive_reward" and "has_baseline", with --q "q", "positions" and "tokens"
    summary.json  counts, reward statistics, truncation, time and the checkpoint's fingerprint
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from probekit.errors import ItemError, ProbekitError
from probekit.io import iter_jsonl, sha256_file, where, write_json, write_jsonl
from probekit.progress import Progress, or_null
from probekit.reward.reward_probe import RewardProbe, ScoreResult

OUTPUTS = ("scores.jsonl", "summary.json")
DEFAULT_CHUNK = 256


@dataclass
class Item:
    record: int  # line number in the input file
    id: str
    conversation: list[dict]


def _messages(value: object, loc: str, field: str) -> list[dict]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise ProbekitError(f"{loc}: '{field}' must be a string or a non-empty list of {{role, content}} messages")
    return value


def parse_item(obj: dict, loc: str, record: int) -> Item:
    """One input record as a conversation (see the module docstring); anything else is one error naming `loc`."""
    rid = obj.get("id", record)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise ProbekitError(f"{loc}: 'id' must be a string or a number")
    if "messages" in obj:
        conv = _messages(obj["messages"], loc, "messages")
    elif "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            answer = _messages(completion, loc, "completion")
            if len(answer) != 1:
                raise ProbekitError(f"{loc}: a conversational 'completion' must be one assistant message, got {len(answer)}")
            conv = [*_messages(prompt, loc, "prompt"), *answer]
        else:
            raise ProbekitError(f"{loc}: 'prompt' and 'completion' must both be strings or both be message lists")
    else:
        raise ProbekitError(f"{loc}: needs 'prompt' and 'completion' (trajectories, TRL prompt-completion) or 'messages' (chat)")
    return Item(record=record, id=str(rid), conversation=conv)


def iter_items(path: Path) -> Iterator[Item]:
    for lineno, obj in iter_jsonl(path):
        yield parse_item(obj, where(path, lineno), lineno)


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_file(rp: RewardProbe, path: str | Path, out, *, q: bool = False, goal: str = "mean", chunk: int = DEFAULT_CHUNK,
               batch_size: int | None = None, max_batch_tokens: int | None = None, progress: Progress | None = None) -> dict:
    """Score every record of `path` into the claimed output folder `out` (`probekit.outputs.OutputDir`); return the summary."""
    path = Path(path)
    if chunk < 1:
        raise ProbekitError(f"--chunk must be >= 1, got {chunk}")
    n_records = sum(1 for _ in iter_items(path))  # a malformed record fails now, before any work, and the total is known
    if n_records == 0:
        raise ProbekitError(f"{path}: no records to score")
    t0 = time.perf_counter()
    stats = _Stats()
    task = or_null(progress).task("score", n_records, "records")

    def rows() -> Iterator[dict]:  # scored a chunk at a time as the writer asks for them
        for items in _chunks(iter_items(path), chunk):
            try:
                prompts, completions = rp.split_messages([i.conversation for i in items])
                result = rp.score(prompts, completions, q=q, goal=goal, rendered=True, batch_size=batch_size or chunk,
                                  max_batch_tokens=max_batch_tokens, ids=[i.id for i in items])
            except ItemError as exc:  # the API's index is within the chunk: name the file's line instead
                if 0 <= exc.index < len(items):
                    raise ProbekitError(f"{where(path, items[exc.index].record)}: {exc.detail}") from None
                raise ProbekitError(f"{path}: {exc}") from None
            except ProbekitError as exc:
                raise ProbekitError(f"{path}: {exc}") from None
            yield from _rows(items, result)
            stats.add(result)
            task.advance(len(items))

    try:
        write_jsonl(out.file("scores.jsonl"), rows())
    finally:
        task.close()
    summary = {**stats.summary(), "input": str(path), "input_sha256": sha256_file(path), "checkpoint": str(rp.checkpoint.path),
               "checkpoint_fingerprint": rp.checkpoint.fingerprint, "model": rp.loaded.name, "template": rp.spec.template,
               "max_length": rp.spec.max_length, "baseline": None if rp.baseline is None else str(rp.baseline.path),
               "q": q, "goal": goal if q else None, "seconds": round(time.perf_counter() - t0, 3)}
    summary["records_per_second"] = round(stats.n / max(summary["seconds"], 1e-9), 2)
    write_json(out.file("summary.json"), summary)
    return summary


def _rows(items: list[Item], result: ScoreResult) -> Iterator[dict]:
    for j, item in enumerate(items):
        row = {"record": item.record, "id": item.id, "reward": float(result.rewards[j]),
               "completion_tokens": int(result.completion_tokens[j]), "truncated_tokens": int(result.truncated_tokens[j])}
        if result.contrastive is not None:
            row["contrastive_reward"] = float(result.contrastive[j])
            row["has_baseline"] = bool(result.has_baseline[j])
        if result.q is not None:
            row["q"] = [round(float(x), 6) for x in result.q[j]]
            row["positions"] = [int(p) for p in result.positions[j]]
            row["tokens"] = result.tokens[j]
        yield row


class _Stats:
    """Reward statistics of what was scored: 4 bytes a record are kept (the median needs them), not the records."""

    def __init__(self) -> None:
        self.rewards: list[np.ndarray] = []
        self.contrastive: list[np.ndarray] = []
        self.n_truncated = self.n_without_baseline = self.n = self.tokens = 0

    def add(self, result: ScoreResult) -> None:
        self.n += len(result)
        self.rewards.append(result.rewards)
        self.tokens += int(result.completion_tokens.sum())
        self.n_truncated += result.n_truncated
        if result.contrastive is not None:
            self.contrastive.append(result.contrastive)
            self.n_without_baseline += int((~result.has_baseline).sum())

    def summary(self) -> dict:
        out = {"n_records": self.n, "n_truncated": self.n_truncated, "completion_tokens": self.tokens,
               "reward": _describe(np.concatenate(self.rewards)) if self.rewards else None}
        if self.contrastive:
            out["contrastive_reward"] = _describe(np.concatenate(self.contrastive))
            out["n_without_baseline"] = self.n_without_baseline
        return out


def _describe(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "p50": float(np.median(x)), "max": float(x.max())}
