"""The numbers behind the q_curves figure: a per-token signal averaged per class along aligned positions, with bands.

Spaghetti of a few random trajectories says little; a mean per class with a
group-bootstrap band (`probekit.metrics.group_mean_band`, resampling problems)
says how far correct and incorrect solutions separate, and where. Positions are
aligned at the start of the completion, or, for incorrect solutions whose first
wrong token is known (synthetic and corrupted data record `error_token`), at
that token, so a drop in Q caused by the error lines up across solutions.
"""

from __future__ import annotations

import numpy as np

from probekit.metrics import bootstrap_counts, group_mean_band

# Positions reached by fewer trajectories than this are not drawn: a mean of one or two curves is noise.
MIN_TRAJECTORIES = 5


def aligned_matrix(offsets: np.ndarray, positions: np.ndarray, signal: np.ndarray, rows: np.ndarray,
                   anchor: np.ndarray | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, values [len(rows), len(x)]): the signal of trajectories `rows` at position − anchor, NaN where a trajectory has no state.

    `offsets`/`positions`/`signal` are per-token scores concatenated trajectory
    by trajectory (`probekit.probe.scoring.Scores`); `anchor` is one position
    per row (e.g. its first wrong token) or one for all. x holds every relative
    position any row reaches, in increasing order.
    """
    rows = np.asarray(rows, np.int64)
    anchor = np.broadcast_to(np.asarray(anchor, np.int64), rows.shape)
    starts, ends = offsets[rows], offsets[rows + 1]
    lengths = ends - starts
    token = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
    which = np.repeat(np.arange(len(rows)), lengths)
    rel = positions[token] - np.repeat(anchor, lengths)
    x = np.unique(rel)
    values = np.full((len(rows), len(x)), np.nan)
    values[which, np.searchsorted(x, rel)] = signal[token]
    return x, values


def class_band(offsets: np.ndarray, positions: np.ndarray, signal: np.ndarray, rows: np.ndarray, groups: np.ndarray,
               anchor: np.ndarray | int = 0, n_boot: int = 1000, seed: int = 0, min_trajectories: int = MIN_TRAJECTORIES) -> dict:
    """Mean signal of trajectories `rows` per aligned position with its 95% group-bootstrap band.

    `groups` (one per row) are what is resampled (problems). Positions reached
    by fewer than `min_trajectories` rows are left out. Returns "x", "mean",
    "lo", "hi", "n" (rows with a state there) and "n_trajectories".
    """
    x, values = aligned_matrix(offsets, positions, signal, rows, anchor)
    names, gid = np.unique(np.asarray(groups), return_inverse=True)
    band = group_mean_band(values, gid, bootstrap_counts(len(names), n_boot, seed))
    keep = band["n"] >= min_trajectories
    return {"x": x[keep], **{k: v[keep] for k, v in band.items()}, "n_trajectories": int(len(rows))}
