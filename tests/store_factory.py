"""Write a valid probekit store directly from numpy arrays (no model), for unit tests.

Lets tests plant a known signal in the states (e.g. a direction that marks
correct trajectories) and check that fit/eval/filter recover it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from probekit.data.schema import Pair, write_pairs
from probekit.extract.manifest import build_manifest, finalize
from probekit.io import write_json
from probekit.store import MANIFEST, PAIRS, StoredTrajectory, shard_data, shard_name, write_shard


def make_store(
    path: Path,
    states: list[np.ndarray],
    groups: list[str],
    labels: list[int],
    answers: list[str | None] | None = None,
    error_tokens: list[int] | None = None,
    pairs: list[tuple[int, int]] | None = None,
    layer: int = 2,
    shard_size: int = 8,
    model_name: str = "test-model",
    more_layers: dict[int, list[np.ndarray]] | None = None,
    margins: list[float | None] | None = None,
) -> Path:
    """`states[i]` is [T_i, hidden] for trajectory i (all positions stored) at `layer`; `more_layers` adds layers of the same shapes;
    `margins[k]` is pair k's `margin` field (None: none written)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n = len(states)
    hidden = states[0].shape[1]
    ids = [f"t{i}" for i in range(n)]
    answers = answers or [None] * n
    error_tokens = error_tokens or [-1] * n
    by_layer = {layer: states, **(more_layers or {})}
    layers = sorted(by_layer)
    key = {"model_sha256": model_name, "layers": layers, "data_sha256": str(abs(hash((n, hidden, model_name)))), "shard_size": shard_size}
    manifest = build_manifest(
        key,
        {
            "model": {"name": model_name, "source": model_name, "file_sha256": model_name, "revision": None, "num_layers": max(layers), "hidden_size": hidden},
            "layers": layers,
            "dtype": "float32",
            "template": "raw",
            "positions": "all",
            "max_length": 10_000,
            "data": {"n_trajectories": n},
            "shards": {"n": (n + shard_size - 1) // shard_size, "size": shard_size},
        },
    )
    write_json(path / MANIFEST, manifest)
    attrs = []
    for s in range(manifest["shards"]["n"]):
        idx = range(s * shard_size, min(n, (s + 1) * shard_size))
        rows = [StoredTrajectory(ids[i], groups[i], answers[i], labels[i], np.arange(len(states[i])),
                                 {lay: xs[i] for lay, xs in by_layer.items()}, len(states[i]), 0, error_tokens[i]) for i in idx]
        data = shard_data(rows, layers, np.float32, n_tokens_processed=sum(len(r.positions) for r in rows),
                          cache_key=manifest["cache_key"], shard_index=s, seconds=0.0, model_dtype="float32")
        write_shard(path / shard_name(s), data)
        attrs.append(data.attrs)
    if pairs is None:
        pairs = [(i, j) for i in range(n) for j in range(n) if groups[i] == groups[j] and labels[i] == 1 and labels[j] == 0]
    margins = margins or [None] * len(pairs)
    write_pairs(path / PAIRS, [Pair(ids[a], ids[b], m) for (a, b), m in zip(pairs, margins)])
    finalize(path, manifest, attrs)
    return path
