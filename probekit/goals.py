"""Goal prototypes and Q-values: cosine similarity of a state's representation to a goal.

The paper's Q-value of a (partial) trajectory is the cosine similarity between
the probe representation φ(s_t) of its latest state and the goal state's
representation (the mean representation of preferred completions). With K
prototypes (e.g. k-means centres of preferred representations) the Q-value is
the best cosine to any of them. An exact inner-product faiss index over
L2-normalised prototypes does the search.
"""

from __future__ import annotations

import numpy as np

from probekit.errors import ProbekitError

_EPS = 1e-12


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
