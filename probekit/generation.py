"""`probekit generate`: sample with the frozen LM, keep the states it computes, stop bad samples as they go.

For every prompt, `samples` completions are decoded in batches with a KV
cache. The hooks that extraction uses (`probekit.extract.forward.capture_layers`)
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
is resumed where it stopped (its prompt and tokens so far are prefilled in one
batched forward, and its own random stream, `probekit.sampling`, continues
from where it was), so it ends exactly as an unfiltered sample would, and only
the tokens decoded after the stop count again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

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


@torch.inference_mode()
def _decode(loaded, seqs: list[_Sequence], layers: list[int], config: GenerateConfig, stop: OnlineStop | None, task) -> int:
    """Decode one batch until every sequence ends; fills each sequence's tokens and states. Returns tokens fed."""
    from transformers import DynamicCache

    from probekit.extract.forward import capture_layers, position_ids_from_mask
    from probekit.extract.run import checked_states
    from probekit.sampling import sample_next

    model, device = loaded.model, loaded.device
    torch_dtype, _ = STORE_DTYPES[config.dtype]
    eos = torch.tensor(_eos_ids(loaded), dtype=torch.long, device=device)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    # Samples that share a context (a prompt's fresh samples) share its prefill: each distinct context runs once, then its KV
    # cache is repeated. A resumed sample's context is its prompt plus the tokens it already has.
    contexts = [tuple(s.prompt_ids + s.tokens) for s in seqs]
    firsts = sorted({c: i for i, c in reversed(list(enumerate(contexts)))}.values())
    context_row = {contexts[i]: r for r, i in enumerate(firsts)}
    width = max(len(contexts[i]) for i in firsts)
    ids = torch.full((len(firsts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(firsts), width), dtype=torch.long)
    for row, i in enumerate(firsts):  # left padding: every row's next token goes in the same column
        n = len(contexts[i])
        ids[row, width - n:] = torch.tensor(contexts[i])
        mask[row, width - n:] = 1
    ids, mask = ids.to(device), mask.to(device)
    live = list(range(len(seqs)))
    fed = 0
    with capture_layers(model, layers) as captured:
        cache = DynamicCache()
        kv = {_cache_argument(model): cache}
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=True, **kv,
                    **_last_logits_only(model))
        expand = torch.tensor([context_row[c] for c in contexts], device=device)
        cache.batch_select_indices(expand)
        mask, logits = mask[expand], out.logits[:, -1][expand]
        next_pos = mask.sum(dim=1)
        empty = [r for r, i in enumerate(live) if not seqs[i].tokens]
        if empty and len(eos):  # at least one token: an empty completion is not a trajectory
            logits = logits.clone()
            logits[torch.tensor(empty, device=device)[:, None], eos[None, :]] = float("-inf")
        while live:
            tok = sample_next(logits, [seqs[i].generator for i in live], config.temperature, config.top_p)
            going = ~torch.isin(tok, eos) if len(eos) else torch.ones_like(tok, dtype=torch.bool)
            if not going.all():
                keep = torch.nonzero(going).flatten()
                live = [live[i] for i in keep.tolist()]
                if not live:
                    break
                cache.batch_select_indices(keep)
                tok, mask, next_pos = tok[keep], mask[keep], next_pos[keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype, device=device)], dim=1)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True, **kv)
            next_pos = next_pos + 1
            fed += len(live)
            task.advance(len(live))
            stored = {}
            for layer in layers:
                stored[layer] = checked_states(captured[layer][:, -1], torch_dtype, f"#{seqs[live[0]].prompt_index + 1} (a generated sample)",
                                               layer, config.dtype)
            for row, i in enumerate(live):
                seqs[i].tokens.append(int(tok[row]))
                for layer in layers:
                    seqs[i].states.setdefault(layer, []).append(stored[layer][row])
            positions = np.asarray([len(seqs[i].tokens) - 1 for i in live])
            ended = np.asarray([hit_stop(loaded.tokenizer, seqs[i].tokens, config.stop) for i in live], dtype=bool)
            at_limit = positions + 1 >= config.max_new_tokens
            dropped = np.zeros(len(live), dtype=bool)
            if stop is not None:
                dropped = stop.drops(stored[stop.layer], positions)  # the final token too, as the filter decides
                for row in np.flatnonzero(dropped):
                    seqs[live[row]].dropped_at = int(positions[row])
                    seqs[live[row]].complete = bool(ended[row] or at_limit[row])  # nothing would follow: a resume decodes nothing
            for row in np.flatnonzero(at_limit & ~ended):
                seqs[live[row]].hit_limit = True
            done = ended | at_limit | dropped
            if done.any():
                keep = torch.from_numpy(np.flatnonzero(~done))
                live = [live[i] for i in keep.tolist()]
                if not live:
                    break
                cache.batch_select_indices(keep.to(device))
                mask, next_pos = mask[keep.to(device)], next_pos[keep.to(device)]
                out_logits = out.logits[keep.to(device), -1]
            else:
                out_logits = out.logits[:, -1]
            logits = out_logits
    return fed


@dataclass
class GenerateResult:
    out: Path
    stats: dict
    trajectories: list  # probekit.data.schema.Trajectory, in (prompt, sample) order


def generate(prompts: list[Prompt], out: str | Path, config: GenerateConfig = GenerateConfig(), *, stop: OnlineStop | None = None,
             loaded=None, overwrite: bool = False, inputs: tuple = (), progress: Progress | None = None) -> GenerateResult:
    """Sample, grade and store: out/trajectories.jsonl, out/pairs.jsonl, out/store/ (a probekit store), out/generation.json.

    Batches hold whole groups (prompts), so a group's fallback is decided and
    resumed right after its batch, and its states go to the store's
    shards at once: memory is bounded by a batch and one shard.
    """
    from probekit.data.answers import get_parser
    from probekit.data.schema import derive_pairs, write_pairs, write_trajectories
    from probekit.extract.render import prompt_ids, resolve_template
    from probekit.io import write_json
    from probekit.models import load_model, resolve_layers
    from probekit.outputs import claim_output
    from probekit.sampling import sequence_generator

    config.validate()
    parse = get_parser(config.answer)
    out_dir = claim_output(out, "generate", ("trajectories.jsonl", "pairs.jsonl", "store", "generation.json"), overwrite=overwrite, inputs=inputs)
    loaded = loaded or load_model(config.model, device=config.device, dtype=config.model_dtype)
    layers = resolve_layers(config.layers, loaded.num_layers)
    if stop is not None and stop.layer not in layers:
        layers = sorted(set(layers) | {stop.layer})
    template = resolve_template(config.template, loaded.tokenizer)
    _check_context(prompts, loaded, template, config.max_new_tokens)
    writer = _StoreWriter(claim_output(out_dir.file("store"), "generate", (), overwrite=overwrite), prompts, layers, loaded, template, config, stop)
    groups_per_batch = max(1, config.batch_size // config.samples)

    t0 = time.perf_counter()
    fed = resumed = n_fallback = 0
    trajectories, finals = [], []
    task = or_null(progress).task("generate", len(prompts) * config.samples * config.max_new_tokens, unit="tokens")
    try:
        for g0 in range(0, len(prompts), groups_per_batch):
            seqs = [_Sequence(pi, k, prompt_ids(loaded.tokenizer, prompts[pi].prompt, template), sequence_generator(config.seed, pi, k))
                    for pi in range(g0, min(len(prompts), g0 + groups_per_batch)) for k in range(config.samples)]
            fed += _decode(loaded, seqs, layers, config, stop, task)
            fallback = _fallback_groups(seqs) if stop is not None else set()
            if fallback:
                resume = [s for s in seqs if s.prompt_index in fallback and not s.complete]
                resumed += _decode(loaded, resume, layers, config, None, task) if resume else 0
                n_fallback += len(fallback)
            batch = [(s, s.prompt_index in fallback) for s in seqs]
            batch_trajectories = [_trajectory(prompts[s.prompt_index], s, loaded.tokenizer, parse, fallback) for s, fallback in batch]
            writer.add([s for s, _ in batch], batch_trajectories)
            trajectories += batch_trajectories
            finals += [_summary(s) for s, _ in batch]
    finally:
        task.close()
    seconds = time.perf_counter() - t0
    manifest = writer.close(trajectories)
    write_trajectories(out_dir.file("trajectories.jsonl"), trajectories)
    write_pairs(out_dir.file("pairs.jsonl"), derive_pairs(trajectories))
    labels = [t.label for t in trajectories if t.label is not None]
    stats = {
        "n_prompts": len(prompts), "n_trajectories": len(trajectories), "layers": layers, "template": template,
        "tokens_generated": int(fed + resumed), "tokens_resumed_for_fallback": int(resumed),
        "seconds": round(seconds, 3), "tokens_per_second": round((fed + resumed) / seconds, 1) if seconds > 0 else None,
        "n_hit_max_new_tokens": sum(f["hit_limit"] for f in finals),
        "n_stopped_early": sum(f["dropped_at"] >= 0 for f in finals),
        "n_fallback_groups": n_fallback,
        "n_labelled": len(labels), "accuracy_per_sample": float(np.mean(labels)) if labels else None,
        "online_filter": None if stop is None else {"checkpoint": stop.checkpoint, "layer": stop.layer, "goal": stop.goal,
                                                     "threshold": stop.threshold, "threshold_chosen_on": stop.chosen_on,
                                                     "skip_first": stop.skip_first},
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "store_cache_key": manifest["cache_key"],
    }
    write_json(out_dir.file("generation.json"), stats)
    return GenerateResult(out_dir.path, stats, trajectories)


def _check_context(prompts: list[Prompt], loaded, template: str, max_new_tokens: int) -> None:
    """Refuse, before any work, a prompt that cannot fit the model's context together with the new tokens."""
    from probekit.extract.render import prompt_ids

    limit = getattr(loaded.model.config, "max_position_embeddings", None)
    if not limit:
        return
    for p in prompts:
        n = len(prompt_ids(loaded.tokenizer, p.prompt, template))
        if n + max_new_tokens > limit:
            raise ProbekitError(f"prompt '{p.id}': {n} tokens + --max-new-tokens {max_new_tokens} exceed the model's context of {limit} tokens")


def _fallback_groups(seqs: list[_Sequence]) -> set[int]:
    """Prompts whose samples were all stopped: their samples are resumed where they stopped, for the fallback vote.

    A stopped sample keeps its tokens, states and random stream, so resuming it
    gives exactly the sample an unfiltered run would have produced.
    """
    stopped: dict[int, bool] = {}
    for s in seqs:
        stopped[s.prompt_index] = stopped.get(s.prompt_index, True) and s.dropped_at >= 0
    return {p for p, all_stopped in stopped.items() if all_stopped}


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
