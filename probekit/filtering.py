"""Q-value filtering of sampled solutions (the paper's Sec. 5 "Filtering" experiment).

Pipeline (`filter_store`):

1. Score every stored token of a store with a fitted probe, streaming one shard
   at a time (`score_store`): Q_t = best cosine of φ(s_t) to the checkpoint's
   goal prototype(s), and the reward head's score r(φ(s_t)).
2. Filter (`apply_threshold`, vectorised over all tokens): a trajectory is
   dropped at its first stored token whose position is >= `skip_first` and whose
   signal (Q or reward) is < `threshold`. Generation would stop there, so the
   tokens after the drop point are saved: saved = completion tokens - (drop
   position + 1). Kept trajectories save nothing. Equivalently a trajectory is
   kept iff its minimum signal over eligible tokens (`min_signal`) is >= threshold.
3. Vote per group (`probekit.voting`) over the kept trajectories, compare with
   plain majority voting, reward-weighted voting, best-of-n by reward, and two
   baselines that save the same number of tokens (random drops, length cap).
4. Thresholds: one value, a list, or `auto` (quantiles of the per-trajectory
   minimum signal on the selection groups, plus 0). When there is a choice, it
   is made on the selection groups only (the checkpoint's validation groups
   present in the store, else a seeded `valid_frac` split of the store's groups)
   and reported on the remaining groups. The checkpoint's training groups are
   never reported on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from probekit.errors import ProbekitError
from probekit.voting import Ballot, accuracy, length_budget_drops, random_budget_drops

SIGNALS = ("q", "reward")
GOALS = ("mean", "kmeans")
QUANTILE_LEVELS = tuple(np.round(np.arange(0.0, 0.96, 0.05), 2))


# ---- scoring ------------------------------------------------------------------


@dataclass
class TokenScores:
    """Per-token scores of a whole store, in global row order."""

    offsets: np.ndarray  # int64 [n + 1]: rows of trajectory i are offsets[i]:offsets[i+1]
    positions: np.ndarray  # int32 [rows]: token index in the full completion
    q: np.ndarray  # float32 [rows]
    reward: np.ndarray  # float32 [rows]
    seconds: float = 0.0

    def signal(self, kind: str) -> np.ndarray:
        if kind not in SIGNALS:
            raise ProbekitError(f"unknown signal '{kind}' (choose from {', '.join(SIGNALS)})")
        return self.q if kind == "q" else self.reward

    def last(self, values: np.ndarray) -> np.ndarray:
        """Value at each trajectory's last stored row (its last completion token)."""
        out = np.full(len(self.offsets) - 1, np.nan, dtype=np.float64)
        nonempty = self.offsets[1:] > self.offsets[:-1]
        out[nonempty] = values[self.offsets[1:][nonempty] - 1]
        return out


def goal_prototypes(ckpt: Any, goal: str) -> np.ndarray:
    if goal not in GOALS:
        raise ProbekitError(f"unknown goal '{goal}' (choose from {', '.join(GOALS)})")
    protos = (ckpt.goals or {}).get(goal)
    if protos is None:
        if goal == "kmeans":
            raise ProbekitError("checkpoint has no kmeans prototypes; re-fit with --goal-prototypes K")
        raise ProbekitError(f"checkpoint has no '{goal}' goal prototype; re-fit the probe")
    return np.asarray(protos, dtype=np.float32)


def score_store(store: Any, ckpt: Any, goal: str = "mean", batch_rows: int = 2048) -> TokenScores:
    """Q-values and rewards of every stored token; memory for states bounded by one shard.

    Shards are read in their stored dtype and converted batch by batch (the batch
    stays in cache for the matmuls), and φ runs with the input standardisation
    folded into its first layer (`ProbeModel.folded_encoder`).
    """
    import torch

    from probekit.goals import GoalIndex

    layer = int(ckpt.config["layer"])
    index = GoalIndex(goal_prototypes(ckpt, goal))
    model = ckpt.model
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    encoder = model.folded_encoder()
    n_rows = int(store.n_rows)
    q = np.empty(n_rows, np.float32)
    reward = np.empty(n_rows, np.float32)
    positions = np.empty(n_rows, np.int32)
    t0 = time.perf_counter()
    row = 0
    with torch.inference_mode():
        for block in store.iter_shards(layer, as_float32=False):
            rows = len(block.states)
            positions[row : row + rows] = block.positions
            for i in range(0, rows, batch_rows):
                x = torch.from_numpy(block.states[i : i + batch_rows]).to(device=device, dtype=torch.float32)
                z = encoder(x)
                q[row + i : row + i + len(x)] = index.q_values(z.cpu().numpy())
                reward[row + i : row + i + len(x)] = model.reward(z).reshape(-1).cpu().numpy()
            row += rows
    if row != n_rows:
        raise ProbekitError(f"{store.path}: shards hold {row} rows but the metadata says {n_rows}")
    offsets = np.append(store.meta.row_start, n_rows).astype(np.int64)
    return TokenScores(offsets, positions, q, reward, time.perf_counter() - t0)


# ---- filtering (pure numpy) ------------------------------------------------------


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


def _check_offsets(offsets: np.ndarray, rows: int) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != rows or (np.diff(offsets) < 0).any():
        raise ValueError("offsets must start at 0, end at the number of rows and never decrease")
    return offsets


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


def min_signal(offsets: np.ndarray, positions: np.ndarray, signal: np.ndarray, skip_first: int) -> np.ndarray:
    """Per-trajectory minimum signal over tokens at positions >= skip_first (+inf when none)."""
    eligible = np.asarray(positions) >= skip_first
    vals = np.where(eligible, np.asarray(signal, np.float64), np.inf)
    vals = np.where(np.isnan(vals), np.inf, vals)  # NaN never triggers a drop
    return segment_min(vals, offsets, np.inf)


def apply_threshold(
    offsets: np.ndarray,
    positions: np.ndarray,
    signal: np.ndarray,
    completion_tokens: np.ndarray,
    threshold: float,
    skip_first: int = 5,
) -> FilterResult:
    """Drop each trajectory at its first token (position >= skip_first) with signal < threshold."""
    positions = np.asarray(positions)
    signal = np.asarray(signal)
    rows = len(signal)
    offsets = _check_offsets(offsets, rows)
    if len(positions) != rows:
        raise ValueError("positions and signal must have the same length")
    completion = np.asarray(completion_tokens, np.int64)
    below = (positions >= skip_first) & (signal < threshold)
    first_row = segment_min(np.where(below, np.arange(rows, dtype=np.int64), rows), offsets, rows).astype(np.int64)
    dropped = first_row < rows
    drop_pos = np.full(len(first_row), -1, np.int64)
    drop_pos[dropped] = positions[first_row[dropped]]
    saved = np.zeros(len(first_row), np.int64)
    saved[dropped] = np.maximum(completion[dropped] - (drop_pos[dropped] + 1), 0)
    return FilterResult(float(threshold), ~dropped, drop_pos, saved, completion.copy())


# ---- thresholds and group splits ----------------------------------------------------


def parse_thresholds(text: str | float | Sequence[float]) -> list[float] | None:
    """'auto' -> None; '0.1' -> [0.1]; '0.1,0.2' -> [0.1, 0.2] (sorted, unique)."""
    if isinstance(text, (int, float)):
        return [float(text)]
    if not isinstance(text, str):
        return sorted({float(t) for t in text})
    text = text.strip()
    if text.lower() == "auto":
        return None
    try:
        values = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ProbekitError(f"--threshold '{text}': expected a number, a comma list of numbers, or 'auto'") from None
    if not values or not all(np.isfinite(values)):
        raise ProbekitError(f"--threshold '{text}': expected a number, a comma list of numbers, or 'auto'")
    return values


def threshold_grid(min_sig: np.ndarray, levels: Sequence[float] = QUANTILE_LEVELS) -> list[float]:
    """Candidate thresholds: quantiles of the (finite) per-trajectory minimum signal, plus 0."""
    finite = min_sig[np.isfinite(min_sig)]
    grid = {0.0}
    if len(finite):
        grid |= {float(v) for v in np.quantile(finite, levels)}
    return sorted(grid)


def split_groups(
    groups: Sequence[str], ckpt_split: dict | None, need_selection: bool, valid_frac: float = 0.3, seed: int = 0
) -> dict:
    """Decide which store groups choose the threshold and which are reported on.

    selection: the checkpoint's validation groups present in the store; when
    none are present and a choice is needed, a seeded `valid_frac` share of the
    store's (non-training) groups. report: every other non-training group.
    """
    names = sorted({str(g) for g in groups})
    ckpt_split = ckpt_split or {}
    train = set(map(str, ckpt_split.get("train", [])))
    valid = set(map(str, ckpt_split.get("valid", [])))
    excluded = [g for g in names if g in train]
    pool = [g for g in names if g not in train]
    selection = [g for g in pool if g in valid]
    source = "checkpoint-valid" if selection else "none"
    if not selection and need_selection:
        if not 0.0 < valid_frac < 1.0:
            raise ProbekitError(f"--valid-frac {valid_frac}: must be between 0 and 1")
        if len(pool) < 2:
            raise ProbekitError(
                f"choosing a threshold needs at least 2 non-training groups in the store (it has {len(pool)}); "
                "pass a single --threshold instead"
            )
        rng = np.random.default_rng(seed)
        n_sel = int(np.clip(round(valid_frac * len(pool)), 1, len(pool) - 1))
        selection = sorted(np.asarray(pool, dtype=object)[rng.permutation(len(pool))[:n_sel]].tolist())
        source = f"valid-frac {valid_frac} (seed {seed})"
    sel = set(selection)
    report = [g for g in pool if g not in sel]
    if not report:
        raise ProbekitError(
            f"no groups left to report on: of the store's {len(names)} groups, {len(excluded)} are in the checkpoint's "
            f"training split and {len(selection)} are used to choose the threshold; filter a store with held-out problems"
        )
    return {"selection": selection, "report": report, "excluded_train": excluded, "selection_source": source}


# ---- evaluation (pure numpy) -------------------------------------------------------


def _shares(res: FilterResult, traj: np.ndarray) -> dict:
    n = int(traj.sum())
    total = int(res.n_tokens[traj].sum())
    saved = int(res.saved_tokens[traj].sum())
    return {
        "n_trajectories": n,
        "dropped_share": float(res.dropped[traj].mean()) if n else float("nan"),
        "saved_tokens": saved,
        "tokens_saved_share": saved / total if total else 0.0,
    }


def evaluate_filter(res: FilterResult, ballot: Ballot, group_mask: np.ndarray, last_reward: np.ndarray | None = None) -> dict:
    """Filtered-vote accuracy and savings of one filter on the groups in `group_mask`."""
    traj = group_mask[ballot.group]
    vote = ballot.vote(res.kept)
    # A group that falls back to voting over all its trajectories needed every one of them
    # generated in full, so its "saved" tokens were not saved in practice. The official
    # evaluation counts them anyway (tokens_saved_share); the effective share does not.
    generated = traj & vote.fallback[ballot.group]
    total = int(res.n_tokens[traj].sum())
    effective = int(res.saved_tokens[traj & ~generated].sum())
    out = {"accuracy_filtered": accuracy(vote, group_mask), **_shares(res, traj), "fallback_groups": int(vote.fallback[group_mask].sum()),
           "tokens_saved_share_effective": effective / total if total else 0.0}
    if last_reward is not None:
        out["weighted_vote_filtered_accuracy"] = accuracy(ballot.weighted_vote(last_reward, res.kept), group_mask)
    return out


def baselines_at_budget(
    ballot: Ballot, completion_tokens: np.ndarray, group_mask: np.ndarray, budget: int, seed: int, n_seeds: int, skip_first: int
) -> dict:
    """Accuracy of random drops and of a length cap saving `budget` tokens on the masked groups."""
    traj = group_mask[ballot.group]
    total = int(np.asarray(completion_tokens)[traj].sum())
    accs, shares = [], []
    for s in range(n_seeds):
        dropped, saved = random_budget_drops(completion_tokens, traj, budget, np.random.default_rng([seed, s]), skip_first)
        accs.append(accuracy(ballot.vote(~dropped), group_mask))
        shares.append(saved.sum() / total if total else 0.0)
    dropped, saved, cap = length_budget_drops(completion_tokens, traj, budget)
    n = int(traj.sum())
    return {
        "random": {
            "accuracy": float(np.mean(accs)) if accs else float("nan"),
            "accuracy_std": float(np.std(accs)) if accs else float("nan"),
            "tokens_saved_share": float(np.mean(shares)) if shares else 0.0,
            "n_seeds": n_seeds,
        },
        "length": {
            "accuracy": accuracy(ballot.vote(~dropped), group_mask),
            "cap_tokens": cap,
            "dropped_share": float(dropped[traj].mean()) if n else float("nan"),
            "tokens_saved_share": float(saved.sum() / total) if total else 0.0,
        },
    }


def choose_threshold(table: list[dict]) -> float:
    """Best selection accuracy; ties -> more tokens effectively saved (fallback groups count as generated), then the smaller threshold."""
    best = max(table, key=lambda row: (row["selection"]["accuracy_filtered"], row["selection"]["tokens_saved_share_effective"], -row["threshold"]))
    return float(best["threshold"])


def sweep(
    offsets: np.ndarray,
    positions: np.ndarray,
    signal: np.ndarray,
    completion_tokens: np.ndarray,
    ballot: Ballot,
    thresholds: list[float] | None,
    selection_groups: Sequence[str],
    report_groups: Sequence[str],
    skip_first: int = 5,
    last_reward: np.ndarray | None = None,
    seed: int = 0,
    n_random_seeds: int = 5,
) -> dict:
    """Evaluate thresholds, choose one on the selection groups, report on the report groups.

    `thresholds=None` means auto: the grid comes from the selection groups only.
    The choice reads nothing of the report groups.
    """
    sel_g = ballot.group_mask(selection_groups)
    rep_g = ballot.group_mask(report_groups)
    if (sel_g & rep_g).any():
        raise ValueError("selection and report groups overlap")
    sel_t = sel_g[ballot.group]
    mins = min_signal(offsets, positions, signal, skip_first)
    if thresholds is None:
        if not sel_g.any():
            raise ProbekitError("--threshold auto needs selection groups")
        thresholds = threshold_grid(mins[sel_t])
    if len(thresholds) > 1 and not sel_g.any():
        raise ProbekitError("choosing among several thresholds needs selection groups")
    table = []
    results: dict[float, FilterResult] = {}
    for t in thresholds:
        res = apply_threshold(offsets, positions, signal, completion_tokens, t, skip_first)
        results[float(t)] = res
        row = {"threshold": float(t)}
        if sel_g.any():
            row["selection"] = evaluate_filter(res, ballot, sel_g)
        row["report"] = evaluate_filter(res, ballot, rep_g, last_reward)
        row["report"]["baselines"] = baselines_at_budget(
            ballot, completion_tokens, rep_g, row["report"]["saved_tokens"], seed, n_random_seeds, skip_first
        )
        table.append(row)
    chosen = choose_threshold(table) if len(table) > 1 else float(table[0]["threshold"])
    res = results[chosen]
    rep_t = rep_g[ballot.group]
    plain = ballot.vote(None)
    report = {
        "threshold": chosen,
        "n_groups": int(rep_g.sum()),
        "n_trajectories": int(rep_t.sum()),
        "n_without_answer": int((~ballot.has_answer[rep_t]).sum()),
        "single_trajectory_groups": int((ballot.group_size[rep_g] == 1).sum()),
        "oracle_accuracy": float(ballot.group_has_correct[rep_g].mean()) if rep_g.any() else float("nan"),
        "accuracy_majority": accuracy(plain, rep_g),
        **next(r["report"] for r in table if r["threshold"] == chosen),
    }
    if last_reward is not None:
        report["best_of_n_accuracy"] = accuracy(ballot.best_of_n(last_reward), rep_g)
        report["weighted_vote_accuracy"] = accuracy(ballot.weighted_vote(last_reward), rep_g)
    return {"chosen_threshold": chosen, "thresholds": [float(t) for t in thresholds], "table": table, "report": report,
            "result": res, "min_signal": mins}


# ---- orchestration -------------------------------------------------------------------


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def filter_store(
    ckpt: Any,
    store: Any,
    out: str | Path,
    threshold: str | float | Sequence[float] = "0",
    skip_first: int = 5,
    goal: str = "mean",
    signal: str = "q",
    valid_frac: float = 0.3,
    seed: int = 0,
    n_random_seeds: int = 5,
    plots: bool = True,
) -> dict:
    """Score, filter, vote and write trajectories.jsonl, metrics.json and plots to `out`."""
    from probekit.io import write_json, write_jsonl
    from probekit.probe.checkpoint import check_compatible

    if signal not in SIGNALS:
        raise ProbekitError(f"--signal '{signal}': choose from {', '.join(SIGNALS)}")
    if skip_first < 0:
        raise ProbekitError(f"--skip-first {skip_first}: must be >= 0")
    thresholds = parse_thresholds(threshold)
    check_compatible(ckpt, store)
    goal_prototypes(ckpt, goal)  # fail early on a missing goal kind
    meta = store.meta
    ballot = Ballot(meta.group, meta.answer, meta.label)  # fails early when the store has no answers
    groups = split_groups(meta.group, getattr(ckpt, "split", None), thresholds is None or len(thresholds) > 1, valid_frac, seed)

    scores = score_store(store, ckpt, goal)
    t0 = time.perf_counter()
    sig = scores.signal(signal)
    last_reward = scores.last(scores.reward)
    result = sweep(
        scores.offsets, scores.positions, sig, meta.completion_tokens, ballot, thresholds,
        groups["selection"], groups["report"], skip_first, last_reward, seed, n_random_seeds,
    )
    eval_seconds = time.perf_counter() - t0
    res: FilterResult = result["result"]
    # The sweep already took the per-trajectory minimum of the signal it filtered on.
    min_q = result["min_signal"] if signal == "q" else min_signal(scores.offsets, scores.positions, scores.q, skip_first)
    min_r = result["min_signal"] if signal == "reward" else min_signal(scores.offsets, scores.positions, scores.reward, skip_first)
    last_q = scores.last(scores.q)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    role = np.full(len(meta), "report", dtype=object)
    role[np.isin(meta.group, groups["selection"])] = "selection"
    role[np.isin(meta.group, groups["excluded_train"])] = "train"
    records = (
        {
            "id": str(meta.id[i]),
            "group": str(meta.group[i]),
            "split": role[i],
            "kept": bool(res.kept[i]),
            "first_drop_position": int(res.first_drop_position[i]),
            "min_q": _finite_or_none(min_q[i]),
            "min_reward": _finite_or_none(min_r[i]),
            "final_q": _finite_or_none(last_q[i]),
            "reward": _finite_or_none(last_reward[i]),
            "n_tokens": int(res.n_tokens[i]),
            "saved_tokens": int(res.saved_tokens[i]),
            "label": int(meta.label[i]),
            "answer": meta.answer[i],
        }
        for i in range(len(meta))
    )
    write_jsonl(out / "trajectories.jsonl", records)

    metrics = {
        "signal": signal,
        "goal": goal if signal == "q" else None,
        "skip_first": skip_first,
        "threshold_mode": "auto" if thresholds is None else ("list" if len(thresholds) > 1 else "fixed"),
        "chosen_threshold": result["chosen_threshold"],
        "chosen_on": "selection groups" if len(result["table"]) > 1 else "fixed by --threshold (no choice made)",
        "report": result["report"],
        "thresholds": result["table"],
        "groups": {
            "selection_source": groups["selection_source"],
            "n_selection": len(groups["selection"]),
            "n_report": len(groups["report"]),
            "n_excluded_train": len(groups["excluded_train"]),
            "note": "the checkpoint's training groups are excluded from the report; the threshold is chosen on the selection groups only",
            "selection": groups["selection"],
            "report": groups["report"],
            "excluded_train": groups["excluded_train"],
        },
        "store": {"path": str(store.path), "n_trajectories": len(meta), "n_rows": int(store.n_rows),
                  "n_without_answer": ballot.n_without_answer},
        "checkpoint": {"path": str(getattr(ckpt, "path", "")), "layer": int(ckpt.config["layer"])},
        "definitions": {
            "drop": "a trajectory is dropped at its first stored token with position >= skip_first and signal < threshold",
            "saved_tokens": "completion tokens - (drop position + 1); 0 for kept trajectories",
            "tokens_saved_share": "saved tokens / all completion tokens, as the official evaluation counts them",
            "tokens_saved_share_effective": "the same, but groups that fall back to voting over all trajectories count as fully generated",
            "correct": "the group's chosen answer equals the answer of any label-1 trajectory of the group",
            "fallback": "a group with no kept trajectory that has an answer votes over all its trajectories",
            "best_of_n": "the trajectory with the highest reward (reward head at the last token)",
            "weighted_vote": "each trajectory adds sigmoid(reward) to its answer",
        },
        "seconds": {"scoring": round(scores.seconds, 3), "evaluation": round(eval_seconds, 3)},
    }
    write_json(out / "metrics.json", metrics)
    if plots:
        plot_frontier(out / "frontier.png", metrics)
        plot_curves(out / "q_curves.png", scores, sig, res, ballot, groups["report"], result["chosen_threshold"], skip_first, signal, seed)
        metrics["plots"] = ["frontier.png", "q_curves.png"]
        write_json(out / "metrics.json", metrics)
    return metrics


# ---- plots ------------------------------------------------------------------------------


def _savefig(fig: Any, path: Path) -> None:
    from probekit.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def plot_frontier(path: Path, metrics: dict) -> None:
    """Report-group accuracy vs share of tokens saved: one point per threshold, plus baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(metrics["thresholds"], key=lambda r: r["report"]["tokens_saved_share"])
    x = [r["report"]["tokens_saved_share"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(x, [r["report"]["accuracy_filtered"] for r in rows], "o-", label=f"{metrics['signal']} filter (one point per threshold)")
    ax.plot([r["report"]["baselines"]["random"]["tokens_saved_share"] for r in rows],
            [r["report"]["baselines"]["random"]["accuracy"] for r in rows], "s--", label="random drops, same budget")
    ax.plot([r["report"]["baselines"]["length"]["tokens_saved_share"] for r in rows],
            [r["report"]["baselines"]["length"]["accuracy"] for r in rows], "^:", label="length cap, same budget")
    ax.axhline(metrics["report"]["accuracy_majority"], color="grey", lw=1, label="majority vote, no filter")
    rep = metrics["report"]
    ax.plot([rep["tokens_saved_share"]], [rep["accuracy_filtered"]], "*", ms=14, color="red",
            label=f"chosen threshold {metrics['chosen_threshold']:.3g}")
    ax.set_xlabel("share of completion tokens saved")
    ax.set_ylabel("majority-vote accuracy (report groups)")
    ax.set_title("Filtering frontier")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _savefig(fig, path)
    plt.close(fig)


def plot_curves(
    path: Path, scores: TokenScores, sig: np.ndarray, res: FilterResult, ballot: Ballot, report_groups: Sequence[str],
    threshold: float, skip_first: int, signal: str, seed: int, per_class: int = 4,
) -> None:
    """Signal along a few correct (label 1) and incorrect (label 0) report trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = ballot.group_mask(report_groups)[ballot.group]
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, color in ((1, "tab:green"), (0, "tab:red")):
        cand = np.flatnonzero(rep & (ballot.labels == label))
        for j, i in enumerate(np.sort(rng.permutation(cand)[:per_class])):
            a, b = scores.offsets[i], scores.offsets[i + 1]
            ax.plot(scores.positions[a:b], sig[a:b], color=color, alpha=0.75, lw=1,
                    label=("correct (label 1)" if label else "incorrect (label 0)") if j == 0 else None)
            if not res.kept[i]:
                ax.plot([res.first_drop_position[i]], [sig[a:b][scores.positions[a:b] == res.first_drop_position[i]][0]], "x", color=color)
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.axvline(skip_first, color="grey", ls=":", lw=1, label=f"skip_first {skip_first}")
    ax.set_xlabel("token position in the completion")
    ax.set_ylabel("Q-value (cosine to goal)" if signal == "q" else "reward head score")
    ax.set_title("Per-token signal (x = drop point)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _savefig(fig, path)
    plt.close(fig)
