"""The store manifest and its cache key.

The cache key hashes everything that changes the stored numbers or their
layout (model file, layers, template, positions, max length, storage dtype,
shard size, data fingerprint, format version) and nothing that does not
(device, batch size, number of ranks), so any machine can resume any store.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from probekit import __version__
from probekit.errors import ProbekitError
from probekit.io import read_json, write_json
from probekit.store import FORMAT_VERSION, MANIFEST


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


def check_existing(out: Path, manifest: dict, overwrite: bool) -> bool:
    """Return True when `out` holds a store to resume; refuse a mismatching one.

    A store made from another model, other data or other settings is never
    mixed with new shards: the user must pass --overwrite (or choose another
    folder), and the error says which fields differ.
    """
    path = out / MANIFEST
    if not path.exists():
        return False
    old = read_json(path)
    if old.get("cache_key") == manifest["cache_key"]:
        return True
    if overwrite:
        return False
    old_key, new_key = old.get("key", {}), manifest["key"]
    diff = sorted(k for k in set(old_key) | set(new_key) if old_key.get(k) != new_key.get(k))
    raise ProbekitError(
        f"{path}: this folder holds a store made with other settings (differs in: {', '.join(diff) or 'format'}); "
        "pass --overwrite to replace it or choose another --out"
    )


def finalize(out: Path, manifest: dict, shard_attrs: list[dict]) -> dict:
    """Write the completed manifest with counts and throughput summed over all shards."""
    processed = sum(int(a["n_tokens_processed"]) for a in shard_attrs)
    seconds = sum(float(a["seconds"]) for a in shard_attrs)
    done = dict(manifest)
    done["status"] = "complete"
    done["stats"] = {
        "n_trajectories": sum(int(a["n_trajectories"]) for a in shard_attrs),
        "n_rows_stored": sum(int(a["n_rows"]) for a in shard_attrs),
        "n_tokens_processed": processed,
        "n_truncated": sum(int(a["n_truncated"]) for a in shard_attrs),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        "model_dtypes": sorted({str(a["model_dtype"]) for a in shard_attrs}),
    }
    write_json(out / MANIFEST, done)
    return done
