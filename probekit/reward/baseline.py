"""Per-prompt reward baselines for contrastive rewards (Shen et al. 2024, "Improving RLHF Using Contrastive Rewards").

The paper's reward for PPO is r_CR(x, y) = r(x, y) − (1/k) Σ_j r(x, y_j), where
y_1..y_k are baseline responses sampled offline, once per prompt (from the SFT
policy): one penalty per prompt, shared by every policy sample of that prompt,
with no division by a standard deviation. A baseline folder holds, for each
prompt, the mean (and, for reference, the std) of the probe's rewards of its k
baseline responses:

    baseline.json     {"format": "probekit-baseline", "checkpoint_fingerprint", "k", "n_prompts", "source", ...}
    baselines.jsonl   one {"prompt_key", "prompt", "k", "mean", "std", "rewards"} per prompt

Prompts are keyed by their rendered token ids (`probekit.reward.reward_probe.prompt_key`),
so a prompt sent as plain text and the same prompt already rendered by the chat
template find the same baseline. A baseline means something only under the
probe that scored it: its folder records the checkpoint's fingerprint, and a
probe with another refuses it.

A prompt with no baseline is an error by default (`on_missing="error"`): a
silently unpenalised prompt would get a higher reward than its neighbours for
no reason. `on_missing="zero"` scores it with no penalty and says so per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from probekit.errors import ItemError, ProbekitError
from probekit.io import iter_jsonl, read_validated, validated, where, write_json, write_jsonl

FORMAT = "probekit-baseline"
RECORD = "baseline.json"
TABLE = "baselines.jsonl"
FILES = (RECORD, TABLE)
ON_MISSING = ("error", "zero")


class BaselineRecord(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    format: str
    checkpoint_fingerprint: str
    k: int = Field(ge=1)
    n_prompts: int = Field(ge=0)
    source: str


class PromptBaseline(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    prompt_key: str = Field(min_length=1)
    prompt: Optional[str] = None
    k: int = Field(ge=1)
    mean: float
    std: float = Field(ge=0)
    rewards: list[float] = Field(min_length=1)


@dataclass
class Baselines:
    """The per-prompt baseline means of one probe, looked up by prompt key."""

    path: Path | None
    fingerprint: str
    means: dict[str, float]
    record: dict

    def check_probe(self, fingerprint: str, ckpt_path: object) -> None:
        if fingerprint != self.fingerprint:
            raise ProbekitError(f"{self.path}: baselines were scored by another probe (fingerprint {self.fingerprint[:12]}), "
                                f"not by checkpoint {ckpt_path} ({fingerprint[:12]}); run `probekit baseline --ckpt {ckpt_path}`")

    def require(self, keys: list[str], on_missing: str = "error") -> np.ndarray:
        """bool [n]: which prompt keys have a baseline; with on_missing="error" a missing one is one ProbekitError."""
        check_on_missing(on_missing)
        found = np.asarray([k in self.means for k in keys], dtype=bool)
        if on_missing == "error" and not found.all():
            first = int(np.flatnonzero(~found)[0])
            missing = len({k for k, ok in zip(keys, found) if not ok})
            raise ItemError(first, f"its prompt has no baseline in {self.path} ({missing} of the {len(set(keys))} distinct prompts of "
                                   f"these items have none); add them with `probekit baseline`, or score with --on-missing zero "
                                   f"(on_missing='zero' in Python)")
        return found

    def subtract(self, rewards: np.ndarray, keys: list[str], on_missing: str = "error") -> tuple[np.ndarray, np.ndarray]:
        """(contrastive rewards, bool: the prompt had a baseline) for rewards of prompts with the given keys."""
        found = self.require(keys, on_missing)
        means = np.asarray([self.means.get(k, 0.0) for k in keys], dtype=np.float32)
        return (np.asarray(rewards, np.float32) - means).astype(np.float32), found


def check_on_missing(on_missing: str) -> None:
    if on_missing not in ON_MISSING:
        raise ProbekitError(f"on_missing must be one of {', '.join(ON_MISSING)}, got '{on_missing}'")


def baseline_entries(keys: list[str], prompts: list[str], rewards: np.ndarray) -> list[dict]:
    """One table row per distinct prompt key: the mean and std of its rewards (rewards of k responses each)."""
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    rows = []
    for key, items in by_key.items():
        r = np.asarray(rewards, np.float64)[items]
        if not np.isfinite(r).all():
            raise ProbekitError(f"prompt {prompts[items[0]][:40]!r}: a baseline response has a non-finite reward")
        rows.append({"prompt_key": key, "prompt": prompts[items[0]], "k": len(items), "mean": float(r.mean()),
                     "std": float(r.std()), "rewards": [float(x) for x in r]})
    return rows


def write_baselines(out, fingerprint: str, rows: list[dict], source: str, **info) -> None:
    """Write a baseline folder into a claimed output folder (`probekit.outputs.OutputDir`), the record last."""
    ks = sorted({row["k"] for row in rows})
    record = {"format": FORMAT, "checkpoint_fingerprint": fingerprint, "k": ks[-1] if ks else 1, "k_min": ks[0] if ks else 0,
              "n_prompts": len(rows), "source": source, **info}
    validated(BaselineRecord, record, out.path / RECORD)
    out.file(RECORD).unlink(missing_ok=True)
    write_jsonl(out.file(TABLE), rows)
    write_json(out.file(RECORD), record)


def read_baselines(path: str | Path) -> Baselines:
    """A baseline folder written by `write_baselines`; anything else is one ProbekitError naming the file and line."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise ProbekitError(f"{path}: not a baseline folder (no {', '.join(missing)}); make one with `probekit baseline`")
    record = read_validated(path / RECORD, BaselineRecord)
    if record.format != FORMAT:
        raise ProbekitError(f"{path / RECORD}: format is '{record.format}', not '{FORMAT}'")
    means: dict[str, float] = {}
    for n, obj in iter_jsonl(path / TABLE):
        row = validated(PromptBaseline, obj, where(path / TABLE, n))
        if not np.isfinite(row.mean):
            raise ProbekitError(f"{where(path / TABLE, n)}: mean is not finite")
        means[row.prompt_key] = row.mean
    if len(means) != record.n_prompts:
        raise ProbekitError(f"{path / TABLE}: {len(means)} prompts, but {RECORD} says {record.n_prompts}")
    return Baselines(path=path, fingerprint=record.checkpoint_fingerprint, means=means, record=record.model_dump())
