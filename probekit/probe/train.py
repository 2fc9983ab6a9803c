"""Fitting a probe on a store: BT + λ·contrastive, early stopping on validation pairwise accuracy.

`prepare` reads what a fit needs from the store once; `train` returns the
fitted network, its goals and the training history (a `FitResult`). Saving
and evaluating are the caller's (`probekit.pipeline`), so this floor never
imports evaluation.

The run is deterministic on CPU for a given seed: torch.manual_seed for the
weights, one numpy Generator for the split, the batch order and the
contrastive sampling. Whether the layer is held in memory or streamed from
the shards (`memory_budget_mb`) does not change the result.

Ablations (`FitConfig`): the input may be several layers (concatenated or
mixed), the reward may pool the completion's tokens (then a batch reads every
row of its pairs' completions, not only the last), the contrastive term may be
InfoNCE or add a token-level term, and the training pairs may cross groups.
The σ-cosine term may take the official code's shape (`--contrastive-pairs
kxk`, `--goal-agg cosine_avg`, its sampling windows), and a pair's own margin
(pairs.jsonl's `margin`) joins the global one. With the defaults every step is
the original computation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from probekit.config import FitConfig
from probekit.data.schema import read_pair_margins
from probekit.errors import ProbekitError
from probekit.metrics import pairwise_correct, split_mask, split_pairs
from probekit.probe import losses
from probekit.probe.data import (
    build_sampling_index,
    cross_pairs,
    feature_stats,
    iter_batches,
    make_split,
    open_rows,
    read_split,
    sample_negatives,
    sample_official,
    sample_positives,
    trajectory_rows,
)
from probekit.probe.goals import build_goals
from probekit.probe.network import ProbeModel
from probekit.progress import Progress, or_null
from probekit.store import PAIRS


@dataclass
class FitData:
    """What one fit reads from the store, prepared once (a sweep reuses the row source)."""

    store: object
    layers: tuple[int, ...]  # the probe's input layers (one, or several side by side)
    source: object
    split: dict
    train_pairs: np.ndarray
    valid_pairs: np.ndarray
    train_traj: np.ndarray
    index: object
    train_margins: np.ndarray | None = None  # float32 [n_train_pairs]: each pair's own margin; None when pairs.jsonl has none

    @property
    def layer(self) -> int:
        """The first input layer (the only one of a single-layer probe)."""
        return self.layers[0]


@dataclass
class FitResult:
    """A fitted probe before it is saved: the network, its goals, and how training went."""

    model: object
    goals: dict[str, np.ndarray]
    history: list[dict]
    info: dict  # best_epoch, epochs_run, stopped_early, goal_source, n_goal_states, ...


def input_layers(store, config: FitConfig) -> tuple[int, ...]:
    """The layers a fit reads: --layer (default the store's first) for single features, else --feature-layers (default all)."""
    arch = config.probe
    if arch.features == "single":
        layers = (store.layers[0] if config.run.layer is None else int(config.run.layer),)
    else:
        layers = tuple(arch.feature_layers) or tuple(store.layers)
    for layer in layers:
        store.check_layer(layer)
    if arch.features != "single" and len(layers) < 2:
        raise ProbekitError(f"--features {arch.features}: needs at least two layers; {store.path} has layers {store.layers}")
    return layers


def prepare(store, config: FitConfig, source=None) -> FitData:
    """Check the store, split it by group and build the row source and sampling index.

    A row `source` of the right layers may be passed in (sweeps).
    """
    config.validate()
    layers = input_layers(store, config)
    pairs = store.pairs()
    if len(pairs) == 0:
        raise ProbekitError(
            f"{store.path}: the store has no preference pairs (pairs.jsonl empty or missing); "
            "extract labelled trajectories (pairs are derived within groups) or pass --pairs to `probekit extract`"
        )
    meta = store.meta
    _check_stored(store, pairs)
    same = pairs[:, 0] == pairs[:, 1]
    if same.any():
        raise ProbekitError(f"{store.path}: pair {int(np.flatnonzero(same)[0]) + 1} names trajectory '{meta.id[pairs[same][0, 0]]}' twice")
    groups = meta.group.astype(str)
    sc = config.split
    split = read_split(sc.split_file, groups) if sc.split_file else make_split(groups, sc.valid_frac, sc.test_frac, config.run.seed)
    train_traj = np.flatnonzero(split_mask(store, split["train"]))
    train_margins = None
    if sc.pairs == "cross":  # pairs made here, not the store's: they have no margin of their own
        train_pairs = cross_pairs(meta.label, train_traj, sc.max_pairs, config.run.seed + 2)
        _check_stored(store, train_pairs)
    else:
        in_train = split_mask(store, split["train"])[pairs[:, 0]]  # split_pairs' selection, kept to pick the margins too
        train_pairs = pairs[in_train]
        margins = read_pair_margins(store.path / PAIRS) if config.loss.pair_margins else None
        if margins is not None:
            train_margins = margins[in_train].astype(np.float32)
    if len(train_pairs) == 0:
        raise ProbekitError(f"{store.path}: empty train split: none of the {len(pairs)} pairs belong to the {len(split['train'])} train group(s)")
    valid_pairs = split_pairs(store, pairs, split["valid"])
    if source is None or source.layers != layers or source.store is not store:
        source = open_rows(store, layers, config.compute.memory_budget_mb)
    index = build_sampling_index(meta.row_start, meta.row_end, store.positions, meta.completion_tokens,
                                 config.loss.goal_min_frac, config.loss.late_frac)
    return FitData(store, layers, source, split, train_pairs, valid_pairs, train_traj, index, train_margins)


def _check_stored(store, pairs: np.ndarray) -> None:
    """Refuse pairs naming a trajectory without stored states."""
    meta = store.meta
    used = np.unique(pairs)
    empty = np.flatnonzero(meta.stored_tokens[used] < 1)
    if len(empty):
        raise ProbekitError(f"{store.path}: trajectory '{meta.id[used[empty[0]]]}' of a pair has no stored states")


def _offsets_tensor(lengths: np.ndarray, device):
    return torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)).to(device)


def _contrastive_rows(data: FitData, chosen: np.ndarray, rejected: np.ndarray, config: FitConfig, rng: np.random.Generator):
    """((source, goal) rows [B, --sim-samples], (chosen, rejected) rows [B, --unsim-samples]) of a batch, by the official
    sampler or probekit's (both counts --k unless set)."""
    loss_cfg, k_sim, k_unsim = config.loss, config.loss.k_sim, config.loss.k_unsim
    if loss_cfg.official_sampling:
        return sample_official(data.index, chosen, rejected, k_sim, rng, loss_cfg.source_window or 0.0, loss_cfg.goal_window or 0.0,
                               k_unsim=k_unsim)
    positives = sample_positives(data.index, chosen, k_sim, rng)  # positives first: the seeded stream is the original's
    return positives, sample_negatives(data.index, chosen, rejected, k_unsim, rng)


def batch_loss(model, data: FitData, batch_pairs: np.ndarray, config: FitConfig, rng: np.random.Generator,
               margins: np.ndarray | None = None):
    """The loss of one batch of pairs: (total tensor, {"bt", "contrastive", "total"}).

    Rows read: the last row of each side (or, for a pooled reward, every row of
    both sides' completions), then the contrastive samples; each distinct row is
    read and encoded once. `margins` [B]: the pairs' own margins, added to --margin.
    """
    loss_cfg, device = config.loss, config.compute.device
    lam = loss_cfg.lam
    margin = loss_cfg.margin if margins is None else torch.from_numpy(loss_cfg.margin + margins).to(device)
    chosen, rejected = batch_pairs[:, 0], batch_pairs[:, 1]
    B = len(batch_pairs)
    sides = np.concatenate([chosen, rejected])
    pooled = model.pooling != "last"
    reward_rows = trajectory_rows(data.store, sides) if pooled else data.index.row_end[sides] - 1
    parts = [reward_rows]
    if lam > 0:
        positives, negatives = _contrastive_rows(data, chosen, rejected, config, rng)
        parts += [r.ravel() for r in (*positives, *negatives)]
    rows = np.concatenate(parts)
    uniq, inverse = np.unique(rows, return_inverse=True)
    x = torch.from_numpy(data.source.rows(uniq)).to(device)
    z = model.encode(x)[torch.from_numpy(inverse).to(device)]
    n_r = len(reward_rows)
    if pooled:
        offsets = _offsets_tensor(data.index.n_rows[sides], device)
        last = offsets[1:] - 1
        r = model.reward(model.pool(z[:n_r], offsets)[last])
        chosen_final = z[last[:B]]
    else:
        r = model.reward(z[:n_r])
        chosen_final = z[:B]
    if lam == 0:
        return losses.total_loss(r[:B], r[B:], lam=0.0, margin=margin)
    n_pos = 2 * B * loss_cfg.k_sim
    zs = (*z[n_r:n_r + n_pos].view(2, B, loss_cfg.k_sim, -1), *z[n_r + n_pos:].view(2, B, loss_cfg.k_unsim, -1))
    shape, reduce = (loss_cfg.contrastive_pairs, loss_cfg.goal_agg), loss_cfg.reduce
    pos, neg = losses.pair_cosines(zs[0], zs[1], *shape), losses.pair_cosines(zs[2], zs[3], *shape)
    term = None
    if loss_cfg.contrastive == "infonce":
        term = losses.info_nce(zs[0], zs[1], loss_cfg.temperature)
    elif loss_cfg.contrastive == "token":
        meta = data.store.meta
        err = meta.error_token[rejected].astype(np.int64)
        known = (err >= 0) & (err < meta.completion_tokens[rejected])
        on_goal = data.store.positions()[negatives[1]] < err[:, None]  # the rejected rows of the negatives, [B, --unsim-samples]
        cos = F.cosine_similarity(zs[3], chosen_final[:, None, :], dim=-1)
        mask = torch.from_numpy(known).to(device)
        term = losses.contrastive(pos, neg, reduce) + losses.token_goal(cos[mask], torch.from_numpy(on_goal[known]).to(device))
    return losses.total_loss(r[:B], r[B:], pos, neg, lam=lam, margin=margin, contrastive_term=term, reduce=reduce)


class Monitor:
    """Pairwise accuracy on fixed pair sets after each epoch.

    A last-token reward reads the trajectories' last states once and keeps
    them; a pooled reward streams their rows a block at a time each epoch
    (memory stays bounded by a block).
    """

    def __init__(self, data: FitData, pairs: dict[str, np.ndarray], pooled: bool):
        self.names = list(pairs)
        allp = [p for p in pairs.values() if len(p)]
        self.traj = np.unique(np.concatenate(allp)) if allp else np.zeros(0, np.int64)
        self.source = data.source
        self.x = None if pooled else data.source.rows(data.index.row_end[self.traj] - 1)
        self.pairs = {k: np.searchsorted(self.traj, p) for k, p in pairs.items()}

    def accuracy(self, model, device: str = "cpu") -> dict[str, float | None]:
        r = _rewards(model, self.x, device) if self.x is not None else _pooled_rewards(model, self.source, self.traj, device)
        return {k: float(pairwise_correct(r[p[:, 0]] - r[p[:, 1]]).mean()) if len(p) else None for k, p in self.pairs.items()}


def _rewards(model, x: np.ndarray, device: str, batch: int = 4096) -> np.ndarray:
    r = np.empty(len(x), np.float32)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            r[i:i + batch] = model(torch.from_numpy(x[i:i + batch]).to(device))[1].float().cpu().numpy()
    return r


def _pooled_rewards(model, source, traj: np.ndarray, device: str) -> np.ndarray:
    """Pooled reward of each whole trajectory of `traj` (sorted unique), read block by block."""
    r = np.empty(len(traj), np.float32)
    with torch.no_grad():
        for block in source.blocks(traj):
            offsets = torch.from_numpy(np.asarray(block.offsets, np.int64)).to(device)
            z = model.encode(torch.from_numpy(np.asarray(block.states, np.float32)).to(device))
            r[np.searchsorted(traj, block.trajectories)] = model.reward(model.pool(z, offsets)[offsets[1:] - 1]).float().cpu().numpy()
    return r


def preferred_representations(model, data: FitData, device: str = "cpu") -> tuple[np.ndarray, str]:
    """φ of the TRAIN split's preferred completions' last-token states, and which ones were used.

    Preferred = label 1 trajectories; when the train split has none, the chosen side of the train pairs.
    """
    meta = data.store.meta
    good = data.train_traj[meta.label[data.train_traj] == 1]
    source = "label 1 trajectories"
    if len(good) == 0:
        good, source = np.unique(data.train_pairs[:, 0]), "chosen side of pairs"
    rows = data.index.row_end[good] - 1
    zs = []
    with torch.no_grad():
        for i in range(0, len(rows), 4096):
            zs.append(model.encode(torch.from_numpy(data.source.rows(rows[i:i + 4096])).to(device)).float().cpu().numpy())
    return np.concatenate(zs).astype(np.float32), source


def train(data: FitData, config: FitConfig, progress: Progress | None = None) -> FitResult:
    """Train, pick the best epoch on validation pairwise accuracy, build the goals."""
    seed, device, optim_cfg = config.run.seed, config.compute.device, config.optim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        arch = config.probe
        model = ProbeModel(data.store.hidden_size, arch.encoder, arch.widths, arch.rep_size, arch.head, arch.head_hidden,
                           n_layers=len(data.layers), mix=arch.features == "mix", pooling=arch.pooling)
        mean, std = feature_stats(data.source, data.train_traj, seed=seed)
        model.set_normalization(mean, std)
        model.to(device)
        optim = torch.optim.AdamW(model.parameters(), lr=optim_cfg.lr, weight_decay=optim_cfg.weight_decay)

        n_batches = (len(data.train_pairs) + optim_cfg.batch_size - 1) // optim_cfg.batch_size
        # Train accuracy is monitored on a fixed seeded subset (its own Generator: the training stream is untouched).
        sub = np.random.default_rng(seed + 1).permutation(len(data.train_pairs))[:2000]
        monitor = Monitor(data, {"train": data.train_pairs[np.sort(sub)], "valid": data.valid_pairs}, pooled=arch.pooling != "last")
        history: list[dict] = []
        best_acc, best_state, best_epoch, bad = -1.0, None, 0, 0
        task = or_null(progress).task("fit", optim_cfg.epochs * n_batches, unit="batches")
        try:
            for epoch in range(1, optim_cfg.epochs + 1):
                model.train()
                sums = {"bt": 0.0, "contrastive": 0.0, "total": 0.0}
                for idx in iter_batches(len(data.train_pairs), optim_cfg.batch_size, rng):
                    margins = None if data.train_margins is None else data.train_margins[idx]
                    loss, terms = batch_loss(model, data, data.train_pairs[idx], config, rng, margins)
                    if not math.isfinite(terms["total"]):
                        raise ProbekitError(
                            f"training diverged: the loss became {terms['total']} in epoch {epoch} "
                            f"(bt {terms['bt']}, contrastive {terms['contrastive']}); lower --lr or --lam"
                        )
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                    for k in sums:
                        sums[k] += terms[k] / n_batches
                    task.advance(1, note=f"epoch {epoch}  bt {terms['bt']:.3f}  contr {terms['contrastive']:.3f}")
                model.eval()
                accs = monitor.accuracy(model, device)
                acc = accs["valid"]
                history.append({"epoch": epoch, **{f"loss_{k}": v for k, v in sums.items()},
                                "train_pairwise_accuracy": accs["train"], "valid_pairwise_accuracy": acc})
                if acc is None:  # no validation pairs: keep the last epoch
                    best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
                    continue
                if acc > best_acc:
                    best_acc, best_state, best_epoch, bad = acc, copy.deepcopy(model.state_dict()), epoch, 0
                else:
                    bad += 1
                    if bad >= optim_cfg.patience:
                        break
        finally:
            task.close()
        model.load_state_dict(best_state)
        model.eval()
        z, goal_source = preferred_representations(model, data, device)
        goals, goal_info = build_goals(z, config.run.goal_prototypes, seed)
    info = {"best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": len(history) < optim_cfg.epochs,
            "goal_source": goal_source, **goal_info}
    if model.mix:
        info["layer_weights"] = dict(zip(map(str, data.layers), model.layer_weights().detach().cpu().tolist()))
    return FitResult(model, goals, history, info)
