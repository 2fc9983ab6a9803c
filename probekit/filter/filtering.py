"""`probekit filter`: Q-value filtering of sampled solutions (the paper's Sec. 5 "Filtering" experiment).

1. Score every stored token of a store with a fitted probe (`probekit.probe.scoring`,
   one shard in memory at a time): Q toward the chosen goal and the reward.
2. Drop each solution at its first token whose signal falls below the
   threshold (`probekit.filter.early_stop`).
3. Vote per group over the kept solutions (`probekit.filter.voting`) and compare with
   plain majority voting, reward-weighted voting, best-of-n by reward, and
   random drops and a length cap that save as many tokens
   (`probekit.filter.thresholds`, which also chooses the threshold on selection groups
   and reports on the others).

Outputs (in a folder this command owns, committed as one set): decisions.jsonl
(one line per solution: kept, drop position, Q and reward summaries),
metrics.json, frontier.png, q_curves.png. No output has the name of an input
file, and the folder may not hold the store, the checkpoint or the store it was
trained on (read for the length controls). metrics.json is read back by
`generate --threshold DIR` (`filter_output_threshold`), which checks its shape
(`FilterRecord`) and that it was chosen for the same probe (by fingerprint),
signal, goal and skip-first, and that no --skip-frac was used (online stopping
cannot apply it: the final length is unknown while generating).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from probekit.errors import ProbekitError
from probekit.eval.context import make_context
from probekit.eval.length_control import NO_FIT_STORE
from probekit.filter.config import FilterConfig
from probekit.filter.early_stop import FilterResult, apply_threshold, min_signal, skip_positions
from probekit.filter.plots import plot_curves, plot_frontier
from probekit.filter.thresholds import (
    choose_threshold,
    degenerate_warnings,
    evaluate_filter,
    selection_and_report_groups,
    threshold_grid,
    threshold_sweep,
)
from probekit.filter.voting import Ballot, Softmax
from probekit.io import read_validated, write_json, write_jsonl
from probekit.outputs import checkpoint_inputs, claim_output, read_marker
from probekit.probe.checkpoint import Positive, Record, check_compatible, training_store
from probekit.probe.data import StreamRows
from probekit.probe.scoring import Scorer, iter_trajectory_scores, score_store, score_trajectories
from probekit.progress import Progress

FILTER_OUTPUTS = ("decisions.jsonl", "metrics.json", "frontier.png", "q_curves.png")


class FilterCheckpointRecord(Record):
    path: str
    layer: Positive
    layers: list[Positive] = Field(min_length=1)
    fingerprint: Optional[str] = None  # absent in outputs written before it was recorded


class FilterRecord(Record):
    """metrics.json of a filter output, as far as a reader of its chosen threshold needs it."""

    signal: Literal["q", "reward"]
    goal: Optional[str]
    skip_first: int = Field(ge=0)
    skip_frac: float = Field(0.0, ge=0, lt=1)  # absent in outputs written before it existed: 0
    chosen_threshold: float = Field(allow_inf_nan=False)
    checkpoint: FilterCheckpointRecord


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def filter_store(ckpt, store, out: str | Path, config: FilterConfig = FilterConfig(), *, overwrite: bool = False,
                 progress: Progress | None = None) -> dict:
    """Score, filter, vote and write decisions.jsonl, metrics.json and plots to `out`."""
    config.validate()
    thresholds = config.thresholds()
    check_compatible(ckpt, store)
    scorer = Scorer.from_checkpoint(ckpt, kinds=[config.goal])  # fails early on a missing goal kind
    meta = store.meta
    ballot = Ballot(meta.group, meta.answer, meta.label)  # fails early when the store has no answers
    groups = selection_and_report_groups(meta.group, ckpt.split, thresholds is None or len(thresholds) > 1, config.valid_frac, config.seed)
    with claim_output(out, "filter", FILTER_OUTPUTS, overwrite=overwrite, inputs=[store.path, *checkpoint_inputs(ckpt)]) as out_dir:
        return _filter(ckpt, store, out_dir, config, thresholds, scorer, ballot, groups, progress)


def _filter(ckpt, store, out_dir, config: FilterConfig, thresholds, scorer, ballot, groups, progress) -> dict:
    signal, skip_first, seed = config.signal, config.skip_first, config.seed
    meta = store.meta
    skip = skip_positions(meta.completion_tokens, skip_first, config.skip_frac)

    scores = score_store(store, scorer, ckpt.layers, progress)
    t0 = time.perf_counter()
    sig = scores.signal(signal, config.goal)
    q = scores.q[config.goal]
    last_reward, last_q = scores.last(scores.reward), scores.last(q)
    softmax = Softmax(last_reward if config.weight_by == "reward" else last_q, config.beta) if config.weighting == "softmax" else None
    result = threshold_sweep(
        scores.offsets, scores.positions, sig, meta.completion_tokens, ballot, thresholds,
        groups["selection"], groups["report"], skip, last_reward, seed, config.random_seeds, softmax,
    )
    eval_seconds = time.perf_counter() - t0
    res: FilterResult = result["result"]
    # The sweep already took the per-trajectory minimum of the signal it filtered on.
    min_q = result["min_signal"] if signal == "q" else min_signal(scores.offsets, scores.positions, q, skip)
    min_r = result["min_signal"] if signal == "reward" else min_signal(scores.offsets, scores.positions, scores.reward, skip)

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
    # decisions, metrics and plots replace the previous ones together (metrics.json, the record, last)
    with out_dir.commit_set(last=("metrics.json",)):
        write_jsonl(out_dir.file("decisions.jsonl"), records)

        metrics = {
            "signal": signal,
            "goal": config.goal if signal == "q" else None,
            "skip_first": skip_first,
            "skip_frac": config.skip_frac,
            "weighting": _weighting(config),
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
            "checkpoint": {"path": str(ckpt.path), "layer": int(ckpt.config["layer"]), "layers": list(ckpt.layers),
                            "fingerprint": ckpt.fingerprint},
            "definitions": {
                "drop": "a trajectory is dropped at its first stored token with position >= max(skip_first, floor(skip_frac * "
                        "completion tokens)) and signal < threshold",
                "saved_tokens": "completion tokens - (drop position + 1); 0 for kept trajectories",
                "tokens_saved_share": "saved tokens / all completion tokens, as the official evaluation counts them",
                "tokens_saved_share_effective": "the same, but groups that fall back to voting over all trajectories count as fully generated",
                "correct": "the group's chosen answer equals the answer of any label-1 trajectory of the group",
                "fallback": "a group with no kept trajectory that has an answer votes over all its trajectories",
                "best_of_n": "the trajectory with the highest reward (reward head at the last token)",
                "weighted_vote": "each trajectory adds sigmoid(reward) to its answer",
                "vote_tests": "filtered vs plain majority vote on the report groups: McNemar's exact test on per-problem correctness "
                              "(paired), and the official evaluation's t-test of per-problem share correct (Student as called, and Welch)",
            },
            "signal_auroc": _signal_auroc(ckpt, store, scorer, config, result["min_signal"], groups["report"]),
            "seconds": {"scoring": round(scores.seconds, 3), "evaluation": round(eval_seconds, 3)},
            "warnings": degenerate_warnings(res, np.isin(meta.group, groups["report"]), np.isfinite(result["min_signal"])),
        }
        if config.plots:
            about = ckpt.about
            plot_frontier(out_dir.file("frontier.png"), metrics, about)
            plot_curves(out_dir.file("q_curves.png"), scores, sig, res, ballot, groups["report"], result["chosen_threshold"], skip_first, signal, seed,
                        meta.error_token, about)
            metrics["plots"] = ["frontier.png", "q_curves.png"]
        else:  # named and not written: an earlier run's plots do not stay beside these metrics
            out_dir.file("frontier.png"), out_dir.file("q_curves.png")
        write_json(out_dir.file("metrics.json"), metrics)  # once, with the plots it lists
    return metrics


def _weighting(config: FilterConfig) -> dict:
    """metrics.json's record of how best-of-n and the weighted votes weigh solutions."""
    if config.weighting == "argmax":
        return {"kind": "argmax"}
    return {"kind": "softmax", "beta": config.beta, "score": config.weight_by,
            "definition": f"each voter weighs softmax({config.weight_by} at the last token / beta) over its group's voters; "
                          "softmax_vote sums the weights per answer, softmax_best_of_n is the expected accuracy of one voter "
                          "drawn by them (exact, no sampling)"}


def _signal_auroc(ckpt, store, scorer, config: FilterConfig, min_sig: np.ndarray, report_groups, n_boot: int = 1000) -> dict:
    """How well the quantity the filter thresholds (each solution's minimum signal from its skip on) ranks correct
    above incorrect solutions of the report groups: AUROC with a group-bootstrap interval and its length controls
    (`probekit.eval.length_control`), fitted on the train split of the checkpoint's training store like `eval`'s.

    A filter can only help majority voting as far as this ranking is right; the length controls say whether
    it is right beyond "shorter solutions are more often correct".
    """
    signal, seed = config.signal, config.seed
    start = f"max({config.skip_first}, floor({config.skip_frac:g} x length))" if config.skip_frac else str(config.skip_first)
    score = f"minimum {signal} per solution from position {start} on (report groups)"
    fit = training_store(ckpt)
    split = {"train": list((ckpt.split or {}).get("train", [])), "test": list(report_groups)}
    if fit is None:  # raw AUROC only: the controls are never fitted on the evaluated data
        auroc = make_context(store, split, "test", n_boot=n_boot, seed=seed).auroc(min_sig)
        return {"score": score, "auroc": {**auroc, "length_controlled": {"note": NO_FIT_STORE}}, "length_control": {"note": NO_FIT_STORE}}
    fit_store = store if fit.path.resolve() == store.path.resolve() else fit
    ctx = make_context(store, split, "test", n_boot=n_boot, seed=seed, fit_store=fit_store)
    if fit_store is store:
        fit_min = min_sig
    else:  # only the trajectories the controls are fitted on, reduced to their minimum a block at a time
        fit_min = np.full(len(fit_store), np.nan)
        for part in iter_trajectory_scores(StreamRows(fit_store, ckpt.layers), scorer, ctx.length.train_traj):
            skip = skip_positions(fit_store.meta.completion_tokens[part.traj], config.skip_first, config.skip_frac)
            fit_min[part.traj] = min_signal(part.offsets, part.positions, part.signal(signal, config.goal), skip)
    return {"score": score, "auroc": ctx.auroc(min_sig, fit_min), "length_control": ctx.length.describe()}


def auto_threshold(ckpt, goal: str = "mean", skip_first: int = 5, progress: Progress | None = None) -> dict:
    """The Q threshold `probekit filter --threshold auto` chooses, computed before any sample exists (for online stopping).

    The validation groups' trajectories of the checkpoint's training store are
    scored (only they: the choice reads nothing else) and the filter's rule
    picks, among the quantile grid of their minimum Q, the threshold with the
    best filtered-vote accuracy on those groups (ties: more tokens effectively
    saved): the same candidates and the same choice as `probekit filter
    --threshold auto` on that store. Validation groups were not fitted on, so
    the choice is not tuned on training answers.
    """
    store = training_store(ckpt)
    if store is None:
        raise ProbekitError(f"--threshold auto: the checkpoint's training store ({ckpt.config.get('store', {}).get('path')}) is gone or "
                            "was re-extracted; pass a number or a `probekit filter` output folder")
    valid = [str(g) for g in (ckpt.split or {}).get("valid", [])]
    meta = store.meta
    ballot = Ballot(meta.group, meta.answer, meta.label)
    sel_g = ballot.group_mask(valid)
    if not sel_g.any():
        raise ProbekitError(f"--threshold auto: checkpoint {ckpt.path} has no validation groups to choose on (fit with --valid-frac > 0), "
                            "or pass a number")
    scores = score_trajectories(StreamRows(store, ckpt.layers), Scorer.from_checkpoint(ckpt, kinds=[goal]),
                                np.flatnonzero(sel_g[ballot.group]), progress)
    q, tokens = scores.q[goal], meta.completion_tokens
    table = []
    for t in threshold_grid(min_signal(scores.offsets, scores.positions, q, skip_first)):
        res = apply_threshold(scores.offsets, scores.positions, q, tokens[scores.traj], t, skip_first).on_store(scores.traj, tokens)
        table.append({"threshold": float(t), "selection": evaluate_filter(res, ballot, sel_g)})
    return {"threshold": choose_threshold(table), "chosen_on": f"{int(sel_g.sum())} validation groups of {store.path}", "table": table}


def filter_output_threshold(folder: str | Path, ckpt, goal: str, skip_first: int) -> tuple[float, str]:
    """(threshold, where it was chosen) from a `probekit filter` output folder, for online stopping with `ckpt`.

    A threshold means something only for the signal, probe, goal and
    skip-first it was chosen with: a reward-scale threshold applied to Q, or
    one chosen for another checkpoint, stops the wrong samples with exit 0.
    So the folder must be a filter output (its marker) whose metrics.json
    has the filter's shape, a Q threshold, this checkpoint's fingerprint
    (outputs written before it was recorded: its path and layers), and the
    same goal and skip-first; any other is one ProbekitError saying what differs.
    """
    folder = Path(folder)
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is None or marker["command"] != "filter" or not (folder / "metrics.json").is_file():
        raise ProbekitError(f"--threshold '{folder}': expected a number, auto, or a `probekit filter` output folder (with its metrics.json)")
    where = folder / "metrics.json"
    rec = read_validated(where, FilterRecord)
    if rec.signal != "q":
        raise ProbekitError(f"{where}: its threshold is on the reward (--signal reward); online stopping compares Q-values, "
                            "so use a `probekit filter --signal q` output")
    if rec.checkpoint.fingerprint is not None:
        same = rec.checkpoint.fingerprint == ckpt.fingerprint
    else:
        same = Path(rec.checkpoint.path).resolve() == Path(ckpt.path).resolve() and rec.checkpoint.layers == list(ckpt.layers)
    if not same:
        raise ProbekitError(f"{where}: its threshold was chosen for checkpoint {rec.checkpoint.path}, not for --filter {ckpt.path}")
    if rec.goal != goal:
        raise ProbekitError(f"{where}: its threshold was chosen for goal '{rec.goal}', not '{goal}'; pass --goal {rec.goal}")
    if rec.skip_frac:
        raise ProbekitError(f"{where}: its threshold was chosen with --skip-frac {rec.skip_frac:g}, which online stopping cannot "
                            "apply (a solution's final length is unknown while it is generated); choose it with --skip-frac 0")
    if rec.skip_first != skip_first:
        raise ProbekitError(f"{where}: its threshold was chosen with --skip-first {rec.skip_first}, not {skip_first}; "
                            f"pass --skip-first {rec.skip_first}")
    return rec.chosen_threshold, str(where)
