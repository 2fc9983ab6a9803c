"""The planted stores of the cost curves (run_scale.py; adhoc/scale_memory.py): synthetic states written through the real store writer.

Stores of one 576-wide layer (SmolLM2's width, layer 15) are written with synthetic states through
`probekit.store.write_shard`, `probekit.extract.manifest.build_manifest` / `finalize` and `write_pairs`
(the same calls `probekit extract` makes). The states carry a planted signal, so fitting is meaningful:
every row is a random noise row plus +a·u (u a fixed unit direction) on correct trajectories, and on
incorrect ones +a·u before a random error token and −a·u from it on. Trajectories come in groups of 4
(2 correct, 2 incorrect: 4 pairs per group), 512 per shard. `fit_config` is the fit the curves measure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.harness import Clock

HIDDEN = 576
LAYER = 15
GROUP = 4  # 2 correct + 2 incorrect trajectories per group
SHARD_SIZE = 512  # trajectories per shard: extract's default
SIGNAL = 1.0  # a: planted signal along u, against unit-variance noise per feature
POOL_ROWS = 1 << 15  # noise rows drawn once and sampled with replacement (drawing 1e10 normals would dominate)


def planted_lengths(n_rows: int, mean_len: int, seed: int) -> np.ndarray:
    """Trajectory lengths (uniform in mean ± 25%) in whole groups, totalling about `n_rows`."""
    rng = np.random.default_rng(seed)
    n_traj = max(GROUP * 3, int(round(n_rows / mean_len / GROUP)) * GROUP)
    return rng.integers(int(mean_len * 0.75), int(mean_len * 1.25) + 1, size=n_traj)


def write_planted_store(path: Path, n_rows: int, mean_len: int = 200, seed: int = 0) -> dict:
    """Write a planted store of about `n_rows` rows to `path` through probekit's store writer; returns its summary."""
    from probekit.data.schema import Pair, write_pairs
    from probekit.extract.manifest import build_manifest, finalize
    from probekit.io import write_json
    from probekit.store import MANIFEST, PAIRS, ShardData, shard_name, write_shard

    clock = Clock().start()
    lengths = planted_lengths(n_rows, mean_len, seed)
    n = len(lengths)
    labels = np.tile([1, 1, 0, 0], n // GROUP)
    rng = np.random.default_rng(seed + 1)
    error = np.where(labels == 0, (rng.random(n) * 0.8 * lengths).astype(np.int64) + 1, -1)
    u = rng.standard_normal(HIDDEN).astype(np.float32)
    u /= np.linalg.norm(u)
    pool = rng.standard_normal((POOL_ROWS, HIDDEN), dtype=np.float32)
    n_shards = -(-n // SHARD_SIZE)
    key = {"model_sha256": "synthetic-planted", "layers": [LAYER], "dtype": "float16", "shard_size": SHARD_SIZE,
           "data_sha256": f"planted-{n}-{mean_len}-{seed}"}
    manifest = build_manifest(key, {
        "model": {"name": "synthetic-planted", "source": "benchmarks/planted.py", "file_sha256": None, "revision": None,
                  "num_layers": 30, "hidden_size": HIDDEN, "dtype": "float32", "dtype_choice": "synthetic states, no model"},
        "layers": [LAYER], "dtype": "float16", "template": "raw", "positions": "all", "max_length": 1024,
        "data": {"trajectories": "synthetic", "n_trajectories": n, "n_pairs": 4 * (n // GROUP)},
        "shards": {"n": n_shards, "size": SHARD_SIZE},
    })
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / MANIFEST, manifest)
    ids = np.asarray([f"t{i}" for i in range(n)], dtype=object)
    groups = np.asarray([f"g{i // GROUP}" for i in range(n)], dtype=object)
    attrs = []
    for s in range(n_shards):
        lo, hi = s * SHARD_SIZE, min(n, (s + 1) * SHARD_SIZE)
        lens = lengths[lo:hi]
        offsets = np.concatenate([[0], np.cumsum(lens)])
        positions = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lens)
        sign = np.repeat(np.where(labels[lo:hi] == 1, 1.0, 0.0), lens)
        bad = np.repeat(labels[lo:hi] == 0, lens)
        sign[bad] = np.where(positions[bad] < np.repeat(error[lo:hi], lens)[bad], 1.0, -1.0)
        states = pool[rng.integers(0, POOL_ROWS, size=offsets[-1])]
        states += (SIGNAL * sign.astype(np.float32))[:, None] * u
        data = ShardData(
            offsets=offsets, positions=positions, states={LAYER: states.astype(np.float16)},
            meta={"id": ids[lo:hi], "group": groups[lo:hi], "answer": [""] * (hi - lo), "label": labels[lo:hi],
                  "completion_tokens": lens, "truncated_tokens": np.zeros(hi - lo), "error_token": error[lo:hi]},
            attrs={"n_trajectories": hi - lo, "n_rows": int(offsets[-1]), "n_tokens_processed": int(offsets[-1]), "n_truncated": 0,
                   "cache_key": manifest["cache_key"], "shard_index": s, "seconds": 0.0, "model_dtype": "synthetic"})
        write_shard(path / shard_name(s), data)
        attrs.append(data.attrs)
        del states, data
    chosen = np.flatnonzero(labels == 1)
    write_pairs(path / PAIRS, [Pair(ids[c], ids[r]) for c in chosen for r in (c // GROUP * GROUP + 2, c // GROUP * GROUP + 3)])
    finalize(path, manifest, attrs)
    return {"n_rows": int(lengths.sum()), "n_trajectories": n, "n_groups": n // GROUP, "n_pairs": 2 * len(chosen),
            "n_shards": n_shards, "bytes_on_disk": sum(p.stat().st_size for p in path.glob("shard-*.h5")),
            "write_seconds": round(clock.elapsed, 2)}


def fit_config(args, epochs: int, **changes):
    from probekit.config import FitConfig

    return FitConfig().vary(layer=LAYER, epochs=epochs, patience=epochs, memory_budget_mb=args.memory_budget_mb, device=args.device,
                            **changes)
