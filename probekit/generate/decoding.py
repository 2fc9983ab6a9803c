"""Continuous batching for `probekit generate`: up to `batch_size` rows decode at all times, whatever each sample's length.

`Scheduler` keeps a queue of samples in (prompt, sample) order and one
running batch (`Rows`: one KV cache, a row per sample). A row whose sample
ends leaves the cache at once and queued samples are prefilled and merged in
(`probekit.generate.kv_rows`), so a batch never waits for its longest sample and a
sample stopped online really frees its row (a copy of its KV rows is kept
while its group may still fall back, so a resume needs no prefill). Groups
(a prompt's samples) are handed back in prompt order; what is decided per token (stop string, limits,
online stopping) is the generation module's rule, applied here row by row.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from probekit.extract.forward import STORE_DTYPES, cache_argument, capture_layers, checked_states, position_ids_from_mask
from probekit.generate.config import DecodeSettings
from probekit.generate.kv_rows import copy_rows, keep_rows, merge_rows
from probekit.generate.sampling import sample_next, sequence_generator
from probekit.generate.stopping import OnlineStop, eos_ids, hit_stop


def _last_logits_only(model) -> dict:
    """Ask the prefill for the last position's logits only (the LM head over a long prompt is wasted work), where supported."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


@dataclass
class Sample:
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
    parked: KV | None = None  # stopped: its KV rows, kept while its group may still fall back, so a resume needs no prefill


@dataclass
class KV:
    """Rows of a KV cache with what decoding them needs next: their attention mask, next positions and next-token logits."""

    cache: object  # transformers.DynamicCache
    mask: torch.Tensor
    next_pos: torch.Tensor
    logits: torch.Tensor


class Rows:
    """The sequences decoding now, one row each of a single KV cache (`KV`)."""

    def __init__(self, loaded):
        self.model, self.device = loaded.model, loaded.device
        self.kv_name = cache_argument(self.model)
        self.prefill_kw = _last_logits_only(self.model)
        self.pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
        self.eos = torch.tensor(eos_ids(loaded), dtype=torch.long, device=self.device)
        self.seqs: list[Sample] = []
        self.kv: KV | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def admit(self, seqs: list[Sample]) -> int:
        """Add sequences to the running rows: the others are prefilled in one batch, set-aside ones bring their KV rows back.

        All of them join the running cache in one merge (`probekit.generate.kv_rows.merge_rows`). Returns the tokens prefilled.
        """
        kept = [s for s in seqs if s.parked is not None]
        fresh = [s for s in seqs if s.parked is None]
        prefilled = self._prefill(fresh) if fresh else None
        parts = ([self.kv] if self.kv else []) + ([prefilled[0]] if fresh else []) + [s.parked for s in kept]
        base = parts[0]
        if len(parts) > 1:
            base.mask = merge_rows(base.cache, base.mask, [(p.cache, p.mask) for p in parts[1:]])
            base.next_pos = torch.cat([p.next_pos for p in parts])
            base.logits = torch.cat([p.logits for p in parts])
        self.kv = base
        self.seqs += fresh + kept
        for s in kept:
            s.parked = None
        return prefilled[1] if fresh else 0

    def _prefill(self, seqs: list[Sample]) -> tuple[KV, int]:
        """The KV rows of the sequences' contexts (prompt plus tokens so far), left-padded, and the tokens run.

        Samples that share a context (a prompt's fresh samples) share its
        prefill: each distinct context runs once, then its KV rows are repeated.
        """
        from transformers import DynamicCache

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
        return KV(cache, mask, mask.sum(dim=1), logits), sum(len(contexts[i]) for i in firsts)

    def leave(self, done: np.ndarray, park: np.ndarray) -> None:
        """Rows where `done` (bool [rows]) leave the cache at once; those also in `park` keep a copy of their rows (`Sample.parked`)."""
        kv = self.kv
        for row in np.flatnonzero(park):
            index = torch.tensor([row], device=self.device)
            self.seqs[row].parked = KV(*copy_rows(kv.cache, kv.mask, index), kv.next_pos[index], kv.logits[index])
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
class Group:
    """One prompt's samples. It is finished when every sample is done, after its fallback resumes if it falls back."""

    seqs: list[Sample] = field(default_factory=list)
    running: int = 0  # admitted (or queued for a resume) and not done
    survivor: bool = False  # a sample ended without being stopped: the group cannot fall back
    fallback: bool = False
    finished: bool = False


@dataclass
class Counts:
    fed: int = 0  # tokens decoded before any fallback
    resumed: int = 0  # tokens decoded by fallback resumes
    n_fallback: int = 0
    steps: int = 0  # decoding forwards: on hardware where a step costs about the same whatever its rows, time follows steps
    n_resumes_prefilled: int = 0  # resumes whose KV rows were not kept (more than batch_size were set aside): their context is prefilled
    peak_held: int = 0  # most samples whose states were in memory at once (decoding, queued to resume, or done and not yet written)
    prefill_tokens: int = 0  # context tokens run through the model to admit samples (a prompt's fresh samples share one prefill)
    admit_seconds: float = 0.0  # prefilling admitted samples and merging their KV rows in: work online stopping cannot save
    decode_seconds: float = 0.0  # the decoding steps: sampling, the forward, states, stop rules, rows leaving


class Scheduler:
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

    def __init__(self, loaded, contexts: list[list[int]], layers: list[int], config: DecodeSettings, stop: OnlineStop | None,
                 emit: Callable[[list[Sample], bool], None], start: int = 0):
        """`start`: the first prompt to decode (earlier ones were finished by an interrupted run); seeds stay per prompt index."""
        self.loaded, self.contexts, self.layers, self.config, self.stop, self.emit = loaded, contexts, layers, config, stop, emit
        self.rows = Rows(loaded)
        self.counts = Counts()
        self.groups: dict[int, Group] = {}
        self.resumes: deque[Sample] = deque()
        self.n_fresh = len(contexts) * config.samples
        self.next_fresh, self.next_emit = start * config.samples, start
        self.buffered = 0  # done samples not yet emitted
        self.n_parked = 0  # samples holding a copy of their KV rows

    @torch.inference_mode()
    def run(self, task) -> Counts:
        with capture_layers(self.loaded.model, self.layers) as captured:
            while True:
                self._admit()
                if not self.rows:
                    return self.counts
                t0 = time.perf_counter()
                self._step(captured, task)
                self.counts.decode_seconds += time.perf_counter() - t0

    def _admit(self) -> None:
        """Fill the free rows: fallback resumes first, then whole prompts.

        A prompt's fresh samples are admitted together (all of them, or a
        batch's worth if samples > batch_size), so its prompt is prefilled
        once: profiled on the benchmark's task, prompts split across
        admissions paid their prefill twice, and prefills take over a third
        of the CPU time there.
        """
        config, rows = self.config, self.rows
        free = config.batch_size - len(rows)
        take = [self.resumes.popleft() for _ in range(min(free, len(self.resumes)))]
        parked = sum(s.parked is not None for s in take)
        self.n_parked -= parked
        self.counts.n_resumes_prefilled += len(take) - parked
        while self.next_fresh < self.n_fresh:
            pi, k = divmod(self.next_fresh, config.samples)
            room = free - len(take)
            if not room or (k == 0 and (room < min(config.samples, config.batch_size) or self.buffered > 2 * config.batch_size)):
                break  # a new prompt waits for rows for all its samples, and until the reorder buffer drains
            group = self.groups.setdefault(pi, Group())
            group.seqs.append(Sample(pi, k, self.contexts[pi], sequence_generator(config.seed, pi, k)))
            group.running += 1
            take.append(group.seqs[-1])
            self.next_fresh += 1
        if take:
            t0 = time.perf_counter()
            self.counts.prefill_tokens += rows.admit(take)
            self.counts.admit_seconds += time.perf_counter() - t0
        self.counts.peak_held = max(self.counts.peak_held, len(rows) + len(self.resumes) + self.buffered)

    def _finish(self, s: Sample) -> None:
        """A sample is done: if that finishes its group, the group falls back or waits its turn to be emitted."""
        g = self.groups[s.prompt_index]
        g.running -= 1
        self.buffered += 1
        if s.dropped_at < 0 and not g.survivor:  # the group cannot fall back: its stopped samples' KV rows are not needed
            g.survivor = True
            for x in g.seqs:
                if x.parked is not None:
                    x.parked = None
                    self.n_parked -= 1
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
        config, rows, stop = self.config, self.rows, self.stop
        tok = sample_next(rows.kv.logits, [s.generator for s in rows.seqs], config.temperature, config.top_p)
        going = (~torch.isin(tok, rows.eos) if len(rows.eos) else torch.ones_like(tok, dtype=torch.bool)).cpu().numpy()
        if not going.all():  # EOS ends a sample without being kept
            self._leave(~going, np.zeros_like(going))
            if not rows:
                return
            tok = tok[torch.from_numpy(going).to(tok.device)]
        rows.feed(tok)
        self.counts.steps += 1
        resumed = np.asarray([s.resumed for s in rows.seqs])
        self.counts.fed += int((~resumed).sum())
        self.counts.resumed += int(resumed.sum())
        task.advance(0, note=f"{self.counts.fed + self.counts.resumed:,} tokens")  # samples are counted as they are written
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
