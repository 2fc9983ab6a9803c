"""Choosing a filter threshold and measuring what it does to majority voting.

Thresholds: one value, a list, or `auto` (quantiles of the per-trajectory
minimum signal on the selection groups, plus 0). When there is a choice, it is
made on the selection groups only (the checkpoint's validation groups present
in the store, else a seeded `valid_frac` split of the store's groups) and
reported on the remaining groups. The checkpoint's training groups are never
reported on. Each threshold is compared with random drops and a length cap
that save the same number of tokens, and the chosen one's vote is tested
against the plain vote across problems (`probekit.filter.significance`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from probekit.errors import ProbekitError
from probekit.filter.early_stop import FilterResult, apply_threshold, min_signal
from probekit.filter.significance import vote_tests
from probekit.filter.voting import Ballot, Softmax, accuracy, length_budget_drops, random_budget_drops
from probekit.metrics import bootstrap_counts, group_mean_band

QUANTILE_LEVELS = tuple(np.round(np.arange(0.0, 0.96, 0.05), 2))
Q_RANGE = (-1.0, 1.0)  # Q-values are cosines
N_BOOT = 1000  # resamples of the report problems behind the accuracies' intervals


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


def selection_and_report_groups(
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


def accuracy_interval(correct: np.ndarray, counts: np.ndarray) -> dict:
    """95% bootstrap interval ("lo", "hi") of the share of correct groups, `counts` over those groups (`bootstrap_counts`)."""
    band = group_mean_band(np.asarray(correct, np.float64)[:, None], np.arange(len(correct)), counts)
    return {"lo": float(band["lo"][0]), "hi": float(band["hi"][0])} if np.isfinite(band["lo"][0]) else {"lo": None, "hi": None}


def evaluate_filter(res: FilterResult, ballot: Ballot, group_mask: np.ndarray, last_reward: np.ndarray | None = None,
                    softmax: Softmax | None = None, counts: np.ndarray | None = None) -> dict:
    """Filtered-vote accuracy and savings of one filter on the groups in `group_mask` (and its weighted votes, given scores).

    With `counts` (bootstrap multiplicities of the masked groups), the accuracy's interval over problems too
    (`accuracy_filtered_lo` / `_hi`).
    """
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
    if counts is not None:
        ci = accuracy_interval(vote.correct[group_mask], counts)
        out["accuracy_filtered_lo"], out["accuracy_filtered_hi"] = ci["lo"], ci["hi"]
    if last_reward is not None:
        out["weighted_vote_filtered_accuracy"] = accuracy(ballot.weighted_vote(last_reward, res.kept), group_mask)
    if softmax is not None:
        out["softmax_vote_filtered_accuracy"] = accuracy(ballot.softmax_vote(softmax, res.kept), group_mask)
    return out


def baselines_at_budget(
    ballot: Ballot, completion_tokens: np.ndarray, group_mask: np.ndarray, budget: int, seed: int, n_seeds: int,
    skip_first: int | np.ndarray,
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


def threshold_sweep(
    offsets: np.ndarray,
    positions: np.ndarray,
    signal: np.ndarray,
    completion_tokens: np.ndarray,
    ballot: Ballot,
    thresholds: list[float] | None,
    selection_groups: Sequence[str],
    report_groups: Sequence[str],
    skip_first: int | np.ndarray = 5,
    last_reward: np.ndarray | None = None,
    seed: int = 0,
    n_random_seeds: int = 5,
    softmax: Softmax | None = None,
) -> dict:
    """Evaluate thresholds, choose one on the selection groups, report on the report groups.

    `thresholds=None` means auto: the grid comes from the selection groups only.
    The choice reads nothing of the report groups. `skip_first` is one position
    for all or one per trajectory (`probekit.filter.early_stop.skip_positions`);
    with `softmax`, the report adds Q-Probe's softmax-weighted vote and best-of-n.
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
    rep_counts = bootstrap_counts(int(rep_g.sum()), N_BOOT, seed)
    for t in thresholds:
        res = apply_threshold(offsets, positions, signal, completion_tokens, t, skip_first)
        results[float(t)] = res
        row = {"threshold": float(t)}
        if sel_g.any():
            row["selection"] = evaluate_filter(res, ballot, sel_g)
        row["report"] = evaluate_filter(res, ballot, rep_g, last_reward, softmax, rep_counts)
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
        **{f"accuracy_majority_{k}": v for k, v in accuracy_interval(plain.correct[rep_g], rep_counts).items()},
        **next(r["report"] for r in table if r["threshold"] == chosen),
        "vote_tests": vote_tests(ballot, res.kept, rep_g),
    }
    if last_reward is not None:
        report["best_of_n_accuracy"] = accuracy(ballot.best_of_n(last_reward), rep_g)
        report["weighted_vote_accuracy"] = accuracy(ballot.weighted_vote(last_reward), rep_g)
    if softmax is not None:
        report["softmax_best_of_n_accuracy"] = float(ballot.expected_best_of_n(softmax)[rep_g].mean()) if rep_g.any() else float("nan")
        report["softmax_vote_accuracy"] = accuracy(ballot.softmax_vote(softmax), rep_g)
    return {"chosen_threshold": chosen, "thresholds": [float(t) for t in thresholds], "table": table, "report": report,
            "result": res, "min_signal": mins}


def check_threshold_range(thresholds: list[float] | None, signal: str) -> None:
    """Refuse Q thresholds that must keep nothing or drop nothing: Q-values are cosines in [-1, 1]."""
    if thresholds is None or signal != "q":
        return
    bad = [t for t in thresholds if not Q_RANGE[0] < t <= Q_RANGE[1]]
    if bad:
        raise ProbekitError(
            f"--threshold {bad[0]:g}: Q-values are cosines in [-1, 1], so a threshold above 1 drops every solution "
            "and one at or below -1 drops none; choose a value in (-1, 1] or auto"
        )


def degenerate_warnings(res: FilterResult, report_mask: np.ndarray, eligible: np.ndarray) -> list[str]:
    """Say plainly when a threshold kept nothing or dropped nothing among the report trajectories."""
    kept, n = int(res.kept[report_mask].sum()), int(report_mask.sum())
    out = []
    if n and kept == 0:
        out.append(f"threshold {res.threshold:.3g} dropped every report trajectory: every group fell back to voting over all "
                   "its trajectories, so the tokens 'saved' by the official count were in fact generated")
    elif n and kept == n and eligible[report_mask].any():
        out.append(f"threshold {res.threshold:.3g} dropped no report trajectory: the filter changed nothing")
    return out
