"""The set of trajectories and pairs an evaluation reads, shared by the probe and every trivial baseline.

Evaluation of a probe (`probekit.eval.evaluate`) and the baselines
(`probekit.eval.baselines`) both score trajectories and hand the scores to one
`EvalContext`, so they are compared on the same trajectories, pairs and
bootstrap resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from probekit.config import EvalConfig
from probekit.errors import ProbekitError
from probekit.eval.length_control import LengthControl
from probekit.metrics import auroc_ci, bootstrap_counts, pairwise_ci, split_groups, split_mask, split_pairs


@dataclass
class EvalContext:
    """The evaluated trajectories and pairs of one store, shared by the probe and every baseline.

    `fit_store` and `split` are where the probe was fitted: baselines that need
    fitting (length direction, logistic probes) are fitted there too, so that a
    cross-store evaluation compares like with like. `fit_store` is None when
    the training store is not available.
    """

    store: object
    which: str
    traj: np.ndarray  # evaluated trajectory indices (sorted)
    pairs: np.ndarray  # [P, 2] global indices, both inside `traj`
    group_ids: np.ndarray  # per evaluated trajectory, index into the bootstrap groups
    pair_group_ids: np.ndarray
    counts: np.ndarray  # bootstrap multiplicities [n_boot, n_groups]
    split: dict
    fit_store: object | None
    seed: int = 0
    length_bins: int = EvalConfig.length_bins

    @property
    def labels(self) -> np.ndarray:
        return self.store.meta.label[self.traj].astype(int)

    @property
    def same_store(self) -> bool:
        return self.fit_store is self.store

    @cached_property
    def length(self):
        """Length strata and the training trajectories of the length controls (`probekit.eval.length_control`)."""
        return LengthControl.fit(self)

    def auroc(self, traj_scores: np.ndarray, fit_scores: np.ndarray | None = None) -> dict:
        """AUROC of one score per store trajectory on the labelled ones, with its length controls when `fit_scores`
        (the same score per trajectory of `fit_store`, read on its train split) is given."""
        s = np.asarray(traj_scores, dtype=np.float64)
        labels = self.labels
        lab = labels >= 0
        res = auroc_ci(s[self.traj][lab], labels[lab], self.group_ids[lab], self.counts)
        if fit_scores is not None:
            res["length_controlled"] = self.length.controlled(self, s, fit_scores)
        return res

    def summary(self, traj_scores: np.ndarray, fit_scores: np.ndarray | None = None) -> dict:
        """AUROC (`auroc`) and pairwise accuracy of one score per store trajectory."""
        s = np.asarray(traj_scores, dtype=np.float64)
        res = {"auroc": self.auroc(s, fit_scores)}
        res["pairwise_accuracy"] = pairwise_ci(s[self.pairs[:, 0]] - s[self.pairs[:, 1]], self.pair_group_ids, self.counts)
        return res


def make_context(store, split: dict, which: str, n_boot: int = 1000, seed: int = 0, fit_store=None,
                 length_bins: int = EvalConfig.length_bins) -> EvalContext:
    """The context for split `which` of `store` (`fit_store` defaults to `store` itself)."""
    groups = split_groups(store, split, which)
    mask = split_mask(store, groups) & (store.meta.stored_tokens > 0)
    traj = np.flatnonzero(mask)
    if len(traj) == 0:
        hint = " (this store may not be the one the probe was trained on: try --split all)" if which != "all" else ""
        raise ProbekitError(f"{store.path}: no trajectories in the '{which}' split{hint}")
    pairs = split_pairs(store, store.pairs(), groups)
    pairs = pairs[mask[pairs[:, 1]]] if len(pairs) else pairs.reshape(0, 2)
    uniq, gid = np.unique(store.meta.group[traj].astype(str), return_inverse=True)
    lookup = {g: i for i, g in enumerate(uniq)}
    pair_gid = np.asarray([lookup[str(g)] for g in store.meta.group[pairs[:, 0]]], dtype=np.int64)
    return EvalContext(store, which, traj, pairs, gid.astype(np.int64), pair_gid, bootstrap_counts(len(uniq), n_boot, seed), split,
                       store if fit_store is None else fit_store, seed, length_bins)
