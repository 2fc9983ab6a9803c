"""Everything training and evaluation read from a store: row sources, group splits, batches.

Row sources
    `MemoryRows` loads the layers into memory; `StreamRows` reads the rows a
    batch needs with `Store.read_rows`. `open_rows` picks one from the memory
    budget. Both return identical float32 arrays, so a fit gives the same
    result either way. A source of several layers returns their states side by
    side ([rows, n_layers·hidden], in the order of `layers`), which is the
    input of a multi-layer probe; every layer goes through the store's
    non-finite check.

Splits
    By GROUP (all answers to one prompt go to one side), seeded, saved in the
    checkpoint as {"train": [groups], "valid": [...], "test": [...]}.

Contrastive sampling (Nath et al. 2024), in stored rows
    A trajectory's rows are `row_start[i]:row_end[i]`; with the positions
    policies "stride"/"last" only some token positions are stored, so all
    sampling is over stored rows. Positives: K (source, goal) row pairs on the
    chosen completion, goal in the rows at positions >= goal_min_frac·T (never
    the first stored row), source uniformly among the stored rows strictly
    before it; a completion with a single stored row uses source = goal = last.
    Negatives: K random rows of the chosen completion paired with K random rows
    of the rejected one, uniform, or restricted to the last `late_frac` of each
    completion.

Official sampling (`sample_official`; vaskarnathscale/goal-conditioned-rm,
openrlhf/models/loss.py, `ContrastiveGoalLoss.forward`)
    K (source, goal) uniform pairs sorted so u_source <= u_goal, each mapped to
    f = (P − 1)·u + 1 in (P, 1] (P: `--source-window` / `--goal-window`, the
    official `--source_state_percentile` / `--goal_state_percentile`) and to
    the position counted from the end −(floor(f·n)+1), n the completion's
    tokens; negatives: K chosen positions in the source window, K rejected in
    the goal window, unsorted. The official index counts from the appended EOS
    token and can reach one token into the prompt (f = 1); probekit counts from
    the completion's last token and clamps to its first. A position maps to the
    last stored row at or before it (the position itself when every token is
    stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from probekit.errors import ProbekitError
from probekit.io import read_json
from probekit.store import ShardBlock, Store

SPLITS = ("train", "valid", "test")
# A block of whole trajectories holds at most this many bytes of float32 states (one longer trajectory is a
# block alone), so streaming a split costs the same memory at any store size; with a 576-wide layer ~29k rows.
BLOCK_BYTES = 64 << 20


# ---- row sources ------------------------------------------------------------
class RowSource:
    """States of global rows of one layer (or several side by side), as float32."""

    in_memory: bool = False

    def __init__(self, store: Store, layers: int | Sequence[int]):
        self.layers = (int(layers),) if np.isscalar(layers) else tuple(int(x) for x in layers)
        for layer in self.layers:
            store.check_layer(layer)
        self.store = store
        self.hidden_size = store.hidden_size * len(self.layers)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return _side_by_side([self.store.read_rows(layer, rows) for layer in self.layers])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), hidden], in the order asked."""
        raise NotImplementedError

    def blocks(self, trajectories: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (trajectory indices, local offsets [n+1], states of their rows concatenated).

        Covers every trajectory in `trajectories` exactly once (in increasing
        index order), a block of at most `BLOCK_BYTES` of states at a time.
        """
        raise NotImplementedError

    def _block_rows(self) -> int:
        return max(1, BLOCK_BYTES // (4 * self.hidden_size))


class MemoryRows(RowSource):
    """The whole layer(s) in memory (`Store.load_layer`)."""

    in_memory = True

    def __init__(self, store: Store, layers: int | Sequence[int]):
        super().__init__(store, layers)
        self.states = _side_by_side([store.load_layer(layer) for layer in self.layers])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self.states[np.asarray(rows, dtype=np.int64)]

    def blocks(self, trajectories):
        meta = self.store.meta
        positions = self.store.positions()
        traj = np.unique(np.asarray(trajectories, dtype=np.int64))
        for chunk in _bounded_runs(traj, meta.stored_tokens, self._block_rows()):
            rows = _rows_of(meta.row_start[chunk], meta.row_end[chunk])
            yield ShardBlock(chunk, _offsets(meta.stored_tokens[chunk]), positions[rows], self.states[rows])


class StreamRows(RowSource):
    """Reads rows from the shards on demand: memory stays bounded by a batch (or one block)."""

    def rows(self, rows: np.ndarray) -> np.ndarray:
        return self._read(rows)

    def blocks(self, trajectories):
        meta = self.store.meta
        want = np.zeros(len(meta), dtype=bool)
        want[np.asarray(trajectories, dtype=np.int64)] = True
        for s in np.unique(meta.shard[want]).tolist():
            first = int(np.searchsorted(meta.shard, s))
            n = int(np.searchsorted(meta.shard, s, side="right")) - first
            for sel in _bounded_runs(np.flatnonzero(want[first:first + n]) + first, meta.stored_tokens, self._block_rows()):
                rows = _rows_of(meta.row_start[sel], meta.row_end[sel])
                # Just the selected trajectories' rows (runs of rows are one read each): an evaluation of a 20% split
                # no longer reads, converts and drops the other 80% of every shard. Positions: the block's span only.
                states = self._read(rows)
                local = rows - meta.row_start[first]
                span = local[0] if len(local) else 0
                positions = self.store.shard_positions(s, span, local[-1] + 1 if len(local) else 0)[local - span]
                yield ShardBlock(sel, _offsets(meta.stored_tokens[sel]), positions, states)


def _bounded_runs(traj: np.ndarray, stored_tokens: np.ndarray, max_rows: int) -> Iterator[np.ndarray]:
    """Consecutive runs of the trajectories `traj` with at most `max_rows` stored rows each (at least one trajectory)."""
    i = 0
    while i < len(traj):
        j, n_rows = i, 0
        while j < len(traj) and (j == i or n_rows + stored_tokens[traj[j]] <= max_rows):
            n_rows += int(stored_tokens[traj[j]])
            j += 1
        yield traj[i:j]
        i = j


def _side_by_side(parts: list[np.ndarray]) -> np.ndarray:
    """One layer's array as it is (no copy), several concatenated along the features."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _rows_of(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(starts[i], ends[i]) (vectorised)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    if len(lengths) == 0 or lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    offs = _offsets(lengths)
    return np.arange(offs[-1], dtype=np.int64) - np.repeat(offs[:-1] - starts, lengths)


def open_rows(store: Store, layers: int | Sequence[int], memory_budget_mb: float) -> RowSource:
    """`MemoryRows` when the layer(s) (`store.nbytes` each) fit the budget, else `StreamRows`."""
    n_layers = 1 if np.isscalar(layers) else len(layers)
    if store.nbytes * n_layers < memory_budget_mb * (1 << 20):
        return MemoryRows(store, layers)
    return StreamRows(store, layers)


def trajectory_rows(store: Store, trajectories: np.ndarray) -> np.ndarray:
    """All stored rows of the given trajectories, concatenated in the given order."""
    trajectories = np.asarray(trajectories, dtype=np.int64)
    return _rows_of(store.meta.row_start[trajectories], store.meta.row_end[trajectories])


# ---- splits -----------------------------------------------------------------
def make_split(groups: np.ndarray, valid_frac: float, test_frac: float, seed: int) -> dict[str, list[str]]:
    """Seeded random split of the distinct groups into train/valid/test.

    A non-zero fraction gets at least one group when there are at least three
    groups; train must keep at least one group.
    """
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise ProbekitError(f"valid_frac and test_frac must be in [0, 1) with a sum below 1, got {valid_frac} and {test_frac}")
    uniq = sorted(set(str(g) for g in groups))
    n = len(uniq)
    perm = np.random.default_rng(seed).permutation(n)

    def count(frac: float) -> int:
        k = int(round(frac * n))
        return max(k, 1) if frac > 0 and n >= 3 else k

    n_valid, n_test = count(valid_frac), count(test_frac)
    if n_valid + n_test >= n:
        raise ProbekitError(f"empty train split: {n} group(s) cannot be split with valid_frac={valid_frac}, test_frac={test_frac}")
    shuffled = [uniq[i] for i in perm]
    return {
        "train": sorted(shuffled[n_valid + n_test:]),
        "valid": sorted(shuffled[:n_valid]),
        "test": sorted(shuffled[n_valid:n_valid + n_test]),
    }


def read_split(path: str | Path, groups: np.ndarray) -> dict[str, list[str]]:
    """Read an explicit split JSON ({"train": [...], "valid": [...], "test": [...]}) and check it."""
    obj = read_json(path)
    if not isinstance(obj, dict) or "train" not in obj:
        raise ProbekitError(f"{path}: a split file is a JSON object with lists 'train', 'valid', 'test'")
    split: dict[str, list[str]] = {}
    for name in SPLITS:
        value = obj.get(name, [])
        if not isinstance(value, list):
            raise ProbekitError(f"{path}: '{name}' must be a list of group names")
        split[name] = sorted(str(g) for g in value)
    extra = set(obj) - set(SPLITS)
    if extra:
        raise ProbekitError(f"{path}: unknown key(s) {sorted(extra)}; expected train, valid, test")
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                both = set(split[a]) & set(split[b])
                if both:
                    raise ProbekitError(f"{path}: group '{sorted(both)[0]}' is in both '{a}' and '{b}'")
    known = set(str(g) for g in groups)
    unknown = [g for name in SPLITS for g in split[name] if g not in known]
    if unknown:
        raise ProbekitError(f"{path}: {len(unknown)} group(s) not in the store (first: '{unknown[0]}')")
    return split


# ---- contrastive sampling ---------------------------------------------------
@dataclass
class SamplingIndex:
    """Per-trajectory row bounds used to sample contrastive rows (local indices are row - row_start)."""

    row_start: np.ndarray  # int64 [n_traj]
    row_end: np.ndarray  # int64 [n_traj]
    goal_lo: np.ndarray  # int64: first local row a goal may be (>= 1 when the trajectory has >= 2 rows)
    neg_lo: np.ndarray  # int64: first local row a negative may be
    completion_tokens: np.ndarray | None = None  # int64 [n_traj]: n of the official sampler
    positions: np.ndarray | Callable[[], np.ndarray] | None = None  # every global row's token position, or a reader of them

    @property
    def n_rows(self) -> np.ndarray:
        return self.row_end - self.row_start

    def row_positions(self) -> np.ndarray:
        return self.positions() if callable(self.positions) else self.positions


def _first_at_or_after(row_start, row_end, positions, targets) -> np.ndarray:
    """Per trajectory, the local index of the first stored row with position >= target (n if none).

    Positions increase within a trajectory, so a global key
    (trajectory, position) is sorted and one searchsorted does all of them.
    """
    n = row_end - row_start
    traj_of_row = np.repeat(np.arange(len(n), dtype=np.int64), n)
    if len(traj_of_row) == 0:
        return np.zeros(len(n), dtype=np.int64)
    rows = _rows_of(row_start, row_end)
    big = int(max(int(positions[rows].max()) if len(rows) else 0, int(np.max(targets, initial=0)))) + 2
    keys = traj_of_row * big + positions[rows].astype(np.int64)
    q = np.arange(len(n), dtype=np.int64) * big + np.asarray(targets, dtype=np.int64)
    offs = _offsets(n)
    return np.searchsorted(keys, q, side="left") - offs[:-1]


def build_sampling_index(
    row_start: np.ndarray,
    row_end: np.ndarray,
    positions: np.ndarray | Callable[[], np.ndarray],
    completion_tokens: np.ndarray,
    goal_min_frac: float = 0.0,
    late_frac: float | None = None,
) -> SamplingIndex:
    """Precompute, per trajectory, where goals and negatives may be sampled.

    `positions` is the token position of every global row (`Store.positions()`), or a function that
    returns it: then it is read only when a bound needs the search (4 bytes a row held by the store).
    """
    if not 0 <= goal_min_frac < 1:
        raise ProbekitError(f"goal_min_frac must be in [0, 1), got {goal_min_frac}")
    if late_frac is not None and not 0 < late_frac <= 1:
        raise ProbekitError(f"late_frac must be in (0, 1], got {late_frac}")
    row_start = np.asarray(row_start, dtype=np.int64)
    row_end = np.asarray(row_end, dtype=np.int64)
    T = np.asarray(completion_tokens, dtype=np.int64)
    n = row_end - row_start  # (a trajectory without stored rows is never sampled: `prepare` refuses pairs of them)
    goal_target = np.ceil(goal_min_frac * T - 1e-9).astype(np.int64)
    # With no lower bound every trajectory's goals start at its first stored row; the search would build four
    # arrays of the store's size for that (hundreds of MB at 1e7 rows).
    def pos() -> np.ndarray:
        return positions() if callable(positions) else positions

    goal_lo = _first_at_or_after(row_start, row_end, pos(), goal_target) if goal_target.any() else np.zeros(len(n), np.int64)
    goal_lo = np.clip(goal_lo, 1, np.maximum(n - 1, 1))
    goal_lo[n < 2] = 0
    if late_frac is None:
        neg_lo = np.zeros(len(n), dtype=np.int64)
    else:
        neg_target = np.ceil((1.0 - late_frac) * T - 1e-9).astype(np.int64)
        neg_lo = np.clip(_first_at_or_after(row_start, row_end, pos(), neg_target), 0, np.maximum(n - 1, 0))
    return SamplingIndex(row_start, row_end, goal_lo, neg_lo, T, positions)


def sample_positives(index: SamplingIndex, chosen: np.ndarray, K: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(source rows, goal rows), each int64 [B, K], on the chosen trajectories, source < goal."""
    chosen = np.asarray(chosen, dtype=np.int64)
    n = index.n_rows[chosen][:, None]
    lo = index.goal_lo[chosen][:, None]
    u_goal = rng.random((len(chosen), K))
    u_src = rng.random((len(chosen), K))
    goal = np.minimum(lo + np.floor(u_goal * (n - lo)).astype(np.int64), n - 1)
    src = np.minimum(np.floor(u_src * goal).astype(np.int64), np.maximum(goal - 1, 0))
    start = index.row_start[chosen][:, None]
    return start + src, start + goal


def sample_negatives(
    index: SamplingIndex, chosen: np.ndarray, rejected: np.ndarray, K: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(chosen rows, rejected rows), each int64 [B, K]: K random rows of each side, paired."""

    def draw(traj: np.ndarray) -> np.ndarray:
        traj = np.asarray(traj, dtype=np.int64)
        n = index.n_rows[traj][:, None]
        lo = index.neg_lo[traj][:, None]
        u = rng.random((len(traj), K))
        return index.row_start[traj][:, None] + np.minimum(lo + np.floor(u * (n - lo)).astype(np.int64), n - 1)

    return draw(chosen), draw(rejected)


def official_positions(u: np.ndarray, T: np.ndarray, window: float) -> np.ndarray:
    """Completion positions of uniforms u [B, K] in the official convention: f = (window − 1)·u + 1, counted from the
    end as −(floor(f·T)+1), i.e. position T − 1 − floor(f·T), clamped to the completion."""
    f = (window - 1.0) * u + 1.0
    T = np.asarray(T, dtype=np.int64)[:, None]
    return np.clip(T - 1 - np.floor(f * T).astype(np.int64), 0, T - 1)


def rows_at_or_before(index: SamplingIndex, traj: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Global rows [B, K]: per trajectory traj[b], the last stored row with position <= targets[b, k] (else its first).

    One searchsorted over the batch's rows keyed (batch entry, position); the
    positions are read only when some trajectory does not store every token.
    """
    traj = np.asarray(traj, dtype=np.int64)
    n = index.n_rows[traj]
    start = index.row_start[traj][:, None]
    if np.array_equal(n, index.completion_tokens[traj]):  # every token stored: row = position
        return start + np.minimum(targets, n[:, None] - 1)
    rows = _rows_of(index.row_start[traj], index.row_end[traj])
    pos = index.row_positions()[rows].astype(np.int64)
    big = int(max(pos.max(initial=0), targets.max(initial=0))) + 2
    keys = np.repeat(np.arange(len(traj), dtype=np.int64), n) * big + pos
    local = np.searchsorted(keys, np.arange(len(traj))[:, None] * big + targets, side="right") - 1 - _offsets(n)[:-1, None]
    return start + np.clip(local, 0, n[:, None] - 1)


def sample_official(index: SamplingIndex, chosen: np.ndarray, rejected: np.ndarray, K: int, rng: np.random.Generator,
                    source_window: float = 0.0, goal_window: float = 0.0,
                    k_unsim: int | None = None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((source rows, goal rows) int64 [B, K], (chosen rows, rejected rows) int64 [B, k_unsim]), drawn as the official
    code draws them: the uniforms in its order (positives [B, 2, K] sorted on axis 1, then the chosen and the rejected
    negatives). K is its --sim_samples, `k_unsim` its --unsim_samples (default K)."""
    k_unsim = K if k_unsim is None else k_unsim
    chosen, rejected = np.asarray(chosen, dtype=np.int64), np.asarray(rejected, dtype=np.int64)
    T_c, T_r = index.completion_tokens[chosen], index.completion_tokens[rejected]
    u = np.sort(rng.random((len(chosen), 2, K)), axis=1)
    u_chosen, u_rejected = rng.random((len(chosen), k_unsim)), rng.random((len(rejected), k_unsim))

    def rows(traj, T, uniforms, window):
        return rows_at_or_before(index, traj, official_positions(uniforms, T, window))

    return ((rows(chosen, T_c, u[:, 0], source_window), rows(chosen, T_c, u[:, 1], goal_window)),
            (rows(chosen, T_c, u_chosen, source_window), rows(rejected, T_r, u_rejected, goal_window)))


def iter_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled index batches covering range(n) once."""
    perm = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def feature_stats(source: RowSource, trajectories: np.ndarray, max_rows: int = 200_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float64 accumulation) over the stored rows of `trajectories` (increasing),
    or a seeded subsample of `max_rows` of them.

    The subsample is drawn as positions among those rows and mapped to rows per trajectory, so the rows
    themselves (8 bytes each) are never listed; the draw is the one `choice` makes on the listed rows.
    """
    meta = source.store.meta
    traj = np.asarray(trajectories, dtype=np.int64)
    starts = _offsets(meta.stored_tokens[traj])
    if starts[-1] > max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(int(starts[-1]), size=max_rows, replace=False))
        owner = np.searchsorted(starts, pick, side="right") - 1
        rows = meta.row_start[traj][owner] + (pick - starts[owner])
    else:
        rows = trajectory_rows(source.store, traj)
    total = np.zeros(source.hidden_size)
    sq = np.zeros(source.hidden_size)
    for i in range(0, len(rows), 8192):
        x = source.rows(rows[i:i + 8192]).astype(np.float64)
        total += x.sum(axis=0)
        sq += (x * x).sum(axis=0)
    count = max(len(rows), 1)
    mean = total / count
    var = np.maximum(sq / count - mean * mean, 0.0)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def ceil_frac_position(frac: float, T: np.ndarray) -> np.ndarray:
    """Token index of the prefix that covers `frac` of a completion: ceil(frac·T) − 1 (at least 0)."""
    return np.maximum(np.ceil(frac * np.asarray(T, dtype=np.float64) - 1e-9).astype(np.int64) - 1, 0)



def cross_pairs(labels: np.ndarray, traj: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Every (label 1, label 0) pair among the trajectories `traj`, across groups; a seeded subsample of `cap` when more.

    Pointwise-style training data: with few answers per prompt, within-group
    pairs leave most labelled trajectories unpaired. int64 [n, 2] (chosen, rejected),
    in (chosen, rejected) index order.
    """
    traj = np.asarray(traj, dtype=np.int64)
    pos, neg = traj[labels[traj] == 1], traj[labels[traj] == 0]
    n = len(pos) * len(neg)
    if n == 0:
        return np.zeros((0, 2), np.int64)
    pick = np.arange(n) if n <= cap else np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
    return np.stack([pos[pick // len(neg)], neg[pick % len(neg)]], axis=1)
