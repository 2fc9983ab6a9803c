"""Goals, in one place: which kinds exist, how they are built, and the Q-value search against them.

The paper's Q-value of a (partial) trajectory is the cosine similarity between
the probe representation φ(s_t) of its latest state and the goal state's
representation (the mean representation of preferred completions). With K
prototypes (k-means centres of preferred representations) the Q-value is the
best cosine to any of them. An exact inner-product faiss index over
L2-normalised prototypes does the search.

A checkpoint stores its goals as {kind: prototypes [G, rep]}: "mean" always,
"kmeans" when fitted with more than one prototype.
"""

from __future__ import annotations

import numpy as np

from probekit.config import GOAL_KINDS
from probekit.errors import ProbekitError

_EPS = 1e-12


def build_goals(z: np.ndarray, n_prototypes: int, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Goals from the representations z [n, rep] of preferred completions' final states.

    "mean" [1, rep] always; "kmeans" [k, rep] (k = min(n_prototypes, n), seeded)
    when n_prototypes > 1. Returns (goals, info for the checkpoint's metrics).
    """
    z = np.asarray(z, dtype=np.float32)
    if len(z) == 0:
        raise ProbekitError("no preferred completions to build a goal from")
    goals = {"mean": z.mean(axis=0, keepdims=True)}
    info: dict = {"n_goal_states": int(len(z))}
    if n_prototypes > 1:
        k = min(n_prototypes, len(z))
        goals["kmeans"] = kmeans(z, k, seed)
        info["kmeans_k"] = int(k)
    return goals, info


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 25) -> np.ndarray:
    """Seeded faiss k-means centroids [k, d] (single-threaded for reproducibility)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed), verbose=False, min_points_per_centroid=1, max_points_per_centroid=1 << 20)
        km.train(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(km.centroids, dtype=np.float32).copy()
    finally:
        faiss.omp_set_num_threads(threads)


def goal_prototypes(goals: dict[str, np.ndarray], kind: str, where: object = "checkpoint") -> np.ndarray:
    """The prototypes [G, rep] of one goal: the checkpoint's kinds, or a named goal added beside them (`probekit goal`).

    A missing goal gets an error that says how to get it.
    """
    protos = (goals or {}).get(kind)
    if protos is None:
        if kind == "kmeans":
            raise ProbekitError(f"{where}: no kmeans goal prototypes; re-fit with --goal-prototypes K (K > 1)")
        if kind == "mean":
            raise ProbekitError(f"{where}: no '{kind}' goal; re-fit the probe")
        known = sorted(set(GOAL_KINDS) | set(goals or {}))
        raise ProbekitError(f"unknown goal '{kind}' (choose from {', '.join(known)}, or add one with `probekit goal` and --goal-from)")
    return np.asarray(protos, dtype=np.float32)


def check_goal_arrays(goals: dict[str, np.ndarray], rep_size: int, source: object) -> None:
    """Refuse goal prototypes a probe with representations of width `rep_size` cannot score.

    Each goal must be a finite [K >= 1, rep_size] array. One check for both
    files that hold prototypes (a checkpoint's goals.safetensors and a goal
    folder's goal.safetensors): a wrong shape is named with its file here,
    not found later as a faiss or matmul error mid-run.
    """
    if not goals:
        raise ProbekitError(f"{source}: holds no goal prototypes")
    for name, protos in goals.items():
        shape = list(np.shape(protos))
        if len(shape) != 2 or shape[0] < 1 or shape[1] != rep_size:
            raise ProbekitError(f"{source}: goal '{name}' has shape {shape}; this probe's goals are [K, {rep_size}] (K >= 1)")
        if not np.isfinite(protos).all():
            raise ProbekitError(f"{source}: goal '{name}' holds NaN or infinite values")


def ordered_kinds(goals: dict[str, np.ndarray]) -> list[str]:
    """The goal kinds present, the paper's mean goal first."""
    return sorted(goals, key=lambda k: (k != "mean", k))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise each row (float32). Zero-norm rows stay zero (their cosine is 0)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, _EPS), dtype=np.float32)


class GoalIndex:
    """Exact cosine search against goal prototypes, `prototypes` [K, rep] (or [rep])."""

    def __init__(self, prototypes: np.ndarray):
        import faiss

        protos = np.asarray(prototypes, dtype=np.float32)
        if protos.ndim == 1:
            protos = protos[None, :]
        if protos.ndim != 2 or protos.shape[0] == 0 or protos.shape[1] == 0:
            raise ProbekitError(f"goal prototypes must be a non-empty [K, rep] array, got shape {tuple(protos.shape)}")
        if not np.isfinite(protos).all():
            raise ProbekitError("goal prototypes contain NaN or infinite values")
        if (np.linalg.norm(protos, axis=1) <= _EPS).any():
            raise ProbekitError("a goal prototype has zero norm; its cosine similarity is undefined")
        self.prototypes = normalize_rows(protos)
        self.index = faiss.IndexFlatIP(self.prototypes.shape[1])
        self.index.add(self.prototypes)

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    def __len__(self) -> int:
        return int(self.prototypes.shape[0])

    def search(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best cosine [n], index of the nearest prototype [n]) for representations z [n, rep]."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim == 1:
            z = z[None, :]
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ProbekitError(f"representations have shape {tuple(z.shape)}, expected [n, {self.dim}]")
        if len(z) == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        sims, idx = self.index.search(normalize_rows(z), 1)
        return np.clip(sims[:, 0], -1.0, 1.0), idx[:, 0].astype(np.int64)

    def q_values(self, z: np.ndarray) -> np.ndarray:
        """Best cosine of each row of z [n, rep] to any prototype, float32 [n]. Zero rows get 0."""
        return self.search(z)[0]
