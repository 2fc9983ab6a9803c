"""Fitting a probe on a store: BT + λ·contrastive, early stopping on validation pairwise accuracy.

The run is deterministic on CPU for a given seed: torch.manual_seed for the
weights, one numpy Generator for the split, the batch order and the
contrastive sampling. Whether the layer is held in memory or streamed from
the shards (`memory_budget_mb`) does not change the result.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from probekit.errors import ProbekitError


@dataclass
class FitOptions:
    store: Path
    out: Path
    layer: int | None = None  # default: the store's first layer
    encoder: str = "mlp"
    widths: tuple[int, ...] = (256,)
    rep_size: int = 128
    head: str = "linear"
    head_hidden: int = 64
    lam: float = 0.5
    K: int = 8
    goal_min_frac: float = 0.0
    late_frac: float | None = None
    margin: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 5
    valid_frac: float = 0.2
    test_frac: float = 0.2
    split_file: Path | None = None
    seed: int = 0
    goal_prototypes: int = 1
    memory_budget_mb: float = 2048
    device: str = "cpu"
    progress: bool = True
    n_boot: int = 1000
    eval_baselines: bool = True

    def config(self) -> dict:
        cfg = asdict(self)
        for k in ("store", "out", "split_file"):
            cfg[k] = None if cfg[k] is None else str(cfg[k])
        cfg["widths"] = list(self.widths)
        return cfg


@dataclass
class FitData:
    """What one fit reads from the store, prepared once."""

    store: object
    layer: int
    source: object
    split: dict
    train_pairs: np.ndarray
    valid_pairs: np.ndarray
    train_traj: np.ndarray
    index: object
    extra: dict = field(default_factory=dict)


def _validate(opts: FitOptions) -> None:
    checks = [
        (opts.K >= 1, f"K must be at least 1, got {opts.K}"),
        (opts.lam >= 0, f"lambda must be >= 0, got {opts.lam}"),
        (opts.epochs >= 1, f"epochs must be at least 1, got {opts.epochs}"),
        (opts.batch_size >= 1, f"batch size must be at least 1, got {opts.batch_size}"),
        (opts.lr > 0, f"learning rate must be positive, got {opts.lr}"),
        (opts.patience >= 1, f"patience must be at least 1, got {opts.patience}"),
        (opts.goal_prototypes >= 1, f"goal prototypes must be at least 1, got {opts.goal_prototypes}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ProbekitError(msg)


def prepare(opts: FitOptions, store=None, source=None) -> FitData:
    """Open the store, check it, split it by group and build the row source and sampling index.

    An already opened `store` and a row `source` of the right layer may be passed in (sweeps).
    """
    from probekit.probe.data import build_sampling_index, make_split, open_rows, read_split, split_mask, split_pairs
    from probekit.store import Store

    _validate(opts)
    store = store if store is not None else Store(opts.store)
    layer = store.layers[0] if opts.layer is None else int(opts.layer)
    store.check_layer(layer)
    pairs = store.pairs()
    if len(pairs) == 0:
        raise ProbekitError(
            f"{store.path}: the store has no preference pairs (pairs.jsonl empty or missing); "
            "extract labelled trajectories (pairs are derived within groups) or pass --pairs to `probekit extract`"
        )
    meta = store.meta
    empty = np.flatnonzero(meta.stored_tokens[np.unique(pairs)] < 1)
    if len(empty):
        raise ProbekitError(f"{store.path}: trajectory '{meta.id[np.unique(pairs)[empty[0]]]}' of a pair has no stored states")
    same = pairs[:, 0] == pairs[:, 1]
    if same.any():
        raise ProbekitError(f"{store.path}: pair {int(np.flatnonzero(same)[0]) + 1} names trajectory '{meta.id[pairs[same][0, 0]]}' twice")
    groups = meta.group.astype(str)
    split = read_split(opts.split_file, groups) if opts.split_file else make_split(groups, opts.valid_frac, opts.test_frac, opts.seed)
    train_pairs = split_pairs(store, pairs, split["train"])
    if len(train_pairs) == 0:
        raise ProbekitError(f"{store.path}: empty train split: none of the {len(pairs)} pairs belong to the {len(split['train'])} train group(s)")
    valid_pairs = split_pairs(store, pairs, split["valid"])
    if source is None or source.layer != layer or source.store is not store:
        source = open_rows(store, layer, opts.memory_budget_mb)
    index = build_sampling_index(meta.row_start, meta.row_end, store.positions(), meta.completion_tokens, opts.goal_min_frac, opts.late_frac)
    train_traj = np.flatnonzero(split_mask(store, split["train"]))
    return FitData(store, layer, source, split, train_pairs, valid_pairs, train_traj, index)


def batch_loss(model, data: FitData, batch_pairs: np.ndarray, opts: FitOptions, rng: np.random.Generator):
    """The loss of one batch of pairs: (total tensor, {"bt", "contrastive", "total"})."""
    import torch
    import torch.nn.functional as F

    from probekit.probe import losses
    from probekit.probe.data import sample_negatives, sample_positives

    chosen, rejected = batch_pairs[:, 0], batch_pairs[:, 1]
    B, K = len(batch_pairs), opts.K
    parts = [data.index.row_end[chosen] - 1, data.index.row_end[rejected] - 1]
    if opts.lam > 0:
        parts += [r.ravel() for r in (*sample_positives(data.index, chosen, K, rng), *sample_negatives(data.index, chosen, rejected, K, rng))]
    rows = np.concatenate(parts)
    uniq, inverse = np.unique(rows, return_inverse=True)
    x = torch.from_numpy(data.source.rows(uniq)).to(opts.device)
    z = model.encode(x)[torch.from_numpy(inverse).to(opts.device)]
    r = model.reward(z[: 2 * B])
    if opts.lam == 0:
        return losses.total_loss(r[:B], r[B:], lam=0.0, margin=opts.margin)
    zs = z[2 * B:].view(4, B, K, -1)
    pos = F.cosine_similarity(zs[0], zs[1], dim=-1)
    neg = F.cosine_similarity(zs[2], zs[3], dim=-1)
    return losses.total_loss(r[:B], r[B:], pos, neg, lam=opts.lam, margin=opts.margin)


class Monitor:
    """Pairwise accuracy on fixed pair sets after each epoch; their last-token states are read once."""

    def __init__(self, data: FitData, pairs: dict[str, np.ndarray]):
        self.names = list(pairs)
        allp = [p for p in pairs.values() if len(p)]
        self.traj = np.unique(np.concatenate(allp)) if allp else np.zeros(0, np.int64)
        self.x = data.source.rows(data.index.row_end[self.traj] - 1)
        self.pairs = {k: np.searchsorted(self.traj, p) for k, p in pairs.items()}

    def accuracy(self, model, device: str = "cpu") -> dict[str, float | None]:
        import torch

        r = np.empty(len(self.traj), np.float32)
        with torch.no_grad():
            for i in range(0, len(r), 4096):
                r[i:i + 4096] = model(torch.from_numpy(self.x[i:i + 4096]).to(device))[1].float().cpu().numpy()
        out = {}
        for k, p in self.pairs.items():
            if len(p) == 0:
                out[k] = None
                continue
            d = r[p[:, 0]] - r[p[:, 1]]
            out[k] = float(((d > 0) + 0.5 * (d == 0)).mean())
        return out


def compute_goals(model, data: FitData, n_prototypes: int, seed: int, device: str = "cpu") -> tuple[dict[str, np.ndarray], dict]:
    """Goal representations from the TRAIN split's preferred completions' last-token φ.

    Preferred = label 1 trajectories; when the train split has none, the chosen
    side of the train pairs. "mean" [1, rep]; "kmeans" [K, rep] when K > 1 (faiss, seeded).
    """
    import torch

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
    z = np.concatenate(zs).astype(np.float32)
    goals = {"mean": z.mean(axis=0, keepdims=True)}
    info = {"goal_source": source, "n_goal_states": int(len(z))}
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


def train_model(opts: FitOptions, data: FitData, console=None):
    """Train; return (best model, history list, info dict)."""
    import torch

    from probekit.probe.data import feature_stats, iter_batches, trajectory_rows
    from probekit.probe.model import ProbeModel

    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    model = ProbeModel(data.store.hidden_size, opts.encoder, tuple(opts.widths), opts.rep_size, opts.head, opts.head_hidden)
    mean, std = feature_stats(data.source, trajectory_rows(data.store, data.train_traj), seed=opts.seed)
    model.set_normalization(mean, std)
    model.to(opts.device)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    n_batches = (len(data.train_pairs) + opts.batch_size - 1) // opts.batch_size
    # Train accuracy is monitored on a fixed seeded subset (its own Generator: the training stream is untouched).
    sub = np.random.default_rng(opts.seed + 1).permutation(len(data.train_pairs))[:2000]
    monitor = Monitor(data, {"train": data.train_pairs[np.sort(sub)], "valid": data.valid_pairs})
    history: list[dict] = []
    best_acc, best_state, best_epoch, bad = -1.0, None, 0, 0
    progress = _progress(console) if opts.progress else None
    task = progress.add_task("fit", total=opts.epochs * n_batches, terms="") if progress else None
    if progress:
        progress.start()
    try:
        for epoch in range(1, opts.epochs + 1):
            model.train()
            sums = {"bt": 0.0, "contrastive": 0.0, "total": 0.0}
            for idx in iter_batches(len(data.train_pairs), opts.batch_size, rng):
                loss, terms = batch_loss(model, data, data.train_pairs[idx], opts, rng)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                for k in sums:
                    sums[k] += terms[k] / n_batches
                if progress:
                    progress.update(task, advance=1, terms=f"epoch {epoch}  bt {terms['bt']:.3f}  contr {terms['contrastive']:.3f}")
            model.eval()
            accs = monitor.accuracy(model, opts.device)
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
                if bad >= opts.patience:
                    break
    finally:
        if progress:
            progress.stop()
    model.load_state_dict(best_state)
    model.eval()
    stopped_early = len(history) < opts.epochs
    return model, history, {"best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": stopped_early}


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if console is None:
        from cli.common import console
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[terms]}"), console=console, transient=True)


def fit(opts: FitOptions, console=None, *, data: FitData | None = None, eval_split: str = "valid", baseline_cache: dict | None = None):
    """Train a probe, evaluate it (validation split by default), save and return the `Checkpoint`.

    `data` (from `prepare`) and `baseline_cache` let a sweep reuse the loaded
    layer and the baselines across runs.
    """
    import torch

    from probekit.evaluate import evaluate
    from probekit.probe.checkpoint import FORMAT, FORMAT_VERSION, Checkpoint, save_checkpoint, store_info

    t0 = time.time()
    if data is None:
        data = prepare(opts)
    with torch.random.fork_rng(devices=[]):
        model, history, info = train_model(opts, data, console)
        goals, goal_info = compute_goals(model, data, opts.goal_prototypes, opts.seed, opts.device)
    metrics: dict = {"train": {**info, **goal_info, "n_train_pairs": int(len(data.train_pairs)), "n_valid_pairs": int(len(data.valid_pairs)),
                               "history": history, "row_source": "memory" if data.source.in_memory else "stream"}}
    metrics["train"]["train_seconds"] = round(time.time() - t0, 3)
    if eval_split == "all" or data.split.get(eval_split):
        metrics[eval_split] = evaluate(model, goals, data.store, data.layer, data.split, eval_split, source=data.source, n_boot=opts.n_boot,
                                       seed=opts.seed, baselines=opts.eval_baselines, device=opts.device, baseline_cache=baseline_cache)
    metrics["train"]["seconds"] = round(time.time() - t0, 3)
    config = {**opts.config(), "layer": data.layer, "store": store_info(data.store)}
    path = Path(save_checkpoint(opts.out, model, config, goals, data.split, metrics))
    if eval_split in metrics:
        from probekit.plots import plot_prefix_auroc

        plot_prefix_auroc(metrics[eval_split], path / "prefix_auroc.png")
    full_config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "model": model.config()}
    return Checkpoint(path=path, config=full_config, model=model, goals=goals, split=data.split, metrics=metrics)
