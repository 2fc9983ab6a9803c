"""`probekit generate`: sample with the frozen LM, keep the states it computes, stop bad samples as they go.

For every prompt, `samples` completions are decoded with a KV cache by
continuous batching (`_Scheduler`): up to `batch_size` rows decode at once, a
row whose sample ends leaves the cache at once and a queued sample takes its
place, so a batch never waits for its longest sample. The hooks that extraction uses (`probekit.extract.forward.capture_layers`)
capture each new token's hidden states at the requested layers during the
same forward pass that produces the next token's logits, so the store is
written without a second pass over the text, and equals (within the storage
dtype) what `probekit extract` computes on the generated text.

Online early stopping (`OnlineStop`) applies the filter's rule
(`probekit.early_stop`) token by token: a sequence is stopped at its first
token at position >= skip_first whose Q-value toward the goal is below the
threshold, and leaves the batch (its rows of the KV cache are dropped), so its
compute is really saved. Q is scored by the one scorer on the state rounded to
the storage dtype, exactly the number `probekit filter` would read from the
store, so online and after-the-fact decisions agree. A group whose samples
are all stopped falls back, as in the filter, to voting over all of them: each
is resumed where it stopped (it goes to the front of the queue; its prompt and
tokens so far are prefilled, and its own random stream, `probekit.sampling`,
continues from where it was), so it ends exactly as an unfiltered sample
would, and only the tokens decoded after the stop count again.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from probekit.config import option
from probekit.data.prompts import Prompt
from probekit.errors import ProbekitError
from probekit.progress import Progress, or_null

STORE_DTYPES = {"float16": (torch.float16, np.float16), "float32": (torch.float32, np.float32)}


@dataclass(frozen=True)
class GenerateConfig:
    """How completions are sampled and what is kept of them."""

    model: str = option("smollm2-135m", "Frozen model: smollm2-135m (bundled), gemma3-270m, a local folder, a .gguf file or a hub id (needs network).")
    samples: int = option(4, "Completions sampled per prompt (one majority-voting group).")
    max_new_tokens: int = option(128, "Most tokens generated per completion (a completion cut there is counted in generation.json).")
    temperature: float = option(0.7, "Sampling temperature; 0 = greedy.")
    top_p: float = option(0.95, "Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p.")
    seed: int = option(0, "Seed; each (prompt, sample) has its own generator, so outputs do not depend on batching.")
    template: str = option("auto", "Prompt rendering: chat (the model's chat template), raw, or auto (chat when the tokenizer has one).")
    layers: str | None = option(None, "Layers whose states are stored (HF numbering), e.g. 15 or 10,15. Default: the middle layer (plus the probe's layer with --filter).")
    dtype: str = option("float16", "Storage dtype of the states: float16 or float32.")
    answer: str = option("synth", "Answer parser: synth (A: n), gsm8k (#### n / A: n / last number), last-number, or regex:PATTERN.")
    stop: str | None = option(None, "Stop a completion once its text contains this string (e.g. a blank line after a few-shot answer); it is kept.")
    batch_size: int = option(32, "Sequences decoded together; memory is bounded by this, whatever the number of prompts.")
    shard_size: int = option(512, "Trajectories per store shard.")
    device: str = option("auto", "auto (CUDA when available), cpu or cuda.")
    model_dtype: str = option("auto", "Dtype the model runs in: auto (as for extract: bfloat16 on CUDA, and on CPUs where it measures faster), float32, float16, bfloat16.")

    def validate(self) -> None:
        from probekit.sampling import check_sampling

        check_sampling(self.temperature, self.top_p)
        if self.samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise ProbekitError("--samples, --max-new-tokens, --batch-size and --shard-size must be at least 1")
        if self.dtype not in STORE_DTYPES:
            raise ProbekitError(f"--dtype must be float16 or float32, got '{self.dtype}'")


@dataclass
class _Sequence:
    """One (prompt, sample) being decoded."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    states: dict[int, list[np.ndarray]] = field(default_factory=dict)
    dropped_at: int = -1  # completion position where online stopping cut it
    complete: bool = False  # stopped at a token that ended the sample anyway (stop string or max_new_tokens)
    hit_limit: bool = False
    resumed: bool = False  # decoding again for its group's fallback vote: online stopping no longer applies
    parked: _KV | None = None  # stopped: its KV rows, kept while its group may still fall back, so a resume needs no prefill


class OnlineStop:
    """The filter's drop rule, applied as tokens are produced (see the module docstring)."""

    def __init__(self, ckpt, threshold: float, skip_first: int = 5, goal: str = "mean", chosen_on: str = "given"):
        from probekit.scoring import Scorer
        from probekit.thresholds import check_threshold_range

        check_threshold_range([threshold], "q")
        if skip_first < 0:
            raise ProbekitError(f"--skip-first {skip_first}: must be >= 0")
        self.scorer = Scorer.from_checkpoint(ckpt, kinds=[goal])
        self.layer, self.goal, self.threshold, self.skip_first = ckpt.single_layer("online filtering"), goal, float(threshold), int(skip_first)
        self.checkpoint, self.chosen_on = str(ckpt.path), chosen_on

    def drops(self, stored_states: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """bool [n]: which sequences stop at this token (states as stored, positions in the completion)."""
        q = self.scorer.q_values(stored_states)
        return (positions >= self.skip_first) & (q[self.goal] < self.threshold)


def _eos_ids(loaded) -> list[int]:
    ids = set()
    for source in (loaded.tokenizer.eos_token_id, getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)):
        if source is None:
            continue
        ids |= set(source) if isinstance(source, (list, tuple)) else {int(source)}
    return sorted(ids)


def hit_stop(tokenizer, tokens: list[int], stop: str | None, window: int = 8) -> bool:
    """Whether the last token completed the stop string (only the last few tokens are decoded: the stop is short)."""
    if not stop:
        return False
    tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
    return stop in tail and stop not in tokenizer.decode(tokens[-window:-1], skip_special_tokens=True)


def _last_logits_only(model) -> dict:
    """Ask the prefill for the last position's logits only (the LM head over a long prompt is wasted work), where supported."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (the old name is deprecated from 5.x); use what this version takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class _KV:
    """Rows of a KV cache with what decoding them needs next: their attention mask, next positions and next-token logits."""

    cache: object  # transformers.DynamicCache
    mask: torch.Tensor
    next_pos: torch.Tensor
    logits: torch.Tensor


class _Rows:
    """The sequences decoding now, one row each of a single KV cache (`_KV`)."""

    def __init__(self, loaded):
        self.model, self.device = loaded.model, loaded.device
        self.kv_name = _cache_argument(self.model)
        self.prefill_kw = _last_logits_only(self.model)
        self.pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        self.eos = torch.tensor(_eos_ids(loaded), dtype=torch.long, device=self.device)
        self.seqs: list[_Sequence] = []
        self.kv: _KV | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def admit(self, seqs: list[_Sequence]) -> None:
        """Add sequences to the running rows: the others are prefilled in one batch, set-aside ones bring their KV rows back.

        All of them join the running cache in one merge (`probekit.kv_rows.merge_rows`).
        """
        from probekit.kv_rows import merge_rows

        kept = [s for s in seqs if s.parked is not None]
        fresh = [s for s in seqs if s.parked is None]
        parts = ([self.kv] if self.kv else []) + ([self._prefill(fresh)] if fresh else []) + [s.parked for s in kept]
        base = parts[0]
        if len(parts) > 1:
            base.mask = merge_rows(base.cache, base.mask, [(p.cache, p.mask) for p in parts[1:]])
            base.next_pos = torch.cat([p.next_pos for p in parts])
            base.logits = torch.cat([p.logits for p in parts])
        self.kv = base
        self.seqs += fresh + kept
        for s in kept:
            s.parked = None

    def _prefill(self, seqs: list[_Sequence]) -> _KV:
        """The KV rows of the sequences' contexts (prompt plus tokens so far), left-padded.

        Samples that share a context (a prompt's fresh samples) share its
        prefill: each distinct context runs once, then its KV rows are repeated.
        """
        from transformers import DynamicCache

        from probekit.extract.forward import position_ids_from_mask

        contexts = [tuple(s.prompt_ids + s.tokens) for s in seqs]
        firsts = sorted({c: i for i, c in reversed(list(enumerate(contexts)))}.values())
        context_row = {contexts[i]: r for r, i in enumerate(firsts)}
        width = max(len(contexts[i]) for i in firsts)
        ids = torch.full((len(firsts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(firsts), width), dtype=torch.long)
        for row, i in enumerate(firsts):  # left padding: every row's next token goes in the same column
            n = len(contexts[i])
            ids[row, width - n:] = torch.tensor(contexts[i])
            mask[row, width - n:] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True,
                         **{self.kv_name: cache}, **self.prefill_kw)
        expand = torch.tensor([context_row[c] for c in contexts], device=self.device)
        cache.batch_select_indices(expand)
        mask, logits = mask[expand], out.logits[:, -1][expand]
        empty = [r for r, s in enumerate(seqs) if not s.tokens]
        if empty and len(self.eos):  # at least one token: an empty completion is not a trajectory
            logits[torch.tensor(empty, device=self.device)[:, None], self.eos[None, :]] = float("-inf")
        return _KV(cache, mask, mask.sum(dim=1), logits)

    def leave(self, done: np.ndarray, park: np.ndarray) -> None:
        """Rows where `done` (bool [rows]) leave the cache at once; those also in `park` keep a copy of their rows (`_Sequence.parked`)."""
        from probekit.kv_rows import copy_rows, keep_rows

        kv = self.kv
        for row in np.flatnonzero(park):
            index = torch.tensor([row], device=self.device)
            self.seqs[row].parked = _KV(*copy_rows(kv.cache, kv.mask, index), kv.next_pos[index], kv.logits[index])
        rows = np.flatnonzero(~done)
        self.seqs = [self.seqs[r] for r in rows]
        if not self.seqs:
            self.kv = None
            return
        index = torch.from_numpy(rows).to(self.device)
        kv.mask = keep_rows(kv.cache, kv.mask, index)
        kv.next_pos, kv.logits = kv.next_pos[index], kv.logits[index]

    def feed(self, tok: torch.Tensor) -> None:
        """One decoding step: each row's token goes in, its next-token logits come out (and the hooks capture its states)."""
        kv = self.kv
        kv.mask = torch.cat([kv.mask, torch.ones((len(self.seqs), 1), dtype=kv.mask.dtype, device=self.device)], dim=1)
        out = self.model(input_ids=tok[:, None], attention_mask=kv.mask, position_ids=kv.next_pos[:, None], use_cache=True,
                         **{self.kv_name: kv.cache})
        kv.next_pos = kv.next_pos + 1
        kv.logits = out.logits[:, -1]


@dataclass
class _Group:
    """One prompt's samples. It is finished when every sample is done, after its fallback resumes if it falls back."""

    seqs: list[_Sequence] = field(default_factory=list)
    running: int = 0  # admitted (or queued for a resume) and not done
    survivor: bool = False  # a sample ended without being stopped: the group cannot fall back
    fallback: bool = False
    finished: bool = False


@dataclass
class _Counts:
    fed: int = 0  # tokens decoded before any fallback
    resumed: int = 0  # tokens decoded by fallback resumes
    n_fallback: int = 0
    n_resumes_prefilled: int = 0  # resumes whose KV rows were not kept (more than batch_size were set aside): their context is prefilled
    peak_held: int = 0  # most samples whose states were in memory at once (decoding, queued to resume, or done and not yet written)


def _admit_at(config: GenerateConfig) -> int:
    """Free rows that trigger an admission while rows are still decoding: a group's worth, at most a quarter of the batch.

    Admitting in chunks batches the prefills (one forward for several
    contexts instead of one each); waiting longer leaves rows idle.
    """
    return max(1, min(config.samples, config.batch_size // 4))


class _Scheduler:
    """Continuous batching: up to `batch_size` rows decode at all times, and each prompt's samples leave in prompt order.

    A row whose sample ends (EOS, the stop string, max_new_tokens, or stopped
    online) leaves the KV cache at once, and queued samples are admitted in
    its place. The queue is the samples in (prompt, sample) order, with
    fallback resumes in front. A stopped sample whose group may still fall
    back keeps a copy of its KV rows (at most batch_size such samples at
    once; beyond that a resume prefills its prompt and tokens), released as
    soon as another sample of its group ends unstopped: a resume then costs
    no prefill, so the time online stopping saves follows the tokens it
    saves. Finished groups wait in a reorder buffer until every earlier group
    is finished; no new prompt is admitted while the buffer holds more than
    2x batch_size samples, which bounds memory.
    """

    def __init__(self, loaded, contexts: list[list[int]], layers: list[int], config: GenerateConfig, stop: OnlineStop | None,
                 emit: Callable[[list[_Sequence], bool], None]):
        self.loaded, self.contexts, self.layers, self.config, self.stop, self.emit = loaded, contexts, layers, config, stop, emit
        self.rows = _Rows(loaded)
        self.counts = _Counts()
        self.groups: dict[int, _Group] = {}
        self.resumes: deque[_Sequence] = deque()
        self.n_fresh = len(contexts) * config.samples
        self.next_fresh = self.next_emit = 0
        self.buffered = 0  # done samples not yet emitted
        self.n_parked = 0  # samples holding a copy of their KV rows

    @torch.inference_mode()
    def run(self, task) -> _Counts:
        from probekit.extract.forward import capture_layers

        with capture_layers(self.loaded.model, self.layers) as captured:
            while True:
                self._admit()
                if not self.rows:
                    return self.counts
                self._step(captured, task)

    def _admit(self) -> None:
        from probekit.sampling import sequence_generator

        config, rows = self.config, self.rows
        free = config.batch_size - len(rows)
        queued = len(self.resumes) + self.n_fresh - self.next_fresh
        if not free or not queued or (rows and free < _admit_at(config) and queued > free):
            return
        take = [self.resumes.popleft() for _ in range(min(free, len(self.resumes)))]
        parked = sum(s.parked is not None for s in take)
        self.n_parked -= parked
        self.counts.n_resumes_prefilled += len(take) - parked
        while len(take) < free and self.next_fresh < self.n_fresh:
            pi, k = divmod(self.next_fresh, config.samples)
            if k == 0 and self.buffered > 2 * config.batch_size:
                break  # a new prompt waits until the reorder buffer drains
            group = self.groups.setdefault(pi, _Group())
            group.seqs.append(_Sequence(pi, k, self.contexts[pi], sequence_generator(config.seed, pi, k)))
            group.running += 1
            take.append(group.seqs[-1])
            self.next_fresh += 1
        if take:
            rows.admit(take)
        self.counts.peak_held = max(self.counts.peak_held, len(rows) + len(self.resumes) + self.buffered)

    def _finish(self, s: _Sequence) -> None:
        """A sample is done: if that finishes its group, the group falls back or waits its turn to be emitted."""
        g = self.groups[s.prompt_index]
        g.running -= 1
        self.buffered += 1
        if s.dropped_at < 0 and not g.survivor:  # the group cannot fall back: its stopped samples' KV rows are not needed
            g.survivor = True
            for x in g.seqs:
                self.n_parked -= x.parked is not None
                x.parked = None
        if g.running or len(g.seqs) < self.config.samples:
            return
        if self.stop is not None and not g.fallback and not g.survivor:
            # Every sample was stopped: as in the filter, all of them vote, each resumed where it stopped. It keeps its
            # tokens, states and random stream, so it ends exactly as an unfiltered sample would.
            g.fallback = True
            self.counts.n_fallback += 1
            again = [x for x in g.seqs if not x.complete]
            for x in again:
                x.resumed = True
            self.resumes.extendleft(reversed(again))
            g.running = len(again)
            self.buffered -= len(again)
            if again:
                return
        g.finished = True
        while self.next_emit in self.groups and self.groups[self.next_emit].finished:
            done = self.groups.pop(self.next_emit)
            self.emit(done.seqs, done.fallback)
            self.buffered -= len(done.seqs)
            self.next_emit += 1

    def _leave(self, done: np.ndarray, park: np.ndarray) -> None:
        """The rows where `done` leave (those in `park` keeping their KV rows), then each of their samples is finished."""
        ended = [self.rows.seqs[row] for row in np.flatnonzero(done)]
        self.rows.leave(done, park)
        self.n_parked += int(park.sum())
        for s in ended:
            self._finish(s)

    def _step(self, captured: dict, task) -> None:
        """Sample a token for every row, feed it, keep its states, and let the rows whose samples ended go."""
        from probekit.extract.run import checked_states
        from probekit.sampling import sample_next

        config, rows, stop = self.config, self.rows, self.stop
        tok = sample_next(rows.kv.logits, [s.generator for s in rows.seqs], config.temperature, config.top_p)
        going = (~torch.isin(tok, rows.eos) if len(rows.eos) else torch.ones_like(tok, dtype=torch.bool)).cpu().numpy()
        if not going.all():  # EOS ends a sample without being kept
            self._leave(~going, np.zeros_like(going))
            if not rows:
                return
            tok = tok[torch.from_numpy(going).to(tok.device)]
        rows.feed(tok)
        resumed = np.asarray([s.resumed for s in rows.seqs])
        self.counts.fed += int((~resumed).sum())
        self.counts.resumed += int(resumed.sum())
        task.advance(len(rows))
        torch_dtype, _ = STORE_DTYPES[config.dtype]
        stored = {layer: checked_states(captured[layer][:, -1], torch_dtype, f"#{rows.seqs[0].prompt_index + 1} (a generated sample)",
                                        layer, config.dtype) for layer in self.layers}
        for row, s in enumerate(rows.seqs):
            s.tokens.append(int(tok[row]))
            for layer in self.layers:
                s.states.setdefault(layer, []).append(stored[layer][row])
        positions = np.asarray([len(s.tokens) - 1 for s in rows.seqs])
        ended = np.asarray([hit_stop(self.loaded.tokenizer, s.tokens, config.stop) for s in rows.seqs], dtype=bool)
        at_limit = positions + 1 >= config.max_new_tokens
        dropped = np.zeros(len(rows), dtype=bool)
        park = np.zeros(len(rows), dtype=bool)
        if stop is not None:  # the final token too, as the filter decides; a resumed sample is not stopped again
            dropped = stop.drops(stored[stop.layer], positions) & ~resumed
            for row in np.flatnonzero(dropped):
                s = rows.seqs[row]
                s.dropped_at = int(positions[row])
                s.complete = bool(ended[row] or at_limit[row])  # nothing would follow: a resume decodes nothing
                park[row] = not s.complete and not self.groups[s.prompt_index].survivor and self.n_parked + park.sum() < config.batch_size
        for row in np.flatnonzero(at_limit & ~ended):
            rows.seqs[row].hit_limit = True
        done = ended | at_limit | dropped
        if done.any():
            self._leave(done, park)


@dataclass
class GenerateResult:
    out: Path
    stats: dict
    trajectories: list  # probekit.data.schema.Trajectory, in (prompt, sample) order


def generate(prompts: list[Prompt], out: str | Path, config: GenerateConfig = GenerateConfig(), *, stop: OnlineStop | None = None,
             loaded=None, overwrite: bool = False, inputs: tuple = (), progress: Progress | None = None) -> GenerateResult:
    """Sample, grade and store: out/trajectories.jsonl, out/pairs.jsonl, out/store/ (a probekit store), out/generation.json.

    Samples decode with continuous batching (`_Scheduler`); each prompt's
    samples are graded and their states go to the store's shards as soon as
    that prompt and every earlier one are finished, so memory is bounded by
    a few batches of samples and one shard, whatever the number of prompts.
    """
    from probekit.data.answers import get_parser
    from probekit.data.schema import derive_pairs, write_pairs, write_trajectories
    from probekit.extract.render import prompt_ids, resolve_template
    from probekit.io import write_json
    from probekit.models import load_model, resolve_layers
    from probekit.outputs import claim_output

    config.validate()
    parse = get_parser(config.answer)
    out_dir = claim_output(out, "generate", ("trajectories.jsonl", "pairs.jsonl", "store", "generation.json"), overwrite=overwrite, inputs=inputs)
    loaded = loaded or load_model(config.model, device=config.device, dtype=config.model_dtype)
    layers = resolve_layers(config.layers, loaded.num_layers)
    if stop is not None and stop.layer not in layers:
        layers = sorted(set(layers) | {stop.layer})
    template = resolve_template(config.template, loaded.tokenizer)
    contexts = [prompt_ids(loaded.tokenizer, p.prompt, template) for p in prompts]
    _check_context(prompts, contexts, loaded, config.max_new_tokens)
    writer = _StoreWriter(claim_output(out_dir.file("store"), "generate", (), overwrite=overwrite), prompts, layers, loaded, template, config, stop)

    trajectories, finals = [], []

    def emit(seqs: list[_Sequence], fallback: bool) -> None:
        group = [_trajectory(prompts[s.prompt_index], s, loaded.tokenizer, parse, fallback) for s in seqs]
        writer.add(seqs, group)
        trajectories.extend(group)
        finals.extend(_summary(s) for s in seqs)

    t0 = time.perf_counter()
    task = or_null(progress).task("generate", len(prompts) * config.samples * config.max_new_tokens, unit="tokens")
    try:
        counts = _Scheduler(loaded, contexts, layers, config, stop, emit).run(task)
    finally:
        task.close()
    seconds = time.perf_counter() - t0
    manifest = writer.close(trajectories)
    write_trajectories(out_dir.file("trajectories.jsonl"), trajectories)
    write_pairs(out_dir.file("pairs.jsonl"), derive_pairs(trajectories))
    labels = [t.label for t in trajectories if t.label is not None]
    tokens = counts.fed + counts.resumed
    stats = {
        "n_prompts": len(prompts), "n_trajectories": len(trajectories), "layers": layers, "template": template,
        "tokens_generated": int(tokens), "tokens_resumed_for_fallback": int(counts.resumed),
        "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "n_hit_max_new_tokens": sum(f["hit_limit"] for f in finals),
        "n_stopped_early": sum(f["dropped_at"] >= 0 for f in finals),
        "n_fallback_groups": counts.n_fallback, "n_fallback_resumes_prefilled": counts.n_resumes_prefilled,
        "peak_samples_held": counts.peak_held,
        "n_labelled": len(labels), "accuracy_per_sample": float(np.mean(labels)) if labels else None,
        "online_filter": None if stop is None else {"checkpoint": stop.checkpoint, "layer": stop.layer, "goal": stop.goal,
                                                     "threshold": stop.threshold, "threshold_chosen_on": stop.chosen_on,
                                                     "skip_first": stop.skip_first},
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "store_cache_key": manifest["cache_key"],
    }
    write_json(out_dir.file("generation.json"), stats)
    return GenerateResult(out_dir.path, stats, trajectories)


def _check_context(prompts: list[Prompt], contexts: list[list[int]], loaded, max_new_tokens: int) -> None:
    """Refuse, before any work, a prompt that cannot fit the model's context together with the new tokens."""
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if not limit:
        return
    for p, ids in zip(prompts, contexts):
        if len(ids) + max_new_tokens > limit:
            raise ProbekitError(f"prompt '{p.id}': {len(ids)} tokens + --max-new-tokens {max_new_tokens} exceed the model's context of {limit} tokens")


def _summary(s: _Sequence) -> dict:
    return {"dropped_at": s.dropped_at, "hit_limit": s.hit_limit}


def _trajectory(p: Prompt, s: _Sequence, tokenizer, parse, fallback: bool):
    """The record of one sample. A sample stopped early has no final answer and no label; a fallback one has both."""
    from probekit.data.answers import grade
    from probekit.data.schema import Trajectory
    from probekit.extract.render import COMPLETION_IDS

    text = tokenizer.decode(s.tokens, skip_special_tokens=True)
    stopped = s.dropped_at >= 0 and not fallback
    answer = None if stopped else parse(text)
    label = None if stopped or p.gold is None else grade(answer, p.gold)
    meta = {"sample": s.sample_index, "tokens": len(s.tokens), "hit_max_new_tokens": s.hit_limit, COMPLETION_IDS: list(s.tokens)}
    if s.dropped_at >= 0:
        meta.update(dropped_at=s.dropped_at, fallback=fallback)
    return Trajectory(id=f"{p.id}-{s.sample_index}", group=p.id, prompt=p.prompt, completion=text, label=label, answer=answer, meta=meta)


class _StoreWriter:
    """Writes the captured states as a probekit store (the layout `probekit extract` writes), a shard as soon as it fills."""

    def __init__(self, store_dir, prompts: list[Prompt], layers: list[int], loaded, template: str, config: GenerateConfig,
                 stop: OnlineStop | None):
        from probekit.extract.manifest import MODEL_DTYPE, build_manifest
        from probekit.io import write_json
        from probekit.models import dtype_name
        from probekit.store import MANIFEST

        self.dir, self.layers, self.config = store_dir, layers, config
        self.np_dtype = STORE_DTYPES[config.dtype][1]
        self.model_dtype = dtype_name(loaded.dtype)
        n = len(prompts) * config.samples
        prompts_sha = hashlib.sha256("\x00".join(f"{p.id}\x00{p.prompt}" for p in prompts).encode()).hexdigest()
        key = {"model_sha256": loaded.file_sha256 or loaded.source, MODEL_DTYPE: self.model_dtype, "layers": layers, "template": template, "positions": "all",
               "dtype": config.dtype, "shard_size": config.shard_size, "prompts_sha256": prompts_sha,
               "generated": {k: getattr(config, k) for k in ("samples", "max_new_tokens", "temperature", "top_p", "seed", "answer", "stop")},
               "online_filter": None if stop is None else [stop.checkpoint, stop.goal, stop.threshold, stop.skip_first]}
        self.manifest = build_manifest(key, {
            "model": {"name": loaded.name, "source": str(loaded.source), "file_sha256": loaded.file_sha256, "revision": loaded.revision,
                      "num_layers": loaded.num_layers, "hidden_size": loaded.hidden_size, "dtype": self.model_dtype,
                      "dtype_choice": loaded.dtype_choice},
            "tokenizer": {"name_or_path": str(getattr(loaded.tokenizer, "name_or_path", "")), "vocab_size": len(loaded.tokenizer)},
            "layers": layers, "dtype": config.dtype, "template": template, "positions": "all", "max_length": None,
            "data": {"trajectories": "../trajectories.jsonl", "n_trajectories": n, "generated": True},
            "shards": {"n": (n + config.shard_size - 1) // config.shard_size, "size": config.shard_size},
        })
        write_json(store_dir.file(MANIFEST), self.manifest)
        self.pending: list[tuple[_Sequence, object]] = []
        self.paths: list[Path] = []

    def add(self, seqs: list[_Sequence], trajectories: list) -> None:
        self.pending += list(zip(seqs, trajectories))
        while len(self.pending) >= self.config.shard_size:
            self._flush(self.config.shard_size)

    def close(self, trajectories: list) -> dict:
        from probekit.data.schema import derive_pairs, write_pairs
        from probekit.extract.manifest import finalize
        from probekit.store import PAIRS, read_shard_attrs

        if self.pending:
            self._flush(len(self.pending))
        write_pairs(self.dir.file(PAIRS), derive_pairs(trajectories))
        return finalize(self.dir.path, self.manifest, [read_shard_attrs(p) for p in self.paths])

    def _flush(self, n: int) -> None:
        from probekit.store import ShardData, shard_name, write_shard

        part, self.pending = self.pending[:n], self.pending[n:]
        counts = np.asarray([len(s.tokens) for s, _ in part], dtype=np.int64)
        index = len(self.paths)
        data = ShardData(
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            positions=np.concatenate([np.arange(c) for c in counts]).astype(np.int32),
            states={layer: np.stack([row for s, _ in part for row in s.states[layer]]).astype(self.np_dtype, copy=False) for layer in self.layers},
            meta={"id": [t.id for _, t in part], "group": [t.group for _, t in part], "answer": [t.answer or "" for _, t in part],
                  "label": [-1 if t.label is None else t.label for _, t in part],
                  "completion_tokens": counts.tolist(), "truncated_tokens": [0] * len(part), "error_token": [-1] * len(part)},
            attrs={"n_trajectories": len(part), "n_rows": int(counts.sum()), "n_tokens_processed": int(counts.sum()), "n_truncated": 0,
                   "cache_key": self.manifest["cache_key"], "shard_index": index, "seconds": 0.0, "model_dtype": self.model_dtype},
        )
        self.paths.append(self.dir.file(shard_name(index)))
        write_shard(self.paths[-1], data)
