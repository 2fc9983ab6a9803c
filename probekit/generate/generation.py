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
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probekit.data.answers import get_parser, grade
from probekit.data.prompts import Prompt
from probekit.data.schema import Trajectory, derive_pairs, write_pairs, write_trajectories
from probekit.errors import Interrupted
from probekit.extract.forward import STORE_DTYPES, require_kv_attention
from probekit.extract.manifest import MODEL_DTYPE, build_manifest, describe_model, finalize
from probekit.extract.render import COMPLETION_IDS, prompt_ids, resolve_template
from probekit.generate.config import GenerateConfig
from probekit.generate.decoding import Sample, Scheduler
from probekit.generate.stopping import OnlineStop, check_context
from probekit.io import atomic_path, write_json
from probekit.models import dtype_name, load_model, resolve_layers
from probekit.outputs import OutputDir, claim_output, write_marker
from probekit.probe.checkpoint import check_model
from probekit.progress import Progress, or_null
from probekit.store import MANIFEST, PAIRS, StoredTrajectory, read_shard_attrs, shard_data, shard_is_complete, shard_name, write_shard


@dataclass
class GenerateResult:
    out: Path
    stats: dict
    trajectories: list  # probekit.data.schema.Trajectory, in (prompt, sample) order


OUTPUTS = ("trajectories.jsonl", "pairs.jsonl", "store", "generation.json")
JOURNAL = "trajectories.partial.jsonl"  # in the staging area: the finished prompts' records, in order


def generate(prompts: list[Prompt], out: str | Path, config: GenerateConfig = GenerateConfig(), *, stop: OnlineStop | None = None,
             loaded=None, overwrite: bool = False, inputs: tuple = (), progress: Progress | None = None) -> GenerateResult:
    """Sample, grade and store: out/trajectories.jsonl, out/pairs.jsonl, out/store/ (a probekit store), out/generation.json.

    Samples decode with continuous batching (`probekit.generate.decoding`); each prompt's
    samples are graded and their states go to the store's shards as soon as
    that prompt and every earlier one are finished, so memory is bounded by
    a few batches of samples and one shard, whatever the number of prompts.

    The four outputs are one set (`probekit.outputs.OutputDir.commit_set`):
    until every prompt is done they are built in the folder's staging area, and
    an earlier output stays in place, whole. Interrupted, the staging area keeps
    the finished prompts of the complete shards and their records; a re-run with
    the same settings resumes after them (a prompt cut by a shard boundary is
    sampled again and only its samples not yet stored are kept), so the output
    is the one an uninterrupted run writes.
    """
    config.validate()
    parse = get_parser(config.answer)
    inputs = (*inputs, *(stop.inputs if stop is not None else ()))
    with claim_output(out, "generate", OUTPUTS, overwrite=overwrite, inputs=inputs, resume=True) as out_dir:
        loaded = loaded or load_model(config.model, device=config.device, dtype=config.model_dtype)
        require_kv_attention(loaded.model, "generate")
        if stop is not None:
            check_model(stop.ckpt, loaded)
        layers = resolve_layers(config.layers, loaded.num_layers)
        if stop is not None and stop.layer not in layers:
            layers = sorted(set(layers) | {stop.layer})
        template = resolve_template(config.template, loaded.tokenizer)
        contexts = [prompt_ids(loaded.tokenizer, p.prompt, template) for p in prompts]
        check_context(prompts, contexts, loaded, config.max_new_tokens)
        manifest = generated_manifest(prompts, layers, loaded, template, config, stop)
        with out_dir.commit_set(last=(f"store/{MANIFEST}",), keep=True):
            return _generate(prompts, out_dir, config, stop, loaded, layers, template, contexts, manifest, parse, progress)


def _generate(prompts, out_dir: OutputDir, config: GenerateConfig, stop, loaded, layers, template, contexts, manifest, parse,
              progress) -> GenerateResult:
    resumable = out_dir.resume_key(manifest["cache_key"])
    writer = StoreWriter(out_dir.file("store"), manifest, layers, config.dtype, config.shard_size)
    journal_path = out_dir.scratch(JOURNAL)
    trajectories, skip = _resume(writer, journal_path, config) if resumable else ([], 0)
    start = len(trajectories) // config.samples  # prompts whose every sample is stored
    if not resumable:
        journal_path.unlink(missing_ok=True)

    def emit(seqs: list[Sample], fallback: bool) -> None:
        nonlocal skip
        n_samples = len(seqs)  # the whole prompt was decoded again, its stored samples too
        group = [_trajectory(prompts[s.prompt_index], s, loaded.tokenizer, parse, fallback) for s in seqs]
        seqs, group, skip = seqs[skip:], group[skip:], 0  # the samples of a cut prompt already in a complete shard
        journal.write("".join(json.dumps(t.to_record(), ensure_ascii=False) + "\n" for t in group))
        journal.flush()
        writer.add(seqs, group)
        trajectories.extend(group)
        task.advance(n_samples)

    t0 = time.perf_counter()
    # Samples are what can be counted out of a known total (a sample's tokens are not known before it ends); each
    # decoding step's note says the tokens decoded so far.
    task = or_null(progress).task("generate", (len(prompts) - start) * config.samples, unit="samples")
    try:
        with open(journal_path, "a", encoding="utf-8") as journal:
            counts = Scheduler(loaded, contexts, layers, config.decoding(), stop, emit, start=start).run(task)
    except KeyboardInterrupt as exc:
        kept = len(writer.paths) * config.shard_size // config.samples
        raise Interrupted(f"{len(trajectories) // config.samples} of {len(prompts)} prompts were finished; the {kept} in complete shards "
                          f"are kept in {out_dir.staging}, and re-running the same command resumes after them "
                          f"({out_dir.path} is unchanged until every prompt is done)") from exc
    finally:
        task.close()
    seconds = time.perf_counter() - t0
    manifest = writer.close(trajectories)
    write_trajectories(out_dir.file("trajectories.jsonl"), trajectories)
    write_pairs(out_dir.file("pairs.jsonl"), derive_pairs(trajectories))
    labels = [t.label for t in trajectories if t.label is not None]
    fed, resumed = _token_counts(trajectories)
    tokens = counts.fed + counts.resumed  # decoded by this run
    stats = {
        "n_prompts": len(prompts), "n_trajectories": len(trajectories), "layers": layers, "template": template,
        "tokens_generated": int(fed + resumed), "tokens_resumed_for_fallback": int(resumed),
        "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "seconds_admitting": round(counts.admit_seconds, 3), "seconds_decoding": round(counts.decode_seconds, 3),
        "prefill_tokens": int(counts.prefill_tokens),
        "n_hit_max_new_tokens": sum(bool(t.meta["hit_max_new_tokens"]) for t in trajectories),
        "n_stopped_early": sum(t.meta.get("dropped_at", -1) >= 0 for t in trajectories),
        "n_fallback_groups": len({t.group for t in trajectories if t.meta.get("fallback")}),
        "n_fallback_resumes_prefilled": counts.n_resumes_prefilled,
        "decode_steps": counts.steps, "mean_rows_per_step": round(tokens / counts.steps, 2) if counts.steps else None,
        "peak_samples_held": counts.peak_held,
        "n_labelled": len(labels), "accuracy_per_sample": float(np.mean(labels)) if labels else None,
        "online_filter": None if stop is None else {"checkpoint": stop.checkpoint, "layer": stop.layer, "goal": stop.goal,
                                                     "threshold": stop.threshold, "threshold_chosen_on": stop.chosen_on,
                                                     "skip_first": stop.skip_first},
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "store_cache_key": manifest["cache_key"],
        # An interrupted run resumed: prompts finished by earlier runs (their tokens count above; seconds, steps and
        # prefill are this run's).
        "n_prompts_resumed": start,
    }
    write_json(out_dir.file("generation.json"), stats)
    return GenerateResult(out_dir.path, stats, trajectories)


def _token_counts(trajectories: list[Trajectory]) -> tuple[int, int]:
    """(tokens decoded before any fallback, tokens decoded by fallback resumes) of the samples: the scheduler's counts, from the records.

    A sample stopped online was decoded up to its stop (dropped_at + 1 tokens); a
    fallback resume decoded the rest; every other sample decoded its tokens.
    """
    fed = resumed = 0
    for t in trajectories:
        n, dropped = int(t.meta["tokens"]), int(t.meta.get("dropped_at", -1))
        if dropped < 0:
            fed += n
        else:
            fed += dropped + 1
            resumed += n - dropped - 1 if t.meta.get("fallback") else 0
    return fed, resumed


def _resume(writer: "StoreWriter", journal_path: Path, config: GenerateConfig) -> tuple[list[Trajectory], int]:
    """(records of the stored samples, how many samples of the next prompt are stored) of an interrupted run's staged work.

    The complete shards in order are kept (their samples are finished and
    recorded in the journal, which is written before a shard is); a later or
    partial shard and the records past the last complete shard are dropped, so
    the re-run continues from a shard boundary exactly as the first run would have.
    """
    records = []
    try:
        with open(journal_path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    records.append(Trajectory(**json.loads(line)))
                except (ValueError, TypeError):
                    break  # a line cut short by a kill: everything before it is whole
    except FileNotFoundError:
        pass
    n_shards = writer.keep_complete(len(records) // config.shard_size)
    done = records[: n_shards * config.shard_size]
    with atomic_path(journal_path) as tmp:
        tmp.write_text("".join(json.dumps(t.to_record(), ensure_ascii=False) + "\n" for t in done), encoding="utf-8")
    return done, len(done) % config.samples


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
    """Writes the captured states as a probekit store (the layout `probekit extract` writes), a shard as soon as it fills.

    `path` is the store's folder (in generate's staging area until the set is committed).
    """

    def __init__(self, path: Path, manifest: dict, layers: list[int], dtype: str, shard_size: int):
        self.path, self.manifest, self.layers, self.shard_size = Path(path), manifest, layers, shard_size
        self.np_dtype = STORE_DTYPES[dtype][1]
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / MANIFEST, manifest)
        self.pending: list[tuple[Sample, Trajectory]] = []
        self.paths: list[Path] = []

    def keep_complete(self, most: int) -> int:
        """Keep the leading complete shards of an interrupted run (at most `most`), remove any other shard; return how many are kept."""
        n = 0
        while n < most and shard_is_complete(self.path / shard_name(n), self.manifest["cache_key"]):
            n += 1
        for p in self.path.iterdir():
            stale = p.name.endswith(".tmp") or (p.name.startswith("shard-") and p.name not in {shard_name(i) for i in range(n)})
            if stale and p.is_file():
                p.unlink()
        self.paths = [self.path / shard_name(i) for i in range(n)]
        return n

    def add(self, seqs: list[Sample], trajectories: list) -> None:
        self.pending += list(zip(seqs, trajectories))
        while len(self.pending) >= self.shard_size:
            self._flush(self.shard_size)

    def close(self, trajectories: list) -> dict:
        if self.pending:
            self._flush(len(self.pending))
        write_pairs(self.path / PAIRS, derive_pairs(trajectories))
        done = finalize(self.path, self.manifest, [read_shard_attrs(p) for p in self.paths])
        write_marker(self.path, "generate", [MANIFEST, PAIRS, *(p.name for p in self.paths)])
        return done

    def _flush(self, n: int) -> None:
        part, self.pending = self.pending[:n], self.pending[n:]
        stored = [StoredTrajectory(t.id, t.group, t.answer, t.label, np.arange(len(s.tokens)),
                                   {layer: np.stack(s.states[layer]) for layer in self.layers}, len(s.tokens)) for s, t in part]
        index = len(self.paths)
        data = shard_data(stored, self.layers, self.np_dtype, n_tokens_processed=sum(len(s.tokens) for s, _ in part),
                          cache_key=self.manifest["cache_key"], shard_index=index, seconds=0.0, model_dtype=self.manifest["model"]["dtype"])
        self.paths.append(self.path / shard_name(index))
        write_shard(self.paths[-1], data)
