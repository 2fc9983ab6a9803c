"""Evaluation of a probe on held-out groups, with group-bootstrap confidence intervals.

Metrics (all written to metrics.json):

- pairwise accuracy: fraction of held-out pairs with r(chosen) > r(rejected) (ties 1/2);
- AUROC of the last-token reward for label 1 vs label 0 trajectories, with a
  95% interval from a bootstrap that resamples GROUPS (prompts), not
  trajectories, since answers to one prompt are correlated;
- Q AUROC: the same for the Q-value (cosine of φ(last state) to the goal);
- prefix AUROC at 10%, 20%, …, 100% of each completion, for the reward head and
  for Q, each read on the stored state nearest at or below token ceil(f·T) − 1;
- error localisation (synthetic data with `error_token` >= 0): on incorrect
  trajectories, the AUROC of token Q-values before vs at/after the error, and
  the mean |first token whose Q drops below a threshold − error_token|;
- baselines on the same split and the same bootstrap resamples (see
  `probekit.baselines`), and `beats_baselines`: whether the probe's interval
  clears the best trivial baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probekit.errors import ProbekitError

FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
_BOOT_CHUNK = 100


# ---- metric primitives --------------------------------------------------------
def bootstrap_counts(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_groups] multiplicities of each group in each bootstrap resample (seeded)."""
    rng = np.random.default_rng(seed)
    if n_groups == 0:
        return np.zeros((n_boot, 0), dtype=np.int32)
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.int32)


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties 1/2) under each row of item weights [B, n] -> [B] (NaN if one class missing)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos_at = np.add.reduceat(w * y, starts, axis=1)
    neg_at = np.add.reduceat(w * ~y, starts, axis=1)
    neg_below = np.cumsum(neg_at, axis=1) - neg_at
    num = (pos_at * (neg_below + 0.5 * neg_at)).sum(axis=1)
    den = pos_at.sum(axis=1) * neg_at.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return None, None
    lo, hi = np.percentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def auroc_ci(scores, labels, group_ids, counts: np.ndarray) -> dict:
    """AUROC with a group-bootstrap 95% interval; `counts` from `bootstrap_counts` over the group ids."""
    from sklearn.metrics import roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    out = {"value": None, "lo": None, "hi": None, "n_pos": n_pos, "n_neg": n_neg}
    if n_pos == 0 or n_neg == 0:
        return out
    out["value"] = float(roc_auc_score(labels, scores))
    group_ids = np.asarray(group_ids, dtype=np.int64)
    boots = [weighted_auroc(scores, labels, counts[i:i + _BOOT_CHUNK][:, group_ids]) for i in range(0, len(counts), _BOOT_CHUNK)]
    out["lo"], out["hi"] = _interval(np.concatenate(boots) if boots else np.zeros(0))
    return out


def pairwise_ci(diff, pair_group_ids, counts: np.ndarray) -> dict:
    """Pairwise accuracy (diff = s_chosen − s_rejected > 0; ties 1/2) with a group-bootstrap 95% interval."""
    diff = np.asarray(diff, dtype=np.float64)
    out = {"value": None, "lo": None, "hi": None, "n": int(len(diff))}
    if len(diff) == 0:
        return out
    correct = (diff > 0) + 0.5 * (diff == 0)
    out["value"] = float(correct.mean())
    g = np.asarray(pair_group_ids, dtype=np.int64)
    G = counts.shape[1]
    sums = np.bincount(g, weights=correct, minlength=G)
    ns = np.bincount(g, minlength=G).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ sums) / (counts @ ns)
    out["lo"], out["hi"] = _interval(boot)
    return out


# ---- the evaluation context -------------------------------------------------------
@dataclass
class EvalContext:
    """The evaluated trajectories and pairs, shared by the probe and every baseline."""

    store: object
    which: str
    traj: np.ndarray  # evaluated trajectory indices (sorted)
    pairs: np.ndarray  # [P, 2] global indices, both inside `traj`
    group_ids: np.ndarray  # per evaluated trajectory, index into the bootstrap groups
    pair_group_ids: np.ndarray
    counts: np.ndarray  # bootstrap multiplicities [n_boot, n_groups]
    split: dict
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.store.meta.label[self.traj].astype(int)

    def summary(self, traj_scores: np.ndarray) -> dict:
        """AUROC (labelled trajectories) and pairwise accuracy of one score per store trajectory."""
        s = np.asarray(traj_scores, dtype=np.float64)
        labels = self.labels
        lab = labels >= 0
        res = {"auroc": auroc_ci(s[self.traj][lab], labels[lab], self.group_ids[lab], self.counts)}
        res["pairwise_accuracy"] = pairwise_ci(s[self.pairs[:, 0]] - s[self.pairs[:, 1]], self.pair_group_ids, self.counts)
        return res


def eval_groups(store, split: dict, which: str) -> list[str]:
    if which == "all":
        return sorted(set(store.meta.group.astype(str).tolist()))
    if which not in ("train", "valid", "test"):
        raise ProbekitError(f"--split must be train, valid, test or all, got '{which}'")
    return list(split.get(which, []))


def make_context(store, split: dict, which: str, n_boot: int = 1000, seed: int = 0) -> EvalContext:
    from probekit.probe.data import split_mask, split_pairs

    groups = eval_groups(store, split, which)
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
    return EvalContext(store, which, traj, pairs, gid.astype(np.int64), pair_gid, bootstrap_counts(len(uniq), n_boot, seed), split, seed)


# ---- scoring rows with the probe -------------------------------------------------
@dataclass
class RowScores:
    """Probe outputs on every stored row of the evaluated trajectories (concatenated in order)."""

    traj: np.ndarray
    offsets: np.ndarray  # [n + 1]
    positions: np.ndarray  # token position of each row
    reward: np.ndarray
    q: dict[str, np.ndarray]  # goal kind -> Q per row

    def last(self, values: np.ndarray) -> np.ndarray:
        return values[self.offsets[1:] - 1]


def score_rows(model, goals: dict[str, np.ndarray], source, traj: np.ndarray, batch_rows: int = 8192, device: str = "cpu") -> RowScores:
    """Run the probe over all stored rows of `traj`: reward and Q (per goal kind) per row."""
    import torch

    from probekit.probe.data import trajectory_rows
    from probekit.probe.model import q_values

    store = source.store
    positions = store.positions()
    kinds = sorted(goals, key=lambda k: (k != "mean", k))  # the paper's mean goal first
    goal_t = {k: torch.as_tensor(np.asarray(goals[k], dtype=np.float32), device=device) for k in kinds}
    parts_traj, parts_len, parts_pos, parts_r = [], [], [], []
    parts_q: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    model.eval()
    with torch.no_grad():
        for sel, offs, states in source.blocks(traj):
            parts_traj.append(sel)
            parts_len.append(np.diff(offs))
            parts_pos.append(positions[trajectory_rows(store, sel)])
            for i in range(0, len(states), batch_rows):
                x = torch.from_numpy(np.ascontiguousarray(states[i:i + batch_rows])).to(device)
                z, r = model(x)
                parts_r.append(r.float().cpu().numpy())
                for k, g in goal_t.items():
                    parts_q[k].append(q_values(z, g).float().cpu().numpy())
    lengths = np.concatenate(parts_len) if parts_len else np.zeros(0, np.int64)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.float32)  # noqa: E731
    return RowScores(
        traj=np.concatenate(parts_traj) if parts_traj else np.zeros(0, np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        positions=cat(parts_pos).astype(np.int64),
        reward=cat(parts_r),
        q={k: cat(v) for k, v in parts_q.items()},
    )


def prefix_rows(scores: RowScores, completion_tokens: np.ndarray, frac: float) -> np.ndarray:
    """Per evaluated trajectory, the row (into `scores`) at or below token ceil(frac·T)−1; −1 if none is stored."""
    from probekit.probe.data import ceil_frac_position

    n = len(scores.traj)
    lengths = np.diff(scores.offsets)
    target = ceil_frac_position(frac, completion_tokens[scores.traj])
    big = int(max(scores.positions.max(initial=0), target.max(initial=0))) + 2
    keys = np.repeat(np.arange(n, dtype=np.int64), lengths) * big + scores.positions
    idx = np.searchsorted(keys, np.arange(n, dtype=np.int64) * big + target, side="right") - 1
    return np.where(idx >= scores.offsets[:-1], idx, -1)


# ---- the evaluation ------------------------------------------------------------------
def evaluate(
    model,
    goals: dict[str, np.ndarray],
    store,
    layer: int,
    split: dict,
    which: str = "valid",
    *,
    source=None,
    n_boot: int = 1000,
    seed: int = 0,
    baselines: bool = True,
    q_threshold: float | None = None,
    out_dir: str | Path | None = None,
    memory_budget_mb: float = 2048,
    device: str = "cpu",
    baseline_cache: dict | None = None,
) -> dict:
    """Evaluate a probe on one split of `store`; write metrics.json and the prefix plot to `out_dir` if given."""
    from probekit.probe.data import open_rows

    if source is None:
        source = open_rows(store, layer, memory_budget_mb)
    ctx = make_context(store, split, which, n_boot=n_boot, seed=seed)
    meta = store.meta
    scores = score_rows(model, goals, source, ctx.traj, device=device)
    assert np.array_equal(scores.traj, ctx.traj)

    def per_traj(values_at_eval: np.ndarray) -> np.ndarray:
        full = np.full(len(store), np.nan)
        full[ctx.traj] = values_at_eval
        return full

    probe = ctx.summary(per_traj(scores.last(scores.reward)))
    labels = ctx.labels
    lab = labels >= 0
    for kind, q in scores.q.items():
        probe[f"q_auroc_{kind}"] = auroc_ci(scores.last(q)[lab], labels[lab], ctx.group_ids[lab], ctx.counts)

    from sklearn.metrics import roc_auc_score

    def point_auroc(s, y):
        return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None

    prefix = {"fractions": list(FRACTIONS), "reward_auroc": [], **{f"q_auroc_{k}": [] for k in scores.q}}
    for f in FRACTIONS:
        rows = prefix_rows(scores, meta.completion_tokens, f)
        ok = lab & (rows >= 0)
        prefix["reward_auroc"].append(point_auroc(scores.reward[rows[ok]], labels[ok]) if ok.any() else None)
        for k, q in scores.q.items():
            prefix[f"q_auroc_{k}"].append(point_auroc(q[rows[ok]], labels[ok]) if ok.any() else None)
    probe["prefix"] = prefix
    probe["error_localisation"] = error_localisation(scores, meta, labels, q_threshold)

    metrics = {
        "split": which,
        "store": str(store.path),
        "layer": int(layer),
        "n_trajectories": int(len(ctx.traj)),
        "n_labelled": int(lab.sum()),
        "n_groups": int(ctx.counts.shape[1]),
        "n_pairs": int(len(ctx.pairs)),
        "n_boot": int(n_boot),
        "probe": probe,
    }
    if baselines:
        from probekit.baselines import beats, run_baselines

        key = (which, int(layer), tuple(sorted(split.get("train", []))), n_boot, seed)
        if baseline_cache is not None and key in baseline_cache:
            metrics["baselines"] = baseline_cache[key]
        else:
            metrics["baselines"] = run_baselines(ctx, source)
            if baseline_cache is not None:
                baseline_cache[key] = metrics["baselines"]
        metrics.update(beats(probe, metrics["baselines"]))
    if out_dir is not None:
        from probekit.io import write_json
        from probekit.plots import plot_prefix_auroc

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_prefix_auroc(metrics, out_dir / "prefix_auroc.png")
        metrics["plot"] = "prefix_auroc.png"
        write_json(out_dir / "metrics.json", metrics)
    return metrics


def error_localisation(scores: RowScores, meta, labels: np.ndarray, q_threshold: float | None = None, kind: str = "mean") -> dict | None:
    """Where Q drops on incorrect trajectories whose first wrong token is known (`error_token` >= 0).

    token_auroc: AUROC of per-token Q with tokens before the error as positives
    and tokens at/after it as negatives (1 = Q cleanly separates them).
    threshold: `q_threshold`, or the midpoint of the mean last-token Q of label 1
    and label 0 trajectories. mean_abs_error: over trajectories whose Q ever
    falls below the threshold, the mean |position of the first such token −
    error_token|; detected_frac: the fraction that do.
    """
    from sklearn.metrics import roc_auc_score

    if kind not in scores.q:
        return None
    q = scores.q[kind]
    err = meta.error_token[scores.traj].astype(np.int64)
    T = meta.completion_tokens[scores.traj].astype(np.int64)
    sel = (labels == 0) & (err >= 0) & (err < T)
    if not sel.any():
        return None
    lengths = np.diff(scores.offsets)
    row_traj = np.repeat(np.arange(len(scores.traj)), lengths)
    rows = np.flatnonzero(sel[row_traj])
    before = scores.positions[rows] < err[row_traj[rows]]
    token_auroc = float(roc_auc_score(before, q[rows])) if 0 < before.sum() < len(before) else None
    if q_threshold is None:
        last_q = scores.last(q)
        pos, neg = last_q[labels == 1], last_q[labels == 0]
        q_threshold = float((pos.mean() + neg.mean()) / 2) if len(pos) and len(neg) else 0.0
    big = np.iinfo(np.int64).max
    idx = np.where(q < q_threshold, np.arange(len(q)), big)
    first = np.minimum.reduceat(idx, scores.offsets[:-1]) if len(q) else np.zeros(0, np.int64)
    detected = sel & (first < big)
    abs_err = np.abs(scores.positions[np.where(detected, first, 0)] - err)[detected]
    return {
        "n_trajectories": int(sel.sum()),
        "n_tokens": int(len(rows)),
        "token_auroc": token_auroc,
        "threshold": float(q_threshold),
        "detected_frac": float(detected.sum() / sel.sum()),
        "mean_abs_error": float(abs_err.mean()) if len(abs_err) else None,
    }


def evaluate_checkpoint(ckpt, store=None, which: str = "valid", out_dir=None, **kwargs) -> dict:
    """Evaluate a loaded checkpoint on its training store (default) or another compatible one."""
    from probekit.probe.checkpoint import check_compatible
    from probekit.store import Store

    if store is None:
        path = Path(ckpt.config["store"]["path"])
        if not path.exists():
            raise ProbekitError(f"the store checkpoint {ckpt.path} was trained on ({path}) is gone; pass --store")
        store = Store(path)
    elif not hasattr(store, "meta"):
        store = Store(store)
    check_compatible(ckpt, store)
    metrics = evaluate(ckpt.model, ckpt.goals, store, ckpt.layer, ckpt.split, which, out_dir=out_dir, **kwargs)
    metrics["checkpoint"] = str(ckpt.path)
    if out_dir is not None:
        from probekit.io import write_json

        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


# ---- presentation ----------------------------------------------------------------
def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    if m.get("lo") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def table_rows(metrics: dict) -> list[list[str]]:
    """Rows (method, AUROC [95% CI], pairwise accuracy [95% CI], note) for the probe and the baselines."""
    probe = metrics["probe"]
    flag = "" if metrics.get("beats_baselines") in (True, None) else "  (CI does not clear the best trivial baseline)"
    rows = [["probe reward", _ci(probe["auroc"]), _ci(probe["pairwise_accuracy"]), flag.strip()]]
    for key in sorted((k for k in probe if k.startswith("q_auroc_")), key=lambda k: (k != "q_auroc_mean", k)):
        rows.append([f"probe Q ({key[len('q_auroc_'):]} goal)", _ci(probe[key]), "-", ""])
    for name, b in (metrics.get("baselines") or {}).items():
        if b is None:
            continue
        note = b.get("note", "")
        if name == "length" and b.get("direction"):
            note = f"{b['direction']} = better (chosen on {b.get('selected_on')})"
        rows.append([name, _ci(b.get("auroc")), _ci(b.get("pairwise_accuracy")), note])
    return rows


def metrics_table(metrics: dict, title: str | None = None):
    from cli.common import rich_table

    title = title or f"probekit eval: {metrics['split']} split ({metrics['n_trajectories']} trajectories, {metrics['n_pairs']} pairs, {metrics['n_groups']} groups)"
    return rich_table(title, ["method", "AUROC [95% CI]", "pairwise acc [95% CI]", "note"], table_rows(metrics))
