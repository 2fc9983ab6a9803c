"""What a valid store looks like, checked in one place: the manifest's schema, each shard's small arrays, checksums.

What is checked when (README, Reliability). The manifest's shape is validated
by one schema (`StoreManifest`, `read_manifest`) on every open. Opening a store
also reads each shard's small arrays (offsets, meta) and checks them against
each other, the shard's attributes, the manifest and the row counts of its
datasets (`read_shard_index`), so a damaged offset can neither drop a
trajectory nor ask for petabytes. `finalize` (probekit.extract.manifest)
records a per-shard checksum in the manifest (`shards.checksums`: the file's
size and sha256 and a sha256 of its offsets and meta, `shard_checksum`); every
open compares the size and the meta digest (a flipped label is refused), and
the file's sha256 is compared the first time a `Store` reads a shard whole
(`Store.check_file`, from `iter_shards` and `shard_states`: filter scoring,
in-memory fits and evaluations). Reads of scattered rows (a streamed fit's
batches) do not hash; `Store.verify` (`probekit store verify`) checks
everything, and a re-run of `extract` extracts again a shard that no longer
matches (`file_matches`). Stores written before checksums were recorded open
without those comparisons.

The file's sha256 and not HDF5's fletcher32 filter: a filtered dataset cannot
be read by the pread fast path of probekit.store (see `row_layout`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from probekit.errors import ProbekitError
from probekit.io import read_json, sha256_file, validated

FORMAT_VERSION = 1
META_STR_FIELDS = ("id", "group", "answer")
META_INT_FIELDS = {"label": np.int8, "completion_tokens": np.int32, "truncated_tokens": np.int32, "error_token": np.int32}


# ---- the manifest's shape ------------------------------------------------------------------------------------
class _Record(BaseModel):
    """A JSON object of the manifest: strict types (no "576" for 576, no true for 1), other fields kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class ShardChecksum(_Record):
    """What `finalize` recorded of one shard file (`shard_checksum`)."""

    bytes: int = Field(ge=0)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    meta_sha256: str = Field(pattern="^[0-9a-f]{64}$")


class _ModelRecord(_Record):
    hidden_size: int = Field(gt=0)
    name: str | None = None
    file_sha256: str | None = None


class _ShardsRecord(_Record):
    n: int = Field(ge=1)
    size: int = Field(ge=1)
    checksums: list[ShardChecksum] | None = None  # absent in stores written before checksums

    @model_validator(mode="after")
    def _one_per_shard(self):
        if self.checksums is not None and len(self.checksums) != self.n:
            raise ValueError(f"{len(self.checksums)} checksums for {self.n} shards")
        return self


class _StatsRecord(_Record):
    n_trajectories: int = Field(ge=0)
    n_rows_stored: int = Field(ge=0)


class StoreManifest(_Record):
    """The fields of manifest.json that readers rely on (probekit.extract.manifest writes the rest)."""

    format_version: int
    cache_key: str = Field(min_length=1)
    layers: list[int] = Field(min_length=1)
    model: _ModelRecord
    shards: _ShardsRecord
    stats: _StatsRecord | None = None  # written by finalize

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, layers: list[int]) -> list[int]:
        if len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(f"layers must be distinct and >= 0, got {layers}")
        return layers


def read_manifest(path: Path) -> dict:
    """The manifest at `path` as written (a dict), once its shape is valid; one ProbekitError naming the file otherwise.

    The one place a store manifest is checked: `Store` and `extract`'s resume both read it here, so a damaged
    or hand-edited manifest is one line and never a KeyError deep in a command.
    """
    raw = read_json(path)
    if isinstance(raw, dict) and raw.get("format_version") != FORMAT_VERSION:
        raise ProbekitError(f"{path}: unsupported store format {raw.get('format_version')!r}")
    validated(StoreManifest, raw, f"{path}: not a valid store manifest")
    return raw


def _meta_digest(offsets: np.ndarray, meta: dict[str, np.ndarray]) -> str:
    """sha256 of a shard's offsets and meta columns by value (not by HDF5 bytes), so a reader can recompute it
    from the arrays it reads anyway."""
    h = hashlib.sha256()
    parts = [("offsets", np.asarray(offsets).astype("<i8").tobytes())]
    parts += [(name, json.dumps([str(x) for x in meta[name]], ensure_ascii=False).encode("utf-8", "surrogatepass")) for name in META_STR_FIELDS]
    parts += [(name, np.asarray(meta[name]).astype(np.dtype(dtype).newbyteorder("<")).tobytes()) for name, dtype in META_INT_FIELDS.items()]
    for name, blob in parts:
        h.update(name.encode() + b"\0" + len(blob).to_bytes(8, "little") + blob)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@contextlib.contextmanager
def open_shard(path: Path) -> Iterator[h5py.File]:
    """An open shard; what h5py raises for a damaged one (unreadable, a missing dataset) as one line naming it."""
    try:
        with h5py.File(path, "r") as fh:
            yield fh
    except (OSError, RuntimeError, KeyError) as exc:
        raise ProbekitError(f"{path}: damaged shard ({_first_line(exc)}); re-extract it") from None


@dataclass
class ShardIndex:
    """A shard's small arrays, checked: what opening a store reads of each shard."""

    offsets: np.ndarray  # int64 [n + 1]
    meta: dict[str, np.ndarray]  # strings as object arrays of str, ints in their stored dtype
    meta_sha256: str


def read_shard_index(path: Path, layers: Sequence[int], hidden_size: int) -> ShardIndex:
    """The offsets and meta of a shard, refused (one line naming it) unless they agree with each other, the shard's
    attributes, the shapes of its datasets and the manifest's layers and width. Reads no states."""
    with open_shard(path) as fh:
        for name in ("offsets", "positions", *(f"states/L{layer}" for layer in layers), *(f"meta/{m}" for m in (*META_STR_FIELDS, *META_INT_FIELDS))):
            if not isinstance(fh.get(name), h5py.Dataset):
                hint = f" (the manifest lists layers {list(layers)})" if name.startswith("states/") else ""
                raise ProbekitError(f"{path}: no dataset '{name}'{hint}; this shard is damaged or not this store's")
        offsets = fh["offsets"][...]
        meta = {name: fh["meta"][name].asstr()[...].astype(object) for name in META_STR_FIELDS}
        meta.update({name: fh["meta"][name][...] for name in META_INT_FIELDS})
        shapes = {name: (fh[name].shape, fh[name].dtype) for name in ("positions", *(f"states/L{layer}" for layer in layers))}
        attrs = {k: fh.attrs[k] for k in ("n_trajectories", "n_rows") if k in fh.attrs}

    def bad(why: str) -> ProbekitError:
        return ProbekitError(f"{path}: {why}; this shard is damaged, re-extract it")

    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) == 0:
        raise bad(f"offsets are {offsets.dtype}{list(offsets.shape)}, not a list of row numbers")
    offsets = offsets.astype(np.int64)
    n, rows = len(offsets) - 1, int(offsets[-1])
    if offsets[0] != 0:
        raise bad(f"offsets start at {int(offsets[0])}, not 0")
    drops = np.flatnonzero(np.diff(offsets) < 0)
    if len(drops):
        raise bad(f"offsets decrease at trajectory {int(drops[0])} ({int(offsets[drops[0]])} then {int(offsets[drops[0] + 1])})")
    for name, col in meta.items():
        if col.shape != (n,):
            raise bad(f"meta/{name} is {list(col.shape)}, the offsets describe {n} trajectories")
    if int(attrs.get("n_trajectories", n)) != n or int(attrs.get("n_rows", rows)) != rows:
        raise bad(f"it records {int(attrs.get('n_trajectories', n))} trajectories and {int(attrs.get('n_rows', rows))} rows, "
                  f"its offsets {n} and {rows}")
    for name, (shape, dtype) in shapes.items():
        if len(shape) != (1 if name == "positions" else 2) or shape[0] != rows:
            raise bad(f"{name} is {list(shape)}, its offsets end at row {rows}")
        if name != "positions" and shape[1] != hidden_size:
            raise bad(f"{name} is {shape[1]} wide, but the manifest's model.hidden_size is {hidden_size}")
        if name != "positions" and dtype.kind != "f":
            raise bad(f"{name} holds {dtype}, not floats")
    odd = np.flatnonzero(~np.isin(meta["label"], (-1, 0, 1)))
    if len(odd):
        raise bad(f"meta/label of trajectory {int(odd[0])} is {int(meta['label'][odd[0]])} (labels are -1, 0 or 1)")
    return ShardIndex(offsets, meta, _meta_digest(offsets, meta))


def shard_checksum(path: Path, layers: Sequence[int], hidden_size: int) -> dict:
    """The manifest's record of one finished shard (`ShardChecksum`): its size, the sha256 of the file and of its
    offsets and meta; the shard is checked as a reader checks it first."""
    index = read_shard_index(path, layers, hidden_size)
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path), "meta_sha256": index.meta_sha256}


def file_matches(path: Path, record: dict) -> bool:
    """True when the file at `path` has the size and sha256 of its `ShardChecksum` record (False when unreadable)."""
    try:
        return path.stat().st_size == record["bytes"] and sha256_file(path) == record["sha256"]
    except OSError:
        return False
