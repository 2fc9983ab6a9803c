"""The store manifest and its cache key.

The cache key hashes everything that changes the stored numbers or their
layout (model file, the dtype the model computes in, layers, template,
positions, max length, storage dtype, shard size, data fingerprint, format
version) and nothing that does not (device, batch size, number of ranks), so
any machine can resume any store when it computes in the store's dtype: a
store begun in float32 is never continued in bfloat16, whose states differ by
about 1% (README, Models).

Stores written before the compute dtype was part of the key (their key has
no `model_dtype`) are still resumed when their finished shards, which each
record the dtype they were computed in, match this run's dtype; they keep
their old key, so their shards stay valid.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from probekit import __version__
from probekit.errors import ProbekitError
from probekit.io import write_json
from probekit.models import dtype_name
from probekit.store import MANIFEST, read_shard_attrs, shard_is_complete, shard_name
from probekit.store_schema import FORMAT_VERSION, file_matches, read_manifest, shard_checksum

# The key field of the dtype the model computes in (absent from stores written before it was keyed).
MODEL_DTYPE = "model_dtype"


def cache_key(key_fields: dict) -> str:
    blob = json.dumps(key_fields, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def build_manifest(key_fields: dict, extra: dict) -> dict:
    return {
        "format": "probekit-store",
        "format_version": FORMAT_VERSION,
        "cache_key": cache_key(key_fields),
        "key": key_fields,
        "probekit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "in_progress",
        **extra,
    }


def describe_model(loaded) -> dict:
    """The manifest's record of the frozen model and its tokenizer (extract and generate write the same)."""
    return {
        "model": {
            "name": loaded.name,
            "source": str(loaded.source),
            "file_sha256": loaded.file_sha256,
            "revision": loaded.revision,
            "num_layers": loaded.num_layers,
            "hidden_size": loaded.hidden_size,
            "dtype": dtype_name(loaded.dtype),
            "dtype_choice": loaded.dtype_choice,
        },
        "tokenizer": {"name_or_path": str(getattr(loaded.tokenizer, "name_or_path", "")), "vocab_size": len(loaded.tokenizer)},
    }


def check_existing(out: Path, manifest: dict, overwrite: bool) -> dict | None:
    """Return the manifest to resume `out` under (None: start a new store); refuse a mismatching one.

    A store made from another model, other data or other settings is never
    mixed with new shards: the user must pass --overwrite (or choose another
    folder), and the error says which fields differ, and for the compute dtype
    both dtypes. A damaged manifest (`read_manifest` refuses it) is replaced only with --overwrite.
    A resumed store keeps the checksums its manifest recorded, so that a re-run can tell a shard damaged
    since then (`damaged_shards`) instead of recording the damage as the shard's new checksum.
    """
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        old = read_manifest(path)
    except ProbekitError as exc:
        if overwrite:
            return None
        raise ProbekitError(f"{exc}; pass --overwrite to replace this store or choose another --out") from None
    if old.get("cache_key") == manifest["cache_key"]:
        recorded = old["shards"].get("checksums")
        return manifest if recorded is None else {**manifest, "shards": {**manifest["shards"], "checksums": recorded}}
    old_key, new_key = old.get("key", {}), manifest["key"]
    stored_dtype = old_key.get(MODEL_DTYPE)
    if MODEL_DTYPE not in old_key and old.get("cache_key") == cache_key({k: v for k, v in new_key.items() if k != MODEL_DTYPE}):
        stored = _shard_dtypes(out, old["cache_key"])
        if stored <= {new_key[MODEL_DTYPE]}:
            return {**manifest, "cache_key": old["cache_key"], "key": old_key} if stored else None
        stored_dtype = ", ".join(sorted(stored))
    if overwrite:
        return None
    diff = sorted(k for k in set(old_key) | set(new_key) if old_key.get(k) != new_key.get(k) and k != MODEL_DTYPE)
    if stored_dtype is not None and stored_dtype != new_key[MODEL_DTYPE]:
        others = f" (and differs in: {', '.join(diff)})" if diff else ""
        raise ProbekitError(
            f"{path}: this store was computed in {stored_dtype} and this run computes in {new_key[MODEL_DTYPE]}{others}; "
            f"resume it with --model-dtype {stored_dtype}, or pass --overwrite to replace it or choose another --out"
        )
    raise ProbekitError(
        f"{path}: this folder holds a store made with other settings (differs in: {', '.join(diff) or 'format'}); "
        "pass --overwrite to replace it or choose another --out"
    )


def damaged_shards(out: Path, manifest: dict, shards: list[int]) -> list[int]:
    """Those of `shards` whose file no longer has the size and sha256 the manifest recorded (none where it
    recorded none): a re-run extracts them again (one read of each file)."""
    recorded = manifest["shards"].get("checksums")
    if recorded is None:
        return []
    return [s for s in shards if not file_matches(out / shard_name(s), recorded[s])]


def _shard_dtypes(out: Path, key: str) -> set[str]:
    """The compute dtypes recorded by the finished shards of the store `key` in `out`."""
    return {str(read_shard_attrs(p).get("model_dtype", "an unrecorded dtype")) for p in sorted(out.glob("shard-*.h5")) if shard_is_complete(p, key)}


def finalize(out: Path, manifest: dict, shard_attrs: list[dict], verified: dict[int, dict] | None = None) -> dict:
    """Write the completed manifest with counts and throughput summed over all shards (`shard_attrs`, as
    `read_shard_attrs` reads them) and each shard's checksum (`probekit.store_schema.shard_checksum`), which every
    reader compares (probekit.store's docstring says when). `verified` holds the recorded checksums of shards this
    run has just found unchanged (`damaged_shards`): they are kept rather than hashed a second time."""
    verified = verified or {}
    checksums = [verified.get(int(a["shard_index"])) or
                 shard_checksum(out / shard_name(int(a["shard_index"])), manifest["layers"], manifest["model"]["hidden_size"])
                 for a in shard_attrs]
    processed = sum(int(a["n_tokens_processed"]) for a in shard_attrs)
    seconds = sum(float(a["seconds"]) for a in shard_attrs)
    done = dict(manifest)
    done["status"] = "complete"
    done["shards"] = {**manifest["shards"], "checksums": checksums}
    done["stats"] = {
        "n_trajectories": sum(int(a["n_trajectories"]) for a in shard_attrs),
        "n_rows_stored": sum(int(a["n_rows"]) for a in shard_attrs),
        "n_tokens_processed": processed,
        "n_truncated": sum(int(a["n_truncated"]) for a in shard_attrs),
        "n_prompt_tokens_reused": sum(int(a.get("n_prompt_tokens_reused", 0)) for a in shard_attrs),  # shards older than --share-prompts: 0
        "seconds": round(seconds, 3),
        "tokens_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        "model_dtypes": sorted({str(a["model_dtype"]) for a in shard_attrs}),
    }
    write_json(out / MANIFEST, done)
    return done
