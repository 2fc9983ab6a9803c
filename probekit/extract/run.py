"""Extraction driver: trajectories in, a resumable sharded store out.

Work is cut into shards of `shard_size` trajectories in input order. A rank
(torchrun's RANK/WORLD_SIZE, or `--shard i/N`) takes shards i, i+N, ...; the
shard layout does not depend on the number of ranks, so one process and N
processes write byte-for-byte the same set of shard files. A shard that is
already complete is skipped, which is what makes re-running a command resume;
one whose file no longer matches the checksum the manifest recorded (damaged
since) is extracted again.

Each shard is written while holding its lock file (`.shard-NNNNN.h5.lock`), so
two processes pointed at one `--out` never write, or clean up after, the same
shard: a shard locked by another live process is skipped and reported, and a
dead process's lock is released by the operating system.

With `--overlap` (opt-in) the states' way to the host (the cast to the
store's dtype, the finiteness checks, the device-to-host copies) and the HDF5
write of each shard run on a writer thread (`probekit.extract.lane`), so the
forward of the next batch and of the next shard does not wait for them. A
shard's lock is held until its write has finished, and the stores written
with and without the overlap are identical (tests/test_extract_overlap.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from probekit.data.schema import Trajectory, derive_pairs, read_pairs, read_trajectories, write_pairs
from probekit.errors import Interrupted, ProbekitError
from probekit.extract.forward import (STORE_DTYPES, StagedStates, checked_states, forward_layers, forward_layers_shared, host_states,
                                     kv_attention_everywhere, stage_states, to_device)
from probekit.extract.lane import Lane
from probekit.extract.manifest import MODEL_DTYPE, build_manifest, check_existing, damaged_shards, describe_model, finalize
from probekit.extract.options import ExtractOptions, parse_rank
from probekit.extract.plan import batch_token_budget, length_buckets, parse_positions, select_positions, shared_prompts
from probekit.extract.render import Encoded, Rendering, encode_all, resolve_template, template_record
from probekit.io import sha256_file, write_json
from probekit.models import LoadedModel, dtype_name, load_model, resolve_layers
from probekit.outputs import OutputDir, claim_output
from probekit.progress import Progress, or_null
from probekit.store import MANIFEST, PAIRS, ShardData, StoredTrajectory, read_shard_attrs, shard_data, shard_is_complete, shard_name, write_shard


@dataclass
class ExtractResult:
    out: Path
    manifest: dict
    shards_done: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    shards_busy: list[int] = field(default_factory=list)  # held by another live process, left to it
    complete: bool = False
    n_truncated: int = 0
    n_skipped_invalid: int = 0


def _device_for_rank(loaded: LoadedModel, rank: int) -> None:
    """Under torchrun on a multi-GPU machine each rank uses its LOCAL_RANK GPU."""
    local = os.environ.get("LOCAL_RANK")
    if local is not None and loaded.device.type == "cuda" and torch.cuda.device_count() > 1:
        loaded.device = torch.device("cuda", int(local))
        loaded.model.to(loaded.device)


def lock_name(index: int) -> str:
    """The lock file of shard `index`: a dot file next to it, named after it."""
    return f".{shard_name(index)}.lock"


def store_outputs(n_shards: int) -> list[str]:
    """Every name extract may write in --out, the same for every process writing the store."""
    shards = [name for s in range(n_shards) for name in (shard_name(s), lock_name(s))]
    return [MANIFEST, PAIRS, *shards]


def extract(opts: ExtractOptions, loaded: LoadedModel | None = None, progress: Progress | None = None) -> ExtractResult:
    """Extract `opts.trajectories` into the store `opts.out`, resuming it; `progress` reports tokens done."""
    opts.validate()
    stride = parse_positions(opts.positions)
    rank, world = parse_rank(opts.shard)
    trajectories, n_invalid = read_trajectories(opts.trajectories, skip_invalid=opts.skip_invalid)
    pairs = read_pairs(opts.pairs, trajectories) if opts.pairs else derive_pairs(trajectories)
    n_shards = (len(trajectories) + opts.shard_size - 1) // opts.shard_size
    # Claimed before the model loads: a refused, read-only or busy --out fails in a second. The ranks of one
    # run share the folder's lock; each shard has its own.
    outputs = store_outputs(n_shards)
    with claim_output(opts.out, "extract", outputs, overwrite=opts.overwrite, inputs=[opts.trajectories, opts.pairs], shared=True) as out_dir:
        out_dir.record(*outputs)
        return _extract(opts, out_dir, trajectories, pairs, n_invalid, n_shards, rank, world, stride, loaded, progress)


def _extract(opts: ExtractOptions, out_dir: OutputDir, trajectories: list[Trajectory], pairs, n_invalid: int, n_shards: int,
             rank: int, world: int, stride: int, loaded: LoadedModel | None, progress: Progress | None) -> ExtractResult:
    loaded = loaded or load_model(opts.model, device=opts.device, dtype=opts.model_dtype)
    _device_for_rank(loaded, rank)
    layers = resolve_layers(opts.layers, loaded.num_layers)
    template = resolve_template(opts.template, loaded.tokenizer)

    key_fields = {
        "model_sha256": loaded.file_sha256 or loaded.source,
        MODEL_DTYPE: dtype_name(loaded.dtype),
        "layers": layers,
        "template": template,
        "positions": opts.positions,
        "max_length": opts.max_length,
        "dtype": opts.dtype,
        "shard_size": opts.shard_size,
        "data_sha256": sha256_file(opts.trajectories),
        "pairs_sha256": sha256_file(opts.pairs) if opts.pairs else "derived",
        "skip_invalid": opts.skip_invalid,
    }
    manifest = build_manifest(
        key_fields,
        {
            **describe_model(loaded),
            "layers": layers,
            "dtype": opts.dtype,
            "template": template,
            "rendering": template_record(loaded.tokenizer, template),
            "positions": opts.positions,
            "max_length": opts.max_length,
            "data": {
                "trajectories": str(opts.trajectories),
                "sha256": key_fields["data_sha256"],
                "pairs": str(opts.pairs) if opts.pairs else None,
                "n_trajectories": len(trajectories),
                "n_pairs": len(pairs),
                "n_skipped_invalid": n_invalid,
            },
            "shards": {"n": n_shards, "size": opts.shard_size},
        },
    )
    out = out_dir.path
    resumed = check_existing(out, manifest, opts.overwrite)
    resume = resumed is not None
    manifest = resumed or manifest
    if not resume:
        if (out / MANIFEST).exists():
            out_dir.exclusive()  # replacing another store (--overwrite): no other rank may be writing it
        _remove_old_shards(out_dir)
    if not resume or rank == 0:
        write_json(out_dir.file(MANIFEST), manifest)
    write_pairs(out_dir.file(PAIRS), pairs)

    mine = list(range(rank, n_shards, world))
    complete = [s for s in mine if shard_is_complete(out / shard_name(s), manifest["cache_key"])]
    damaged = set(damaged_shards(out, manifest, complete))  # changed since the manifest recorded them: extracted again
    todo = [s for s in mine if s not in complete or s in damaged]
    result = ExtractResult(out=out, manifest=manifest, shards_skipped=[s for s in mine if s not in todo], n_skipped_invalid=n_invalid)

    rendering = Rendering.of(loaded.tokenizer, template, opts.max_length)
    encoded = {s: _encode_shard(trajectories, s, opts, loaded.tokenizer, rendering) for s in todo}
    task = or_null(progress).task("extract", sum(len(e.input_ids) for enc in encoded.values() for e in enc), "tokens")
    try:
        # Exits run in reverse: the lane finishes the writes already given to it before the locks still held
        # are released, so no shard is written, or left half-written, without its lock.
        with _InterruptGuard(f"complete shards are kept in {out}; re-run the same command to resume") as guard, \
                contextlib.ExitStack() as locks, Lane(opts.overlap) as lane:
            writing: list[tuple[int, Future, _ShardLock]] = []  # shards whose write may not have finished yet
            for s in todo:
                lock = locks.enter_context(_ShardLock(out, s))
                if not lock.held:
                    result.shards_busy.append(s)
                elif s not in damaged and shard_is_complete(out / shard_name(s), manifest["cache_key"]):
                    result.shards_skipped.append(s)  # finished by another process since `todo` was made
                    lock.release()
                else:
                    writing.append((s, _write_one_shard(out, s, trajectories, encoded[s], loaded, layers, stride, opts, manifest,
                                                        task, guard, lane), lock))
                    _settle(writing, result, guard, keep=1)  # shard s - 1's write overlaps shard s's forward
            _settle(writing, result, guard, keep=0)
    finally:
        task.close()

    all_paths = [out / shard_name(s) for s in range(n_shards)]
    if all(shard_is_complete(p, manifest["cache_key"]) for p in all_paths):
        recorded = manifest["shards"].get("checksums") or []
        unchanged = {s: recorded[s] for s in complete if s not in damaged and s < len(recorded)}  # hashed just now, found as recorded
        result.manifest = finalize(out, manifest, [read_shard_attrs(p) for p in all_paths], unchanged)
        result.complete = True
        result.n_truncated = result.manifest["stats"]["n_truncated"]
    return result


def _remove_old_shards(out_dir: OutputDir) -> None:
    """Before writing a new store over a different one (--overwrite): delete the old shards probekit wrote, nothing else."""
    for name in sorted(out_dir.owned):
        path = out_dir.path / name
        if path.match("shard-*.h5") and path.is_file():
            path.unlink()


def _settle(writing: list[tuple[int, Future, "_ShardLock"]], result: ExtractResult, guard: "_InterruptGuard", keep: int) -> None:
    """Wait for the writes of all but the `keep` newest shards in `writing`: a failed write raises its error here
    (one line, as when it ran in this thread); a finished one is recorded done and its lock released."""
    while len(writing) > keep:
        s, future, lock = writing.pop(0)
        future.result()
        lock.release()
        result.shards_done.append(s)
        guard.check()


def _write_one_shard(
    out: Path, s: int, trajectories: list[Trajectory], encoded: list[Encoded], loaded: LoadedModel,
    layers: list[int], stride: int, opts: ExtractOptions, manifest: dict, task, guard: "_InterruptGuard", lane: Lane,
) -> Future:
    """Compute shard `s` here and write it on `lane`; returns the write's future. The caller holds the shard's lock
    until that is done, so temporary files of this shard are stale."""
    for stale in out.glob(f".{shard_name(s)}.*.tmp"):
        stale.unlink()  # left by a killed run; never read as a shard

    def advance(n: int) -> None:
        task.advance(n)
        guard.check()

    lo = s * opts.shard_size
    t0 = time.perf_counter()
    built = build_shard(trajectories[lo : lo + opts.shard_size], encoded, loaded, layers, stride, opts, advance, lane=lane)

    def write() -> None:
        data = built.result()  # done: the lane runs its jobs in order
        data.attrs.update(
            cache_key=manifest["cache_key"],
            shard_index=s,
            seconds=time.perf_counter() - t0,
            model_dtype=dtype_name(loaded.dtype),
        )
        write_shard(out / shard_name(s), data)

    return lane.submit(write)


def _encode_shard(trajectories: list[Trajectory], s: int, opts: ExtractOptions, tokenizer, rendering: Rendering) -> list[Encoded]:
    lo = s * opts.shard_size
    return encode_all(trajectories[lo : lo + opts.shard_size], tokenizer, rendering, opts.trajectories, first=lo)


class _ShardLock:
    """Hold shard `s`'s lock file without waiting; `held` says whether it is held.

    Another live process holding it is writing that shard, so this one leaves
    it alone rather than waiting for work that is already being done.
    """

    def __init__(self, out: Path, s: int):
        self._lock = FileLock(out / lock_name(s), timeout=0)
        self.held = False

    def __enter__(self) -> "_ShardLock":
        try:
            self._lock.acquire()
            self.held = True
        except Timeout:
            self.held = False
        return self

    def release(self) -> None:
        """Let the shard go (again: nothing), once its write has finished."""
        if self.held:
            self._lock.release()
            self.held = False

    def __exit__(self, *exc) -> None:
        self.release()


class _InterruptGuard:
    """Make Ctrl-C stop extraction even when Python swallows the KeyboardInterrupt.

    SIGINT raises KeyboardInterrupt in whatever Python code runs next; when that
    is a weakref callback or a finalizer (h5py and torch run them during a shard
    write), Python prints "Exception ignored" and carries on, and the run used
    to finish with status 0. The handler installed here also records the
    interrupt, and `check()` (after every batch and shard) raises it again.
    It is installed only where Python's own handler is (the main thread, SIGINT
    not ignored), so a caller's or shell's choice is respected.
    """

    def __init__(self, kept: str = "") -> None:
        self.interrupted = False
        self.kept = kept  # what was kept, for the message (`probekit.errors.Interrupted`)
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.interrupted = True
        raise Interrupted(self.kept)

    def check(self) -> None:
        if self.interrupted:
            raise Interrupted(self.kept)

    def __enter__(self) -> "_InterruptGuard":
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if exc_type is None:
            self.check()


def build_shard(
    trajs: list[Trajectory],
    encoded: list[Encoded],
    loaded: LoadedModel,
    layers: list[int],
    stride: int,
    opts: ExtractOptions,
    advance=lambda n: None,
    lane: Lane | None = None,
) -> "Future[ShardData]":
    """Run the truncated forward over one shard in length buckets; return the future of its arrays in input order.

    Trajectories that share their prompt tokens (n samples of one question)
    run the prompt once and their completions on its KV cache
    (`--share-prompts`, models whose every layer is full or sliding-window
    attention); the others run prompt + completion in one pass.

    The forwards run here. Each batch's kept rows are gathered and their move
    to the host started here too (`stage_states`); finishing it (waiting for
    the copy, the checks, the cast on a CPU) and assembling the shard are jobs
    on `lane`, the writer thread, so the next forward need not wait for them.
    Without a lane they run here at once, and the future is done on return.
    """
    lane = lane or Lane(overlap=False)
    overlap = lane.overlap
    torch_dtype, np_dtype = STORE_DTYPES[opts.dtype]
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    device = loaded.device
    budget = batch_token_budget(opts.max_batch_tokens, device)
    per_traj: list[dict[int, np.ndarray]] = [{} for _ in trajs]
    per_pos = [select_positions(e.completion_cut, e.completion_tokens, stride) for e in encoded]

    def collect(batch: list[int], staged: dict[int, StagedStates], cols: list[np.ndarray]) -> None:  # on the lane
        for layer in layers:
            for i, rows in zip(batch, _host_rows(staged[layer], cols, torch_dtype, [trajs[i].id for i in batch], layer, opts.dtype)):
                per_traj[i][layer] = rows

    def keep(batch: list[int], states: dict[int, torch.Tensor], cols: list[np.ndarray]) -> None:
        lane.submit(collect, batch, {layer: _stage_rows(states[layer], cols, torch_dtype, overlap) for layer in layers}, cols)
        advance(sum(len(encoded[i].input_ids) for i in batch))

    def on_device(x: torch.Tensor) -> torch.Tensor:
        return to_device(x, device, overlap)

    share = opts.share_prompts and kv_attention_everywhere(loaded.model)
    units, alone = shared_prompts([tuple(e.input_ids[:e.completion_start]) if share else () for e in encoded])
    for bucket in length_buckets([len(encoded[i].input_ids) for i in alone], budget):
        batch = [alone[b] for b in bucket]
        left = opts.padding_side == "left"
        ids, mask, starts = pad_batch([encoded[i].input_ids for i in batch], pad_id, left)
        states = forward_layers(loaded.model, on_device(ids), on_device(mask), layers)
        keep(batch, states, [starts[r] + encoded[i].completion_start + (per_pos[i] - encoded[i].completion_cut) for r, i in enumerate(batch)])
    longest = [max(len(encoded[i].input_ids) for i in unit) for unit in units]
    for bucket in length_buckets(longest, budget, rows=[len(unit) for unit in units]):
        group = [units[b] for b in bucket]
        batch = [i for unit in group for i in unit]
        p_ids, p_mask, _ = pad_batch([encoded[unit[0]].input_ids[: encoded[unit[0]].completion_start] for unit in group], pad_id, left=True)
        c_ids, c_mask, _ = pad_batch([encoded[i].input_ids[encoded[i].completion_start :] for i in batch], pad_id, left=False)
        prompt_of = on_device(torch.tensor([k for k, unit in enumerate(group) for _ in unit]))
        states = forward_layers_shared(loaded.model, on_device(p_ids), on_device(p_mask), on_device(c_ids), on_device(c_mask), prompt_of, layers)
        keep(batch, states, [per_pos[i] - encoded[i].completion_cut for i in batch])  # completion_cut is 0: a cut prompt is never shared

    def assemble() -> ShardData:  # on the lane, after every batch's `collect`
        stored = [StoredTrajectory(t.id, t.group, t.answer, t.label, pos, per_traj[i], e.completion_tokens, e.truncated_tokens, e.error_token)
                  for i, (t, e, pos) in enumerate(zip(trajs, encoded, per_pos))]
        return shard_data(stored, layers, np_dtype, n_tokens_processed=sum(len(e.input_ids) for e in encoded),
                          n_prompt_tokens_reused=sum((len(unit) - 1) * encoded[unit[0]].completion_start for unit in units))

    return lane.submit(assemble)


def pad_batch(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, attention mask, start column of each row) of token lists padded to the longest."""
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    starts = []
    for row, seq in enumerate(seqs):
        start = width - len(seq) if left else 0
        ids[row, start : start + len(seq)] = torch.tensor(seq)
        mask[row, start : start + len(seq)] = 1
        starts.append(start)
    return ids, mask, starts


def _stage_rows(states: torch.Tensor, cols: list[np.ndarray], dtype: torch.dtype, overlap: bool) -> StagedStates:
    """The stored rows of every trajectory of a batch in one gather, their way to the host started (`stage_states`).

    Per-trajectory copies cost a synchronisation each, which left a GPU idle
    most of the time (benchmarks/results/speed-gpu.json: 13% busy): one gather
    and one device-to-host copy per batch and layer.
    """
    counts = [len(c) for c in cols]
    rows = to_device(torch.as_tensor(np.repeat(np.arange(len(cols)), counts)), states.device, overlap)
    flat = to_device(torch.as_tensor(np.concatenate(cols) if cols else np.zeros(0, np.int64)), states.device, overlap)
    return stage_states(states[rows, flat], dtype)


def _host_rows(staged: StagedStates, cols: list[np.ndarray], dtype: torch.dtype, ids: list[str], layer: int,
               dtype_name: str) -> list[np.ndarray]:
    """Each trajectory's stored rows on the host, checked (`host_states`); a bad batch is re-checked trajectory
    by trajectory so the error still names one."""
    counts = [len(c) for c in cols]
    try:
        host = host_states(staged, dtype, ids[0], layer, dtype_name)
    except ProbekitError:
        bounds = np.cumsum([0, *counts])
        for tid, a, b in zip(ids, bounds[:-1].tolist(), bounds[1:].tolist()):
            checked_states(staged.source[a:b], dtype, tid, layer, dtype_name)
        raise
    return np.split(host, np.cumsum(counts)[:-1])
