"""`probekit generate`: sample with the frozen LM, keep the states it computes, stop bad samples as they go.

For every prompt, `samples` completions are decoded with a KV cache by
continuous batching (`probekit.generate.decoding`): up to `batch_size` rows decode at
once, a row whose sample ends leaves the cache at once and a queued sample
takes its place, so a batch never waits for its longest sample. The hooks
that extraction uses (`probekit.extract.forward.capture_layers`) capture each
new token's hidden states at the requested layers during the same forward
pass that produces the next token's logits, so the store is written without
a second pass over the text, and equals (within the storage dtype) what
`probekit extract` computes on the generated text.

Online early stopping (`OnlineStop`) applies the filter's rule
(`probekit.filter.early_stop`) token by token: a sequence is stopped at its first
token at position >= skip_first whose Q-value toward the goal is below the
threshold, and leaves the batch (its row of the KV cache is freed for the
next sample), so its compute is really saved. Q is scored by the one scorer
on the state rounded to the storage dtype, exactly the number `probekit
filter` would read from the store, so online and after-the-fact decisions
agree. A group whose samples are all stopped falls back, as in the filter,
to voting over all of them: each is resumed where it stopped (it goes to the
front of the queue with the copy of its KV rows kept while its group was
undecided, or, past that memory budget, its prompt and tokens are prefilled
again; its own random stream, `probekit.generate.sampling`, continues from where it
was), so it ends exactly as an unfiltered sample would, and only the tokens
decoded after the stop count again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.data.answers import get_parser, grade
from probekit.data.prompts import Prompt
from probekit.data.schema import Trajectory, derive_pairs, write_pairs, write_trajectories
from probekit.errors import ProbekitError
from probekit.extract.forward import STORE_DTYPES, require_kv_attention
from probekit.extract.manifest import MODEL_DTYPE, build_manifest, describe_model, finalize
from probekit.extract.render import COMPLETION_IDS, prompt_ids, resolve_template
from probekit.generate.config import GenerateConfig
from probekit.generate.decoding import Sample, Scheduler
from probekit.generate.stopping import OnlineStop
from probekit.io import write_json
from probekit.models import dtype_name, load_model, resolve_layers
from probekit.outputs import OutputDir, claim_output
from probekit.progress import Progress, or_null
from probekit.store import MANIFEST, PAIRS, StoredTrajectory, read_shard_attrs, shard_data, shard_name, write_shard


@dataclass
class GenerateResult:
    out: Path
    stats: dict
    trajectories: list  # probekit.data.schema.Trajectory, in (prompt, sample) order


def generate(prompts: list[Prompt], out: str | Path, config: GenerateConfig = GenerateConfig(), *, stop: OnlineStop | None = None,
             loaded=None, overwrite: bool = False, inputs: tuple = (), progress: Progress | None = None) -> GenerateResult:
    """Sample, grade and store: out/trajectories.jsonl, out/pairs.jsonl, out/store/ (a probekit store), out/generation.json.

    Samples decode with continuous batching (`probekit.generate.decoding`); each prompt's
    samples are graded and their states go to the store's shards as soon as
    that prompt and every earlier one are finished, so memory is bounded by
    a few batches of samples and one shard, whatever the number of prompts.
    """
    config.validate()
    parse = get_parser(config.answer)
    out_dir = claim_output(out, "generate", ("trajectories.jsonl", "pairs.jsonl", "store", "generation.json"), overwrite=overwrite, inputs=inputs)
    loaded = loaded or load_model(config.model, device=config.device, dtype=config.model_dtype)
    require_kv_attention(loaded.model, "generate")
    layers = resolve_layers(config.layers, loaded.num_layers)
    if stop is not None and stop.layer not in layers:
        layers = sorted(set(layers) | {stop.layer})
    template = resolve_template(config.template, loaded.tokenizer)
    contexts = [prompt_ids(loaded.tokenizer, p.prompt, template) for p in prompts]
    _check_context(prompts, contexts, loaded, config.max_new_tokens)
    writer = StoreWriter(claim_output(out_dir.file("store"), "generate", (), overwrite=overwrite),
                         generated_manifest(prompts, layers, loaded, template, config, stop), layers, config.dtype, config.shard_size)

    trajectories, finals = [], []

    def emit(seqs: list[Sample], fallback: bool) -> None:
        group = [_trajectory(prompts[s.prompt_index], s, loaded.tokenizer, parse, fallback) for s in seqs]
        writer.add(seqs, group)
        trajectories.extend(group)
        finals.extend(_summary(s) for s in seqs)

    t0 = time.perf_counter()
    task = or_null(progress).task("generate", len(prompts) * config.samples * config.max_new_tokens, unit="tokens")
    try:
        counts = Scheduler(loaded, contexts, layers, config.decoding(), stop, emit).run(task)
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
        "seconds_admitting": round(counts.admit_seconds, 3), "seconds_decoding": round(counts.decode_seconds, 3),
        "prefill_tokens": int(counts.prefill_tokens),
        "n_hit_max_new_tokens": sum(f["hit_limit"] for f in finals),
        "n_stopped_early": sum(f["dropped_at"] >= 0 for f in finals),
        "n_fallback_groups": counts.n_fallback, "n_fallback_resumes_prefilled": counts.n_resumes_prefilled,
        "decode_steps": counts.steps, "mean_rows_per_step": round(tokens / counts.steps, 2) if counts.steps else None,
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


def _summary(s: Sample) -> dict:
    return {"dropped_at": s.dropped_at, "hit_limit": s.hit_limit}


def _trajectory(p: Prompt, s: Sample, tokenizer, parse, fallback: bool):
    """The record of one sample. A sample stopped early has no final answer and no label; a fallback one has both."""
    text = tokenizer.decode(s.tokens, skip_special_tokens=True)
    stopped = s.dropped_at >= 0 and not fallback
    answer = None if stopped else parse(text)
    label = None if stopped or p.gold is None else grade(answer, p.gold)
    meta = {"sample": s.sample_index, "tokens": len(s.tokens), "hit_max_new_tokens": s.hit_limit, COMPLETION_IDS: list(s.tokens)}
    if s.dropped_at >= 0:
        meta.update(dropped_at=s.dropped_at, fallback=fallback)
    return Trajectory(id=f"{p.id}-{s.sample_index}", group=p.id, prompt=p.prompt, completion=text, label=label, answer=answer, meta=meta)


def generated_manifest(prompts: list[Prompt], layers: list[int], loaded, template: str, config: GenerateConfig, stop: OnlineStop | None) -> dict:
    """The manifest of a generated store: its cache key records every setting that changes the samples."""
    n = len(prompts) * config.samples
    prompts_sha = hashlib.sha256("\x00".join(f"{p.id}\x00{p.prompt}" for p in prompts).encode()).hexdigest()
    key = {"model_sha256": loaded.file_sha256 or loaded.source, MODEL_DTYPE: dtype_name(loaded.dtype), "layers": layers, "template": template,
           "positions": "all", "dtype": config.dtype, "shard_size": config.shard_size, "prompts_sha256": prompts_sha,
           "generated": {k: getattr(config, k) for k in ("samples", "max_new_tokens", "temperature", "top_p", "seed", "answer", "stop")},
           "online_filter": None if stop is None else [stop.checkpoint, stop.goal, stop.threshold, stop.skip_first]}
    return build_manifest(key, {
        **describe_model(loaded),
        "layers": layers, "dtype": config.dtype, "template": template, "positions": "all", "max_length": None,
        "data": {"trajectories": "../trajectories.jsonl", "n_trajectories": n, "generated": True},
        "shards": {"n": (n + config.shard_size - 1) // config.shard_size, "size": config.shard_size},
    })


class StoreWriter:
    """Writes the captured states as a probekit store (the layout `probekit extract` writes), a shard as soon as it fills."""

    def __init__(self, store_dir: OutputDir, manifest: dict, layers: list[int], dtype: str, shard_size: int):
        self.dir, self.manifest, self.layers, self.shard_size = store_dir, manifest, layers, shard_size
        self.np_dtype = STORE_DTYPES[dtype][1]
        write_json(store_dir.file(MANIFEST), manifest)
        self.pending: list[tuple[Sample, Trajectory]] = []
        self.paths: list[Path] = []

    def add(self, seqs: list[Sample], trajectories: list) -> None:
        self.pending += list(zip(seqs, trajectories))
        while len(self.pending) >= self.shard_size:
            self._flush(self.shard_size)

    def close(self, trajectories: list) -> dict:
        if self.pending:
            self._flush(len(self.pending))
        write_pairs(self.dir.file(PAIRS), derive_pairs(trajectories))
        return finalize(self.dir.path, self.manifest, [read_shard_attrs(p) for p in self.paths])

    def _flush(self, n: int) -> None:
        part, self.pending = self.pending[:n], self.pending[n:]
        stored = [StoredTrajectory(t.id, t.group, t.answer, t.label, np.arange(len(s.tokens)),
                                   {layer: np.stack(s.states[layer]) for layer in self.layers}, len(s.tokens)) for s, t in part]
        index = len(self.paths)
        data = shard_data(stored, self.layers, self.np_dtype, n_tokens_processed=sum(len(s.tokens) for s, _ in part),
                          cache_key=self.manifest["cache_key"], shard_index=index, seconds=0.0, model_dtype=self.manifest["model"]["dtype"])
        self.paths.append(self.dir.file(shard_name(index)))
        write_shard(self.paths[-1], data)
