"""Early stopping of a sampled solution by its per-token signal: the filter's arithmetic.

A trajectory is dropped at its first stored token whose position is >= its
skip and whose signal (Q-value or reward) is < `threshold`. The skip is one
`skip_first` for all, or per trajectory (`skip_positions`: the official
evaluation's `generation_percentile` skips a share of each solution's length).
Generation would stop there, so the tokens after the drop point are saved:
saved = completion tokens − (drop position + 1); kept trajectories save
nothing. Equivalently a trajectory is kept iff its minimum signal over
eligible tokens (`min_signal`) is >= threshold. Pure numpy, vectorised over
all tokens: the same rule decides after the fact (`probekit filter`) and
while generating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FilterResult:
    threshold: float
    kept: np.ndarray  # bool [n]
    first_drop_position: np.ndarray  # int64 [n], -1 when kept
    saved_tokens: np.ndarray  # int64 [n]
    n_tokens: np.ndarray  # int64 [n]: completion tokens

    @property
    def dropped(self) -> np.ndarray:
        return ~self.kept

    def on_store(self, traj: np.ndarray, completion_tokens: np.ndarray) -> FilterResult:
        """This result of the trajectories `traj` of a store, as a result over all of the store's trajectories
        (`completion_tokens`): the others kept whole. For votes read only on the groups of `traj`."""
        n = len(completion_tokens)
        kept, first, saved = np.ones(n, bool), np.full(n, -1, np.int64), np.zeros(n, np.int64)
        kept[traj], first[traj], saved[traj] = self.kept, self.first_drop_position, self.saved_tokens
        return FilterResult(self.threshold, kept, first, saved, np.asarray(completion_tokens, np.int64).copy())


def _check_offsets(offsets: np.ndarray, rows: int) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != rows or (np.diff(offsets) < 0).any():
        raise ValueError("offsets must start at 0, end at the number of rows and never decrease")
    return offsets


def skip_positions(completion_tokens: np.ndarray, skip_first: int, skip_frac: float = 0.0) -> np.ndarray:
    """int64 [n]: per trajectory, the first completion position a drop may happen at, max(skip_first, floor(skip_frac * length)).

    The official evaluation (`get_accuracy` in examples/eval_rm.py and
    examples/experiments/eval/rm_dense_eval.py of vaskarnathscale/goal-conditioned-rm) slices each solution's cosine
    similarities as `cosine_sim[max(5, int(len(cosine_sim) * generation_percentile)):]`; int()
    of a non-negative float64 product is its floor, so with skip_first 5 this is that rule exactly.
    """
    length = np.asarray(completion_tokens, np.int64)
    return np.maximum(int(skip_first), np.floor(length * float(skip_frac)).astype(np.int64))


def _eligible(offsets: np.ndarray, positions: np.ndarray, skip: int | np.ndarray) -> np.ndarray:
    """bool per row: its position is at or after its trajectory's skip (one int for all, or int [n] per trajectory)."""
    positions = np.asarray(positions)
    if np.ndim(skip) == 0:
        return positions >= skip
    return positions >= np.repeat(np.asarray(skip, np.int64), np.diff(offsets))


def segment_min(values: np.ndarray, offsets: np.ndarray, empty: float) -> np.ndarray:
    """Minimum of values[offsets[i]:offsets[i+1]] for each i; `empty` for empty segments."""
    offsets = _check_offsets(offsets, len(values))
    starts = offsets[:-1]
    nonempty = offsets[1:] > starts
    values = np.asarray(values)
    out = np.full(len(starts), empty, dtype=np.result_type(values, np.asarray(empty)))
    if nonempty.any():
        out[nonempty] = np.minimum.reduceat(values, starts[nonempty])
    return out


def min_signal(offsets: np.ndarray, positions: np.ndarray, signal: np.ndarray, skip_first: int | np.ndarray) -> np.ndarray:
    """Per-trajectory minimum signal over tokens at positions >= skip_first (one, or one per trajectory; +inf when none)."""
    eligible = _eligible(_check_offsets(offsets, len(signal)), positions, skip_first)
    vals = np.where(eligible, np.asarray(signal, np.float64), np.inf)
    vals = np.where(np.isnan(vals), np.inf, vals)  # NaN never triggers a drop
    return segment_min(vals, offsets, np.inf)


def apply_threshold(
    offsets: np.ndarray,
    positions: np.ndarray,
    signal: np.ndarray,
    completion_tokens: np.ndarray,
    threshold: float,
    skip_first: int | np.ndarray = 5,
) -> FilterResult:
    """Drop each trajectory at its first token (position >= skip_first, one or one per trajectory) with signal < threshold."""
    positions = np.asarray(positions)
    signal = np.asarray(signal)
    rows = len(signal)
    offsets = _check_offsets(offsets, rows)
    if len(positions) != rows:
        raise ValueError("positions and signal must have the same length")
    completion = np.asarray(completion_tokens, np.int64)
    below = _eligible(offsets, positions, skip_first) & (signal < threshold)
    first_row = segment_min(np.where(below, np.arange(rows, dtype=np.int64), rows), offsets, rows).astype(np.int64)
    dropped = first_row < rows
    drop_pos = np.full(len(first_row), -1, np.int64)
    drop_pos[dropped] = positions[first_row[dropped]]
    saved = np.zeros(len(first_row), np.int64)
    saved[dropped] = np.maximum(completion[dropped] - (drop_pos[dropped] + 1), 0)
    return FilterResult(float(threshold), ~dropped, drop_pos, saved, completion.copy())
