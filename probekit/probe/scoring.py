"""The one scorer: a fitted probe's per-token reward and Q-values.

Evaluation, filtering and generation all turn states into (reward, Q) here, so
the same token gets the same number whichever command reads it:

* φ runs with the input standardisation folded into its first layer
  (`ProbeModel.folded_encoder`), in float32, a batch at a time;
* Q for each goal kind is the best cosine of φ to that kind's prototypes, by
  an exact faiss inner-product search (`probekit.probe.goals.GoalIndex`); Q is per
  token whatever the probe;
* the reward of a row is the reward of the completion's prefix that ends
  there: the head on φ for a last-token probe, the head on the pooled φ of the
  prefix for a mean- or attention-pooled one (`ProbeModel.pool`, the function
  training uses), so a trajectory's last row holds its reward.

`Scorer` scores one batch of states (numpy in any float dtype, or a torch
tensor: generation passes live hidden states to `q_values`). A multi-layer
probe reads its layers' states side by side. `iter_scores` runs it over an
iterator of whole-trajectory blocks that the caller supplies (a store's
shards, or the selected trajectories of a row source) and yields each
block's `Scores`, so a caller that keeps per-trajectory summaries (evaluation)
holds one block of rows at a time; `score_blocks` keeps every row's scores.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from probekit.errors import ProbekitError
from probekit.probe.goals import GoalIndex, goal_prototypes, ordered_kinds
from probekit.progress import Progress, or_null
from probekit.store import ShardBlock

SIGNALS = ("q", "reward")


@dataclass
class Scores:
    """Per-token probe outputs of some trajectories, rows concatenated trajectory by trajectory."""

    traj: np.ndarray  # int64 [n]: store index of each scored trajectory (increasing)
    offsets: np.ndarray  # int64 [n + 1]: rows of the i-th are offsets[i]:offsets[i+1]
    positions: np.ndarray  # int64 [rows]: token index in the full completion
    reward: np.ndarray  # float32 [rows]
    q: dict[str, np.ndarray]  # goal kind -> float32 [rows]
    seconds: float = field(default=0.0, compare=False)

    def last(self, values: np.ndarray) -> np.ndarray:
        """Value at each trajectory's last stored row (its last completion token); NaN when it has none."""
        out = np.full(len(self.offsets) - 1, np.nan, dtype=np.float64)
        nonempty = self.offsets[1:] > self.offsets[:-1]
        out[nonempty] = values[self.offsets[1:][nonempty] - 1]
        return out

    def select(self, which: np.ndarray) -> Scores:
        """The scores of the trajectories `which` (bool mask or increasing indices into `traj`) alone."""
        which = np.flatnonzero(which) if np.asarray(which).dtype == bool else np.asarray(which, np.int64)
        starts, ends = self.offsets[which], self.offsets[which + 1]
        lengths = ends - starts
        rows = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
        return Scores(self.traj[which], np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), self.positions[rows],
                      self.reward[rows], {k: v[rows] for k, v in self.q.items()}, self.seconds)

    @classmethod
    def concat(cls, parts: Sequence[Scores], kinds: Sequence[str]) -> Scores:
        """One `Scores` of consecutive parts (trajectories in the parts' order); `kinds` when there are none."""
        def cat(xs, dtype) -> np.ndarray:
            return np.concatenate(xs).astype(dtype, copy=False) if xs else np.zeros(0, dtype)

        lengths = cat([np.diff(p.offsets) for p in parts], np.int64)
        return cls(traj=cat([p.traj for p in parts], np.int64), offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   positions=cat([p.positions for p in parts], np.int64), reward=cat([p.reward for p in parts], np.float32),
                   q={k: cat([p.q[k] for p in parts], np.float32) for k in kinds}, seconds=sum(p.seconds for p in parts))

    def signal(self, kind: str, goal: str = "mean") -> np.ndarray:
        """The per-row values a filter compares with its threshold: "q" (toward `goal`) or "reward"."""
        if kind not in SIGNALS:
            raise ProbekitError(f"unknown signal '{kind}' (choose from {', '.join(SIGNALS)})")
        if kind == "reward":
            return self.reward
        if goal not in self.q:
            raise ProbekitError(f"goal '{goal}' was not scored (scored: {', '.join(self.q)})")
        return self.q[goal]


class Scorer:
    """Reward and Q-values of a batch of states under one fitted probe and its goals."""

    def __init__(self, model, goals: dict[str, np.ndarray], kinds: Sequence[str] | None = None, where: object = "checkpoint"):
        import torch

        self.model = model.eval()
        self.pooled = model.pooling != "last"
        self.encoder = model.folded_encoder()
        self.kinds = ordered_kinds(goals) if kinds is None else list(kinds)
        self.indexes = {k: GoalIndex(goal_prototypes(goals, k, where)) for k in self.kinds}
        try:
            self.device = next(model.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")

    @classmethod
    def from_checkpoint(cls, ckpt, kinds: Sequence[str] | None = None) -> Scorer:
        return cls(ckpt.model, ckpt.goals, kinds, where=ckpt.path)

    def __call__(self, states, offsets: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(reward float32 [n], {kind: Q float32 [n]}) for states [n, in_features].

        A pooled probe needs `offsets` [m+1], the rows of whole trajectories in
        `states`: each row's reward pools its trajectory's rows up to it.
        """
        z = self._encode(states)
        return self._rewards(z, offsets), self._q(z)

    def q_values(self, states) -> dict[str, np.ndarray]:
        """{kind: Q float32 [n]} of states [n, in_features], each token on its own (live generation)."""
        return self.q_of(self.phi(states))

    def phi(self, states) -> np.ndarray:
        """φ float32 [n, rep] of states [n, in_features] (steering sums it over a step's tokens)."""
        return self._encode(states).float().cpu().numpy()

    def q_of(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """{kind: best cosine float32 [n]} of representations z [n, rep] to that kind's prototypes.

        A token's Q when z is its φ; a span's when z is the sum (or mean) of its tokens' φ.
        """
        return {k: index.q_values(z) for k, index in self.indexes.items()}

    def _encode(self, states):
        import torch

        with torch.inference_mode():
            return self.encoder(torch.as_tensor(states).to(device=self.device, dtype=torch.float32))

    def _rewards(self, z, offsets: np.ndarray | None) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if self.pooled:
                if offsets is None:
                    raise ValueError("a pooled probe scores rewards of whole trajectories: pass their offsets")
                z = self.model.pool(z, torch.as_tensor(np.asarray(offsets, np.int64), device=z.device))
            return self.model.reward(z).reshape(-1).float().cpu().numpy()

    def _q(self, z) -> dict[str, np.ndarray]:
        return self.q_of(z.float().cpu().numpy())


def iter_scores(scorer: Scorer, blocks: Iterable[ShardBlock], n_rows: int | None = None, batch_rows: int = 2048,
                progress: Progress | None = None) -> Iterator[Scores]:
    """The `Scores` of each block in turn (its trajectories, its rows); `n_rows` (when known) sizes the progress bar.

    Blocks may hold states in their stored dtype: each batch is converted to
    float32 on its own, which keeps it in cache for the matmuls. A pooled
    probe's rewards are computed once per block, from the φ of all its rows.
    Each part's `seconds` is the time spent scoring it.
    """
    import torch

    task = or_null(progress).task("score", n_rows, unit="rows")
    try:
        for block in blocks:
            t0 = time.perf_counter()
            rewards: list[np.ndarray] = []
            q_parts: dict[str, list[np.ndarray]] = {k: [] for k in scorer.kinds}
            zs = []
            for i in range(0, len(block.states), batch_rows):
                z = scorer._encode(block.states[i:i + batch_rows])
                if scorer.pooled:
                    zs.append(z)
                else:
                    rewards.append(scorer._rewards(z, None))
                for k, v in scorer._q(z).items():
                    q_parts[k].append(v)
                task.advance(len(z))
            if scorer.pooled:
                rewards.append(scorer._rewards(torch.cat(zs) if zs else torch.zeros(0, scorer.model.rep_size), block.offsets))
            yield Scores(traj=np.asarray(block.trajectories, np.int64), offsets=np.asarray(block.offsets, np.int64),
                         positions=np.asarray(block.positions, np.int64), reward=_cat(rewards),
                         q={k: _cat(v) for k, v in q_parts.items()}, seconds=time.perf_counter() - t0)
    finally:
        task.close()


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def score_blocks(scorer: Scorer, blocks: Iterable[ShardBlock], n_rows: int | None = None, batch_rows: int = 2048,
                 progress: Progress | None = None) -> Scores:
    """Every row's scores of every block (`iter_scores`, concatenated)."""
    t0 = time.perf_counter()
    scores = Scores.concat(list(iter_scores(scorer, blocks, n_rows, batch_rows, progress)), scorer.kinds)
    scores.seconds = time.perf_counter() - t0
    return scores


def score_store(store, scorer: Scorer, layers: int | Sequence[int], progress: Progress | None = None) -> Scores:
    """Every stored token of a store, one shard in memory at a time (in its stored dtype); several layers side by side."""
    layers = (int(layers),) if np.isscalar(layers) else tuple(layers)
    shards = zip(*(store.iter_shards(layer, as_float32=False) for layer in layers))
    blocks = (b[0] if len(b) == 1 else dataclasses.replace(b[0], states=np.concatenate([x.states for x in b], axis=1)) for b in shards)
    return score_blocks(scorer, blocks, store.n_rows, progress=progress)


def score_trajectories(source, scorer: Scorer, traj: np.ndarray, progress: Progress | None = None) -> Scores:
    """Every stored row of the trajectories `traj` of a row source (`probekit.probe.data.open_rows`)."""
    traj = np.unique(np.asarray(traj, dtype=np.int64))
    return score_blocks(scorer, source.blocks(traj), int(source.store.meta.stored_tokens[traj].sum()), progress=progress)


def iter_trajectory_scores(source, scorer: Scorer, traj: np.ndarray, progress: Progress | None = None) -> Iterator[Scores]:
    """`iter_scores` over the trajectories `traj` of a row source, a block at a time (in increasing trajectory order)."""
    traj = np.unique(np.asarray(traj, dtype=np.int64))
    return iter_scores(scorer, source.blocks(traj), int(source.store.meta.stored_tokens[traj].sum()), progress=progress)
