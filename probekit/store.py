"""The on-disk store of cached hidden states, and a streaming reader.

Layout of a store folder::

    manifest.json        what was extracted, from what, how (see probekit.extract.manifest)
    pairs.jsonl          the preference pairs, by trajectory id
    shard-00000.h5       one HDF5 file per block of `shard_size` trajectories
    ...

Inside a shard, the per-token states of all its trajectories are concatenated
row-wise (ragged storage) and `offsets[i]:offsets[i+1]` are the rows of its
i-th trajectory::

    attrs: cache_key, shard_index, n_trajectories, n_rows, n_tokens_processed,
           n_truncated, seconds, model_dtype, complete
    offsets            int64 [n + 1]
    positions          int32 [rows]   token index in the full (untruncated) completion
    states/L{layer}    float16|float32 [rows, hidden]
    meta/id, meta/group, meta/answer            utf-8 strings ('' = no answer)
    meta/label                                  int8   (-1 = unlabelled)
    meta/completion_tokens                      int32  tokens of the full completion
    meta/truncated_tokens                       int32  tokens cut from the left (prompt first)
    meta/error_token                            int32  first wrong completion token (-1 = none/unknown)

A shard is built in memory and written under a temporary name, renamed when
complete, so a file named `shard-*.h5` is always whole (see `write_shard`).

What is checked when (the manifest's schema, each shard's offsets and meta,
checksums), and how: probekit.store_schema.

The reader streams: it never loads more than one shard's states unless asked
to (`load_layer`). Every reader refuses non-finite states (a store written by
other tools, or damaged on disk), naming the shard, the layer and the row, so
that a NaN never reaches a probe's loss. HDF5 is read only through this module
and probekit.store_schema.

Rows by index (`read_rows`: a training batch's contrastive samples, an
evaluation's trajectories) are read with one `pread` per run of rows that lie
back to back, at the byte offsets HDF5 reports for the rows' chunks,
where the layer is stored uncompressed with whole rows in each chunk (as
`write_shard` writes it): h5py's fancy indexing costs ~65 µs per row, a pread
~2 µs, and that was most of a streamed fit's time (benchmarks/run_scale.py).
Other layouts (compressed, written by other tools) are read through h5py.
"""

from __future__ import annotations

import io
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from probekit.errors import ProbekitError
from probekit.io import atomic_path, iter_jsonl, sha256_file
from probekit.progress import Progress, or_null
from probekit.store_schema import META_INT_FIELDS, META_STR_FIELDS, open_shard, read_manifest, read_shard_index

STATE_DTYPES = ("float16", "float32")  # the dtypes a shard stores states in
MANIFEST = "manifest.json"
PAIRS = "pairs.jsonl"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


@dataclass
class ShardData:
    """Everything one shard holds, in memory, ready to be written (`shard_data` builds it from trajectories)."""

    offsets: np.ndarray
    positions: np.ndarray
    states: dict[int, np.ndarray]  # layer -> [rows, hidden]
    meta: dict[str, np.ndarray]
    attrs: dict


@dataclass
class StoredTrajectory:
    """One trajectory's part of a shard: the rows kept of it and its metadata (the writers' common input)."""

    id: str
    group: str
    answer: str | None
    label: int | None
    positions: np.ndarray  # completion positions of the stored rows
    states: dict[int, np.ndarray]  # layer -> [rows, hidden]
    completion_tokens: int
    truncated_tokens: int = 0
    error_token: int = -1


def shard_data(trajectories: Sequence[StoredTrajectory], layers: Sequence[int], dtype, *, n_tokens_processed: int, **attrs) -> ShardData:
    """The one layout of a shard's arrays, from its trajectories in order; extraction, generation and tests all write through it.

    `dtype` is the numpy storage dtype of the states; `attrs` are recorded with the
    counts computed here (n_trajectories, n_rows, n_truncated).
    """
    counts = np.asarray([len(t.positions) for t in trajectories], dtype=np.int64)
    return ShardData(
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        positions=np.concatenate([np.asarray(t.positions) for t in trajectories]).astype(np.int32),
        states={layer: np.concatenate([t.states[layer] for t in trajectories]).astype(dtype, copy=False) for layer in layers},
        meta={
            "id": [t.id for t in trajectories],
            "group": [t.group for t in trajectories],
            "answer": [t.answer or "" for t in trajectories],
            "label": [-1 if t.label is None else t.label for t in trajectories],
            "completion_tokens": [t.completion_tokens for t in trajectories],
            "truncated_tokens": [t.truncated_tokens for t in trajectories],
            "error_token": [t.error_token for t in trajectories],
        },
        attrs={"n_trajectories": len(trajectories), "n_rows": int(counts.sum()), "n_tokens_processed": int(n_tokens_processed),
               "n_truncated": sum(1 for t in trajectories if t.truncated_tokens > 0), **attrs},
    )


def write_shard(path: Path, data: ShardData) -> None:
    """Write a shard atomically: built in memory, written to a temporary name, then renamed.

    HDF5 never writes to the disk itself: when one of its writes fails (a full disk), h5py raises from inside
    its cleanup, the file stays open in the HDF5 library and the interpreter dies of a segmentation fault at
    exit. The image is made in memory (one more shard-sized buffer while it is written) and written with
    plain file I/O, whose failure is one ProbekitError naming the shard, with no temporary file left.
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as fh:
        fh.create_dataset("offsets", data=data.offsets.astype(np.int64))
        fh.create_dataset("positions", data=data.positions.astype(np.int32))
        grp = fh.create_group("states")
        for layer, arr in data.states.items():
            grp.create_dataset(f"L{layer}", data=arr, chunks=(min(len(arr), 256) or 1, arr.shape[1]) if len(arr) else None)
        meta = fh.create_group("meta")
        for name in META_STR_FIELDS:
            meta.create_dataset(name, data=np.asarray(data.meta[name], dtype=object), dtype=h5py.string_dtype())
        for name, dtype in META_INT_FIELDS.items():
            meta.create_dataset(name, data=np.asarray(data.meta[name], dtype=dtype))
        for key, value in data.attrs.items():
            fh.attrs[key] = value
        fh.attrs["complete"] = True
    try:
        with atomic_path(path, suffix=".h5") as tmp, open(tmp, "wb") as out:
            out.write(image.getbuffer())
    except OSError as exc:
        raise ProbekitError(f"{path}: cannot write this shard ({exc.strerror or exc}); nothing of it was kept") from None


def read_shard_attrs(path: Path) -> dict:
    """The attributes of a shard file (see the module docstring); ProbekitError when it is unreadable."""
    try:
        with h5py.File(path, "r") as fh:
            return dict(fh.attrs)
    except OSError as exc:  # missing, truncated or not HDF5
        raise ProbekitError(f"{path}: not a readable shard ({exc})") from None


def shard_is_complete(path: Path, cache_key: str) -> bool:
    """True when `path` is a finished shard of the store with this cache key."""
    if not path.exists():
        return False
    try:
        attrs = read_shard_attrs(path)
    except ProbekitError:
        return False
    return bool(attrs.get("complete", False)) and attrs.get("cache_key") == cache_key


_INT_VIEWS = {2: (np.int16, np.uint16), 4: (np.int32, np.uint32), 8: (np.int64, np.uint64)}


def _all_finite(block: np.ndarray) -> bool:
    """Exact test that every value of a float block is finite, at memory speed and without a temporary.

    In IEEE floats the bit patterns of +inf and every +NaN are the largest
    non-negative integers of the same width, and -inf/-NaN the largest unsigned
    ones; so two integer maxima over views of the block decide it exactly.
    `np.isfinite(block).all()` on float16 costs ten times more (measured).
    """
    if block.size == 0:
        return True
    signed, unsigned = _INT_VIEWS[block.dtype.itemsize]
    pos_inf = np.array(np.inf, block.dtype).view(signed)
    neg_inf = np.array(-np.inf, block.dtype).view(unsigned)
    return bool(block.view(signed).max() < pos_inf and block.view(unsigned).max() < neg_inf)


MAPPED_MIN_BYTES = 8 << 20


def mapped_empty(shape: tuple[int, int], dtype) -> np.ndarray:
    """An uninitialised array, in its own anonymous memory map (unmapped, given back to the OS, when freed)
    from `MAPPED_MIN_BYTES` on.

    Blocks of rows are tens of MB and vary in size. glibc's malloc serves such sizes from its heap once
    a freed mmap chunk has raised its dynamic threshold (up to 32 MB), and a heap fragmented by blocks of
    varying sizes keeps growing: streaming a store's blocks raised the peak resident memory by a few
    hundred MB per 1e6 rows (benchmarks/run_scale.py). A map of its own never enters the heap. Smaller
    arrays (a training batch's rows, ~2.5 MB) stay on the heap, which reuses them without new page faults.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < MAPPED_MIN_BYTES:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


@dataclass(frozen=True)
class RowLayout:
    """Where each row of one uncompressed 2-D dataset lies in its file, for direct reads."""

    chunk_rows: int
    chunk_offsets: np.ndarray  # int64 byte offset of chunk k (rows k*chunk_rows ...); one entry when contiguous
    row_bytes: int
    dtype: np.dtype
    width: int

    def byte_offsets(self, local_rows: np.ndarray) -> np.ndarray:
        return self.chunk_offsets[local_rows // self.chunk_rows] + (local_rows % self.chunk_rows) * self.row_bytes


def row_layout(dataset: h5py.Dataset) -> RowLayout | None:
    """The byte layout of a [rows, width] dataset when every row is stored raw and whole, else None.

    None (read through h5py instead) for filters (compression, checksums), chunks
    narrower than a row, non-native byte order, or storage not yet allocated.
    """
    if dataset.ndim != 2 or len(dataset) == 0 or not hasattr(os, "preadv"):
        return None
    dtype = dataset.dtype
    if dtype.kind != "f" or not dtype.isnative or dataset.id.get_create_plist().get_nfilters() > 0:
        return None
    width = int(dataset.shape[1])
    row_bytes = width * dtype.itemsize
    if dataset.chunks is None:
        offset = dataset.id.get_offset()
        if offset is None:
            return None
        return RowLayout(len(dataset), np.asarray([offset], np.int64), row_bytes, dtype, width)
    chunk_rows, chunk_width = dataset.chunks
    n_chunks = -(-len(dataset) // chunk_rows)
    if chunk_width != width or dataset.id.get_num_chunks() != n_chunks:
        return None
    offsets = np.empty(n_chunks, np.int64)
    for k in range(n_chunks):
        info = dataset.id.get_chunk_info(k)
        if info.byte_offset is None or info.filter_mask != 0:
            return None
        offsets[info.chunk_offset[0] // chunk_rows] = info.byte_offset
    return RowLayout(int(chunk_rows), offsets, row_bytes, dtype, width)


def pread_rows(path: Path, layout: RowLayout, local_rows: np.ndarray) -> np.ndarray:
    """Rows `local_rows` of the dataset described by `layout`, in the order given.

    One pread per run of rows that lie back to back in the file (a
    trajectory's rows within a chunk, or across adjacent chunks), so reading
    whole trajectories costs about one call per chunk, and scattered rows one each.
    """
    out = mapped_empty((len(local_rows), layout.width), layout.dtype)
    if len(local_rows) == 0:
        return out
    offsets = layout.byte_offsets(np.asarray(local_rows, np.int64))
    size = layout.row_bytes
    breaks = np.flatnonzero(np.diff(offsets) != size) + 1
    starts, ends = np.r_[0, breaks].tolist(), np.r_[breaks, len(offsets)].tolist()
    view = memoryview(out).cast("B")
    fd = os.open(path, os.O_RDONLY)
    try:
        for a, b in zip(starts, ends):
            offset = int(offsets[a])
            if os.preadv(fd, [view[a * size:b * size]], offset) != (b - a) * size:
                raise OSError(f"short read at byte {offset}")
    finally:
        os.close(fd)
    return out


@dataclass
class TrajectoryTable:
    """Per-trajectory metadata of the whole store, in global order (shard by shard)."""

    id: np.ndarray
    group: np.ndarray
    answer: np.ndarray  # object array; None where no answer
    label: np.ndarray  # int8, -1 = unlabelled
    completion_tokens: np.ndarray
    truncated_tokens: np.ndarray
    error_token: np.ndarray
    row_start: np.ndarray  # global row index of the first stored state
    row_end: np.ndarray
    shard: np.ndarray  # shard number of each trajectory

    def __len__(self) -> int:
        return len(self.id)

    @property
    def stored_tokens(self) -> np.ndarray:
        return self.row_end - self.row_start


@dataclass
class ShardBlock:
    """One shard's states for streaming consumers (filtering, scoring)."""

    trajectories: np.ndarray  # global trajectory indices
    offsets: np.ndarray  # local row offsets, [n + 1]
    positions: np.ndarray
    states: np.ndarray  # float32 [rows, hidden] (stored dtype with as_float32=False)


class Store:
    """Read-only view of a complete store. Cheap to open: reads metadata only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST
        if not self.manifest_path.exists():
            raise ProbekitError(f"{self.path}: not a probekit store (no {MANIFEST}); run `probekit extract` first")
        self.manifest = read_manifest(self.manifest_path)
        self.cache_key: str = self.manifest["cache_key"]
        self.layers: list[int] = list(self.manifest["layers"])
        self.hidden_size: int = int(self.manifest["model"]["hidden_size"])
        n_shards = int(self.manifest["shards"]["n"])
        self.shard_paths = [self.path / shard_name(i) for i in range(n_shards)]
        missing = [p.name for p in self.shard_paths if not shard_is_complete(p, self.cache_key)]
        if missing:
            raise ProbekitError(
                f"{self.path}: store incomplete, {len(missing)} of {n_shards} shards missing or partial "
                f"(first: {missing[0]}); re-run the same `probekit extract` command to resume"
            )
        self.checksums: list[dict] | None = self.manifest["shards"].get("checksums")  # None: written before checksums
        self._hashed: set[int] = set()  # shards whose file sha256 was compared by this Store
        self.meta = self._read_meta()
        firsts = np.searchsorted(self.meta.shard, np.arange(n_shards))
        self._shard_starts = np.append(self.meta.row_start, self.n_rows)[firsts]  # global row of each shard's first row
        self._id_index: dict[str, int] | None = None
        self._positions: np.ndarray | None = None
        self._layouts: dict[tuple[int, int], RowLayout | None] = {}  # (shard, layer) -> layout, read once

    # ---- metadata -------------------------------------------------------
    def _damaged(self, shard: int, why: str) -> ProbekitError:
        return ProbekitError(f"{self.shard_paths[shard]}: {why}; the shard was damaged or changed since it was written, re-extract it")

    def _read_meta(self) -> TrajectoryTable:
        """Every shard's checked offsets and meta (`read_shard_index`), compared with the manifest's checksums and
        totals, as one table."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in (*META_STR_FIELDS, *META_INT_FIELDS, "offsets", "shard")}
        row_base = 0
        for s, path in enumerate(self.shard_paths):
            index = read_shard_index(path, self.layers, self.hidden_size)
            if self.checksums is not None:
                record, size = self.checksums[s], path.stat().st_size
                if size != record["bytes"]:
                    raise self._damaged(s, f"{size} bytes, but {self.manifest_path} recorded {record['bytes']}")
                if index.meta_sha256 != record["meta_sha256"]:
                    raise self._damaged(s, f"its offsets or meta (ids, groups, answers, labels, token counts) do not match the sha256 "
                                           f"{self.manifest_path} recorded")
            for name in (*META_STR_FIELDS, *META_INT_FIELDS):
                cols[name].append(index.meta[name])
            cols["offsets"].append(index.offsets[:-1] + row_base)
            cols["shard"].append(np.full(len(index.offsets) - 1, s, dtype=np.int32))
            row_base += int(index.offsets[-1])
        starts = np.concatenate(cols["offsets"]).astype(np.int64)
        ends = np.append(starts[1:], row_base)
        answer = np.concatenate(cols["answer"])
        answer[answer == ""] = None
        self.n_rows = row_base
        stats = self.manifest.get("stats")
        if stats and (stats["n_trajectories"], stats["n_rows_stored"]) != (len(starts), row_base):
            raise ProbekitError(f"{self.manifest_path}: records {stats['n_trajectories']} trajectories and {stats['n_rows_stored']} rows, "
                                f"but its shards hold {len(starts)} and {row_base}; this store is damaged, re-extract it")
        return TrajectoryTable(
            id=np.concatenate(cols["id"]),
            group=np.concatenate(cols["group"]),
            answer=answer,
            label=np.concatenate(cols["label"]),
            completion_tokens=np.concatenate(cols["completion_tokens"]),
            truncated_tokens=np.concatenate(cols["truncated_tokens"]),
            error_token=np.concatenate(cols["error_token"]),
            row_start=starts,
            row_end=ends,
            shard=np.concatenate(cols["shard"]),
        )

    def check_file(self, shard: int) -> None:
        """Compare a shard file's sha256 with the manifest's, once per Store (nothing to compare in stores written
        before checksums). Costs one more read of the file; `iter_shards` calls it before reading a shard whole."""
        if self.checksums is None or shard in self._hashed:
            return
        try:
            digest = sha256_file(self.shard_paths[shard])
        except OSError as exc:
            raise ProbekitError(f"{self.shard_paths[shard]}: cannot read ({exc.strerror or exc})") from None
        if digest != self.checksums[shard]["sha256"]:
            raise self._damaged(shard, f"its sha256 does not match the one {self.manifest_path} recorded")
        self._hashed.add(shard)

    def __len__(self) -> int:
        return len(self.meta)

    def index_of(self, trajectory_id: str) -> int:
        if self._id_index is None:
            self._id_index = {tid: i for i, tid in enumerate(self.meta.id)}
        try:
            return self._id_index[trajectory_id]
        except KeyError:
            raise ProbekitError(f"{self.path}: no trajectory with id '{trajectory_id}'") from None

    def pairs(self) -> np.ndarray:
        """Preference pairs as global trajectory indices, int64 [n_pairs, 2] (chosen, rejected)."""
        path = self.path / PAIRS
        if not path.exists():
            return np.zeros((0, 2), dtype=np.int64)
        out = []
        for lineno, obj in iter_jsonl(path):
            try:
                out.append((self.index_of(str(obj["chosen"])), self.index_of(str(obj["rejected"]))))
            except (KeyError, ProbekitError) as exc:
                raise ProbekitError(f"{path}:{lineno}: bad pair ({exc})") from None
        return np.asarray(out, dtype=np.int64).reshape(-1, 2)

    def check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise ProbekitError(f"{self.path}: layer {layer} not in this store (it has layers {self.layers})")

    # ---- states ---------------------------------------------------------
    def positions(self) -> np.ndarray:
        """Token position (in the full completion) of every stored row, int32 [n_rows], kept once read
        (4 bytes a row: streaming readers use `shard_positions` instead)."""
        if self._positions is None:
            parts = [self.shard_positions(s) for s in range(len(self.shard_paths))]
            self._positions = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return self._positions

    def shard_positions(self, shard: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Token positions of the rows start:stop of one shard (default all), int32."""
        if self._positions is not None:
            end = self._shard_starts[shard + 1] if shard + 1 < len(self._shard_starts) else self.n_rows
            return self._positions[self._shard_starts[shard]:end][start:stop]
        with open_shard(self.shard_paths[shard]) as fh:
            return fh["positions"][start:stop]

    def _check_finite(self, block: np.ndarray, shard: int, layer: int, local_rows: np.ndarray | None = None) -> None:
        """Refuse a block with a NaN or an infinity; `local_rows[i]` is block row i's row in the shard."""
        if _all_finite(block):
            return
        first = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        local = int(local_rows[first]) if local_rows is not None else first
        row = int(self._shard_starts[shard]) + local
        traj = int(np.searchsorted(self.meta.row_start, row, side="right")) - 1
        raise ProbekitError(
            f"{self.shard_paths[shard]}: non-finite hidden state at layer {layer}, row {row} "
            f"(trajectory '{self.meta.id[traj]}'); this store is damaged, re-extract it"
        )

    def _read_states(self, fh: h5py.File, shard: int, layer: int, as_float32: bool, local_rows: np.ndarray | None = None) -> np.ndarray:
        """States of one layer from an open shard (all rows, or the increasing `local_rows`), checked."""
        data = fh["states"][f"L{layer}"]
        block = data[...] if local_rows is None else data[local_rows]
        if as_float32:
            block = block.astype(np.float32, copy=False)
        self._check_finite(block, shard, layer, local_rows)
        return block

    def _shard_rows(self, shard: int, layer: int, local_rows: np.ndarray) -> np.ndarray:
        """States of the increasing `local_rows` of one shard in their stored dtype, checked: by pread once the
        shard's layout is known to allow it (no HDF5 open per call), else through h5py. The caller casts them
        into its float32 output in place (a float32 copy here would be a second block-sized array)."""
        key = (shard, layer)
        if key not in self._layouts:
            with open_shard(self.shard_paths[shard]) as fh:
                self._layouts[key] = row_layout(fh["states"][f"L{layer}"])
        layout = self._layouts[key]
        if layout is None:
            with open_shard(self.shard_paths[shard]) as fh:
                return self._read_states(fh, shard, layer, as_float32=False, local_rows=local_rows)
        try:
            block = pread_rows(self.shard_paths[shard], layout, local_rows)
        except OSError as exc:
            raise ProbekitError(f"{self.shard_paths[shard]}: cannot read rows ({exc})") from None
        self._check_finite(block, shard, layer, local_rows)
        return block

    def shard_states(self, shard: int, layer: int, as_float32: bool = True) -> np.ndarray:
        """All states of one layer of one shard, [rows, hidden] (float32, or the stored dtype), checked finite
        (and its file's sha256, `check_file`)."""
        self.check_layer(layer)
        self.check_file(shard)
        with open_shard(self.shard_paths[shard]) as fh:
            return self._read_states(fh, shard, layer, as_float32)

    def read_rows(self, layer: int, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """States of arbitrary global rows, float32 [len(rows), hidden], in the order asked.

        Rows are sorted once, read shard by shard in increasing order (each
        distinct row once), then put back in the caller's order. Increasing
        distinct rows (a block of whole trajectories) are cast straight into
        the output: no other array of the output's size is made.
        """
        self.check_layer(layer)
        rows = np.asarray(rows, dtype=np.int64)
        out = mapped_empty((len(rows), self.hidden_size), np.float32)
        if len(rows) == 0:
            return out
        increasing = bool((np.diff(rows) > 0).all())
        order = None if increasing else np.argsort(rows, kind="stable")
        ordered = rows if order is None else rows[order]
        shard_of = np.searchsorted(self._shard_starts, ordered, side="right") - 1
        cuts = np.flatnonzero(np.diff(shard_of)) + 1
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(rows)].tolist()):
            s = int(shard_of[a])
            local = ordered[a:b] - self._shard_starts[s]
            if order is None:
                out[a:b] = self._shard_rows(s, layer, local)
            else:
                uniq, inverse = np.unique(local, return_inverse=True)
                out[order[a:b]] = self._shard_rows(s, layer, uniq)[inverse]
        return out

    def last_rows(self) -> np.ndarray:
        """Global row of each trajectory's last stored state (always its last completion token)."""
        return self.meta.row_end - 1

    def trajectory_states(self, index: int, layer: int) -> np.ndarray:
        start, end = int(self.meta.row_start[index]), int(self.meta.row_end[index])
        return self.read_rows(layer, np.arange(start, end))

    def iter_shards(self, layer: int, as_float32: bool = True) -> Iterator[ShardBlock]:
        """Yield one shard at a time: memory stays bounded by the largest shard. Each shard's file sha256 is
        compared with the manifest's before it is first read (`check_file`).

        as_float32=False yields states in their stored dtype (float16 by default), for
        callers that convert batch by batch themselves: numpy's whole-shard float16 ->
        float32 cast costs about as much as scoring the rows.
        """
        self.check_layer(layer)
        first = 0
        for s, path in enumerate(self.shard_paths):
            self.check_file(s)
            with open_shard(path) as fh:
                offsets = fh["offsets"][...]
                n = len(offsets) - 1
                block = ShardBlock(
                    trajectories=np.arange(first, first + n),
                    offsets=offsets,
                    positions=fh["positions"][...],
                    states=self._read_states(fh, s, layer, as_float32),
                )
            yield block  # the file is closed while the caller works on the block
            first += n

    def load_layer(self, layer: int) -> np.ndarray:
        """All states of one layer in memory, float32 [n_rows, hidden]."""
        blocks = [b.states for b in self.iter_shards(layer)]
        return np.concatenate(blocks) if blocks else np.zeros((0, self.hidden_size), np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes that `load_layer` would take (float32)."""
        return self.n_rows * self.hidden_size * 4

    def verify(self, progress: Progress | None = None) -> dict:
        """The full check behind `probekit store verify`: what opening checked, then every shard's file sha256 and
        every state of every layer finite; the first damaged shard is a ProbekitError naming it. Returns a summary."""
        task = or_null(progress).task("verify", len(self.shard_paths) * len(self.layers), "shards")
        try:
            for layer in self.layers:
                for _ in self.iter_shards(layer, as_float32=False):
                    task.advance()
        finally:
            task.close()
        return {
            "store": str(self.path), "shards": len(self.shard_paths), "trajectories": len(self), "rows": int(self.n_rows),
            "layers": list(self.layers), "bytes": sum(p.stat().st_size for p in self.shard_paths),
            "checksums": self.checksums is not None,
        }
