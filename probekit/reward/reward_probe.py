"""`RewardProbe`: a fitted probe as a reward model, text in, rewards (and per-token Q-values) out.

    from probekit import RewardProbe
    rp = RewardProbe.load("runs/probe", device="auto")
    result = rp.score(prompts, completions)          # result.rewards: float32 [n]
    result = rp.score(prompts, completions, q=True)  # result.q[i]: Q per scored token, result.tokens[i] their text

The checkpoint says how text becomes its inputs (`probekit.probe.inputs`):
the frozen model (loaded in the dtype it computed in, refused if it is another
model), the template, the length limit and the storage dtype. States come from
extraction's own forward (`probekit.extract.live.live_states`: length-bucketed,
padding-safe batches, prompts shared by several completions run once, the
model stopped after the probe's deepest layer) and rewards from the one scorer
(`probekit.probe.scoring`), so a trajectory of the training store gets the
reward `probekit eval` gives it, within the storage dtype's rounding.

A completion that ends with the template's end-of-turn or EOS marker (as RL
frameworks send them) gets the reward it gets without it
(`probekit.extract.render.strip_end_of_turn`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from probekit.data.schema import Trajectory
from probekit.errors import ItemError, ProbekitError
from probekit.extract.live import live_states
from probekit.extract.plan import parse_positions
from probekit.extract.render import RENDERED, Encoded, Rendering, encode_all, prompt_ids
from probekit.generate.custom_goals import read_goal
from probekit.models import LoadedModel, load_model
from probekit.probe.checkpoint import Checkpoint, check_model, load_checkpoint
from probekit.probe.inputs import InputSpec, input_spec
from probekit.probe.scoring import Scorer, iter_scores
from probekit.progress import Progress, or_null
from probekit.reward.baseline import Baselines, check_on_missing, read_baselines
from probekit.reward.sharing import checkpoint_folder, save_probe
from probekit.store import ShardBlock

# Texts per chunk: bounds the states held at once (all positions when Q is asked for). Extraction's shard size, so the
# length buckets inside a chunk pad as little as extract's do (64 ran 0.85x extract's throughput, measured here).
DEFAULT_BATCH_SIZE = 512


@dataclass
class ScoreResult:
    """Rewards of n completions and, when asked for, their per-token Q-values.

    `rewards` is the probe's reward as trained (an unbounded logit: a
    Bradley-Terry score, meaningful in differences); `q[i]` the cosine of each
    scored token's representation to the goal, at completion positions
    `positions[i]`, whose text is `tokens[i]`. `truncated_tokens[i]` counts the
    tokens cut to fit the checkpoint's max length (the prompt's left side first).
    """

    rewards: np.ndarray
    completion_tokens: np.ndarray
    truncated_tokens: np.ndarray
    prompt_keys: list[str]
    q: list[np.ndarray] | None = None
    positions: list[np.ndarray] | None = None
    tokens: list[list[str]] | None = None
    goal: str | None = None
    contrastive: np.ndarray | None = field(default=None)  # rewards minus each prompt's baseline mean (Shen et al. 2024)
    has_baseline: np.ndarray | None = None  # bool [n]: the prompt had a baseline (False only with on_missing="zero")

    @property
    def n_truncated(self) -> int:
        return int((self.truncated_tokens > 0).sum())

    def __len__(self) -> int:
        return len(self.rewards)


def prompt_key(ids: Sequence[int]) -> str:
    """The key of a rendered prompt: the sha256 of its token ids, so a chat prompt and the same prompt already rendered
    by the template (OpenRLHF sends those) share it."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class RewardProbe:
    """A checkpoint with the frozen model it reads; see the module docstring."""

    def __init__(self, ckpt: Checkpoint, loaded: LoadedModel, spec: InputSpec, baseline: str | Path | Baselines | None = None,
                 on_missing: str = "error"):
        check_model(ckpt, loaded)
        _check_tokenizer(ckpt, spec, loaded)
        self.checkpoint, self.loaded, self.spec = ckpt, loaded, spec
        self.rendering = Rendering.of(loaded.tokenizer, spec.template, spec.max_length or _NO_LIMIT)
        self._scorers: dict[str, Scorer] = {}
        self.baseline: Baselines | None = None
        self.on_missing = on_missing
        if baseline is not None:
            self.set_baseline(baseline, on_missing)

    @classmethod
    def load(cls, ckpt: str | Path | Checkpoint, *, device: str = "auto", model: str | LoadedModel | None = None,
             dtype: str | None = None, store: str | Path | None = None, baseline: str | Path | Baselines | None = None,
             on_missing: str = "error", revision: str | None = None) -> RewardProbe:
        """The probe in `ckpt` (a checkpoint folder, or a Hub id "org/name" downloaded at `revision`:
        `probekit.reward.sharing`) with the frozen model its checkpoint records, on `device`.

        `model` replaces the recorded model's location (a folder or file moved since; it must be the same
        weights) or is an already loaded model; `dtype` the recorded compute dtype (rewards then differ by
        that dtype's rounding); `store` is the training store, for checkpoints older than the "inputs" record.
        With `baseline` (a `probekit baseline` folder) every result also has contrastive rewards
        (`probekit.reward.baseline`; `on_missing` says what a prompt without a baseline gets).
        """
        ckpt = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(checkpoint_folder(ckpt, revision))
        spec = input_spec(ckpt, store)
        baselines = read_baselines(baseline) if isinstance(baseline, (str, Path)) else baseline
        if baselines is not None:
            baselines.check_probe(ckpt.fingerprint, ckpt.path)  # before the model loads: a wrong folder fails in a second
        if isinstance(model, LoadedModel):
            return cls(ckpt, model, spec, baselines, on_missing)
        name = model or spec.model.name
        try:
            loaded = load_model(name, device=device, dtype=dtype or spec.compute_dtype)
        except ProbekitError as exc:
            hint = "" if model else " (pass model=PATH, or --model, where it lives on this machine)"
            raise ProbekitError(f"checkpoint {ckpt.path} reads model '{name}': {exc}{hint}") from None
        return cls(ckpt, loaded, spec, baselines, on_missing)

    def set_baseline(self, baseline: str | Path | Baselines | None, on_missing: str = "error") -> None:
        """Subtract each prompt's baseline mean from now on (None: raw rewards only)."""
        baselines = read_baselines(baseline) if isinstance(baseline, (str, Path)) else baseline
        if baselines is not None:
            baselines.check_probe(self.checkpoint.fingerprint, self.checkpoint.path)
            check_on_missing(on_missing)
        self.baseline, self.on_missing = baselines, on_missing

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write a clean shareable folder of this probe (weights, goals, self-describing config, model card) into `out`."""
        return save_probe(self.checkpoint, self.spec, out, overwrite)

    @property
    def tokenizer(self):
        """The frozen model's tokenizer."""
        return self.loaded.tokenizer

    @property
    def layers(self) -> tuple[int, ...]:
        return self.checkpoint.layers

    def scorer(self, goal: str = "mean") -> Scorer:
        """The scorer of rewards and of Q toward `goal`: "mean", "kmeans", or a `probekit goal --from` folder."""
        if goal not in self._scorers:
            goals = dict(self.checkpoint.goals)
            kind = goal
            if goal not in goals and Path(goal).is_dir():
                extra = read_goal(goal, self.checkpoint)
                goals.update(extra)
                kind = next(iter(extra))
            self._scorers[goal] = Scorer(self.checkpoint.model, goals, kinds=[kind], where=self.checkpoint.path)
        return self._scorers[goal]

    def encode(self, prompts: Sequence[str], completions: Sequence[str], rendered: bool = False) -> list[Encoded]:
        """The token ids of each (prompt, completion) as the probe reads them (`rendered`: prompts are already
        the chat template's output)."""
        return encode_all(self._trajectories(prompts, completions), self.tokenizer, self._rendering(rendered), "input")

    def score(self, prompts: Sequence[str], completions: Sequence[str], *, q: bool = False, goal: str = "mean",
              rendered: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, max_batch_tokens: int | None = None,
              progress: Progress | None = None, ids: Sequence[str] | None = None) -> ScoreResult:
        """Rewards of each completion after its prompt (and per-token Q toward `goal` with `q`).

        Prompts are rendered with the checkpoint's template unless `rendered` (text the chat template already
        produced, as OpenRLHF sends it). `batch_size` texts run per chunk, each chunk in length-bucketed
        batches of at most `max_batch_tokens` padded tokens (extraction's default for the device). `ids` name the
        items in error messages (default: their numbers from 1).
        """
        if batch_size < 1:
            raise ProbekitError(f"batch_size must be >= 1, got {batch_size}")
        trajs = self._trajectories(prompts, completions, ids)
        rendering = self._rendering(rendered)
        encoded = encode_all(trajs, self.tokenizer, rendering, "input")
        keys = self._prompt_keys(trajs, rendering)
        if self.baseline is not None:  # a prompt without a baseline fails before any forward
            self.baseline.require(keys, self.on_missing)
        stride = self._stride(q)
        scorer = self.scorer(goal)
        kind = scorer.kinds[0]
        n = len(trajs)
        rewards = np.full(n, np.nan, np.float32)
        qs: list = [None] * n
        positions: list = [None] * n
        task = or_null(progress).task("score", sum(len(e.input_ids) for e in encoded), "tokens")
        try:
            for chunk in _chunks(_order(encoded, keys), batch_size):
                shard = live_states([trajs[i] for i in chunk], [encoded[i] for i in chunk], self.loaded, self.layers,
                                    stride=stride, dtype=self.spec.storage_dtype, max_batch_tokens=max_batch_tokens,
                                    share_prompts=True, advance=task.advance)
                states = np.concatenate([shard.states[layer] for layer in self.layers], axis=1)
                block = ShardBlock(trajectories=np.asarray(chunk), offsets=shard.offsets, positions=shard.positions, states=states)
                (scores,) = iter_scores(scorer, [block])
                rewards[chunk] = scores.last(scores.reward)
                for j, i in enumerate(chunk):
                    rows = slice(int(shard.offsets[j]), int(shard.offsets[j + 1]))
                    qs[i], positions[i] = scores.q[kind][rows].copy(), scores.positions[rows].copy()
        finally:
            task.close()
        result = ScoreResult(rewards=rewards, completion_tokens=np.asarray([e.completion_tokens for e in encoded], np.int64),
                             truncated_tokens=np.asarray([e.truncated_tokens for e in encoded], np.int64), prompt_keys=keys)
        if self.baseline is not None:
            result.contrastive, result.has_baseline = self.baseline.subtract(rewards, keys, self.on_missing)
        if q:
            result.q, result.positions, result.goal = qs, positions, kind
            result.tokens = [self._token_texts(e, p) for e, p in zip(encoded, positions)]
        return result

    def score_messages(self, conversations: Sequence[Sequence[dict]], **kwargs) -> ScoreResult:
        """`score` for chat data: each conversation's last message is the assistant's completion, the rest its prompt."""
        prompts, completions = self.split_messages(conversations)
        return self.score(prompts, completions, rendered=self.spec.template == "chat", **kwargs)

    def split_messages(self, conversations: Sequence[Sequence[dict]]) -> tuple[list[str], list[str]]:
        """(prompts, completions) of chat conversations: the prompt rendered with the chat template for a chat probe,
        the one user message's text for a raw one."""
        prompts, completions = [], []
        for i, conv in enumerate(conversations):
            prompt, completion = _split_conversation(conv, i)
            if self.spec.template == "chat":
                prompts.append(self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))
            elif len(prompt) == 1 and prompt[0]["role"] == "user":
                prompts.append(prompt[0]["content"])
            else:
                raise ItemError(i, f"this probe was trained on raw prompts (template raw), so it scores "
                                    f"one user message and the reply, not {len(prompt)} prompt messages", "conversation")
            completions.append(completion)
        return prompts, completions

    # ---- internals -------------------------------------------------------------------------------------------------

    def _trajectories(self, prompts: Sequence[str], completions: Sequence[str], ids: Sequence[str] | None = None) -> list[Trajectory]:
        if isinstance(prompts, str) or isinstance(completions, str):
            raise ProbekitError("prompts and completions must be lists of strings, not one string")
        if len(prompts) != len(completions):
            raise ProbekitError(f"{len(prompts)} prompts but {len(completions)} completions: pass one prompt per completion")
        for what, texts in (("prompt", prompts), ("completion", completions)):
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise ProbekitError(f"{what} {bad + 1} is {type(texts[bad]).__name__}, not a string")
        if ids is not None and len(ids) != len(prompts):
            raise ProbekitError(f"{len(ids)} ids for {len(prompts)} prompts: pass one id per completion")
        names = [str(i + 1) for i in range(len(prompts))] if ids is None else [str(x) for x in ids]
        return [Trajectory(id=name, group=str(i + 1), prompt=p, completion=c) for i, (name, p, c) in enumerate(zip(names, prompts, completions))]

    def _rendering(self, rendered: bool) -> Rendering:
        if rendered and self.spec.template == "chat":
            return Rendering(RENDERED, self.rendering.max_length, self.rendering.end_markers)
        return self.rendering

    def _prompt_keys(self, trajs: list[Trajectory], rendering: Rendering) -> list[str]:
        cache: dict[str, str] = {}
        for t in trajs:
            if t.prompt not in cache:
                cache[t.prompt] = prompt_key(prompt_ids(self.tokenizer, t.prompt, rendering.template))
        return [cache[t.prompt] for t in trajs]

    def _stride(self, q: bool) -> int:
        """Which completion tokens to compute: a pooled probe pools over the positions its store kept; a last-token
        probe's reward needs the last token only, its Q every token."""
        if self.checkpoint.model.pooling != "last":
            return parse_positions(self.spec.positions)
        return 1 if q else 0

    def _token_texts(self, e: Encoded, positions: np.ndarray) -> list[str]:
        ids = [e.input_ids[e.completion_start + int(p) - e.completion_cut] for p in positions]
        return [self.tokenizer.decode([i]) for i in ids]


_NO_LIMIT = 1 << 30  # a store written by `generate` keeps whole texts: no max length


def _check_tokenizer(ckpt: Checkpoint, spec: InputSpec, loaded: LoadedModel) -> None:
    """Refuse a tokenizer whose chat template is not the one the probe's prompts were rendered with."""
    recorded = (spec.rendering or {}).get("chat_template_sha256")
    if spec.template != "chat" or recorded is None:
        return
    chat = getattr(loaded.tokenizer, "chat_template", None)
    here = hashlib.sha256(chat.encode("utf-8")).hexdigest() if isinstance(chat, str) else None
    if here != recorded:
        raise ProbekitError(f"checkpoint {ckpt.path} rendered its prompts with chat template sha256 {recorded[:12]}, but model "
                            f"'{loaded.name}' has {str(here)[:12]}: its prompts would be other tokens")


def _split_conversation(conv: Sequence[dict], i: int) -> tuple[list[dict], str]:
    if not isinstance(conv, (list, tuple)) or not conv or not all(isinstance(m, dict) for m in conv):
        raise ItemError(i, "must be a non-empty list of {role, content} messages", "conversation")
    for m in conv:
        if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ItemError(i, "every message needs a string 'role' and 'content'", "conversation")
    if conv[-1]["role"] != "assistant" or len(conv) < 2:
        raise ItemError(i, "must end with the assistant's reply after at least one prompt message", "conversation")
    return [dict(m) for m in conv[:-1]], conv[-1]["content"]


def _order(encoded: list[Encoded], keys: list[str]) -> list[int]:
    """Items grouped by prompt (so shared prompts run once), groups longest first, so chunks pad little."""
    longest: dict[str, int] = {}
    for e, k in zip(encoded, keys):
        longest[k] = max(longest.get(k, 0), len(e.input_ids))
    return sorted(range(len(encoded)), key=lambda i: (-longest[keys[i]], keys[i], -len(encoded[i].input_ids)))


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]
